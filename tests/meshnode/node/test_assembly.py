"""InstanceAssembly: which instances are complete on disk, as blocks become durable."""

from __future__ import annotations

import dataclasses

from meshnode.node.assembly import InstanceAssembly
from meshnode.storage.records import Source
from tests.meshnode.storage.helpers import instance
from tests.protocol.factories import make_instance, make_manifest


def test_instances_become_ready_once_each_of_their_blocks_is_durable() -> None:
    entries = (make_instance(1, blocks=2), make_instance(2, blocks=3), make_instance(3, series=2, blocks=1))
    manifest = make_manifest(instances=entries)
    a, b, c = entries
    assembly = InstanceAssembly(manifest, present=[b.blocks[0]])
    assert assembly.take_ready() == []
    assembly.durable([a.blocks[0], b.blocks[1]])
    assert assembly.take_ready() == []
    assembly.durable([c.blocks[0], a.blocks[1]])
    assert assembly.take_ready() == [0, 2]
    assert assembly.take_ready() == []  # handed out once
    assembly.durable([b.blocks[2], b.blocks[2]])  # repeats are harmless
    assert assembly.take_ready() == [1]
    assert all(assembly.is_complete(i) for i in range(3))


def test_an_instance_already_on_disk_is_ready_at_once_and_records_come_back_in_manifest_order() -> None:
    entries = (make_instance(1, blocks=1), make_instance(2, blocks=1))
    manifest = make_manifest(instances=entries)
    assembly = InstanceAssembly(manifest, present=[entries[1].blocks[0]])
    assert assembly.take_ready() == [1]
    assert not assembly.all_verified
    second, first = instance(2, source=Source.RECEIVED), instance(1, source=Source.RECEIVED)
    assembly.verified(1, second)
    assembly.durable(list(entries[0].blocks))
    assert assembly.take_ready() == [0]
    assembly.verified(0, first)
    assert assembly.all_verified and assembly.ordered_records() == [first, second]


def test_the_first_failure_is_kept() -> None:
    assembly = InstanceAssembly(make_manifest(), present=[])
    assembly.failed("instance 1 does not match its digest")
    assembly.failed("later")
    assert assembly.failure == "instance 1 does not match its digest"


def test_a_block_shared_by_two_instances_completes_both() -> None:
    entries = (make_instance(1, blocks=2), make_instance(2, blocks=2))
    shared = entries[0].blocks[1]
    second = dataclasses.replace(entries[1], blocks=(entries[1].blocks[0], shared))
    assembly = InstanceAssembly(make_manifest(instances=(entries[0], second)), present=[])
    assembly.durable([entries[0].blocks[0], second.blocks[0]])
    assert assembly.take_ready() == []
    assembly.durable([shared])
    assert assembly.take_ready() == [0, 1]
