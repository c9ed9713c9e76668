"""Verifying received instances: the full check, and the shortcut for instances verified before."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshnode.dicom import synthetic
from meshnode.ingest import Ingester
from meshnode.manifest_builder import build_manifest
from meshnode.node.completion import InstanceMismatchError, same_bytes, verify_instance
from meshnode.storage.node_storage import NodeStorage
from protocol.errors import MeshError
from protocol.manifest import Manifest, Priority, Purpose
from tests.protocol.factories import NODE_A


@pytest.fixture
def stored(tmp_path: Path) -> Iterator[tuple[NodeStorage, Manifest]]:
    home = tmp_path / "node"
    home.mkdir()
    storage = NodeStorage.open(home)
    made = synthetic.generate_ct_study(tmp_path / "ct", slices=3, rows=64, columns=64, seed=5)
    Ingester(storage, chunk_size=2048).ingest(made)
    [study] = storage.metadata.studies()
    instances = storage.metadata.instances(study.attributes.study_uid)
    manifest = build_manifest(instances, sender_org="RGT", sender_peer=NODE_A.peer_id, recipients=["RJ1"],
                              priority=Priority.URGENT, purpose=Purpose.CARE, created_at=1000, expires_at=2000)
    try:
        yield storage, manifest
    finally:
        storage.close()


def test_an_instance_verified_before_is_not_read_again_but_gives_the_same_record(
        stored: tuple[NodeStorage, Manifest]) -> None:
    storage, manifest = stored
    full = verify_instance(storage.blocks, manifest, 1)
    entry = manifest.instances[1]
    assert len(entry.blocks) > 1 and same_bytes(entry, full)
    storage.blocks.path_of(entry.blocks[-1]).unlink()  # a pixel block: only a full check reads it
    with pytest.raises(MeshError):
        verify_instance(storage.blocks, manifest, 1)
    assert verify_instance(storage.blocks, manifest, 1, known=full) == full


def test_a_record_of_other_bytes_is_no_shortcut(stored: tuple[NodeStorage, Manifest]) -> None:
    storage, manifest = stored
    full = verify_instance(storage.blocks, manifest, 0)
    other = verify_instance(storage.blocks, manifest, 2)
    for differing in (other, dataclasses.replace(full, digest=bytes(32)), dataclasses.replace(full, size=full.size + 1),
                      dataclasses.replace(full, blocks=full.blocks[:-1])):
        assert not same_bytes(manifest.instances[0], differing)
    # the full check runs, and catches an instance whose bytes are not what the manifest promises
    first_block = manifest.instances[0].blocks[0]
    storage.blocks.path_of(first_block).write_bytes(b"not the header")
    with pytest.raises(InstanceMismatchError):
        verify_instance(storage.blocks, manifest, 0, check_blocks=False, known=other)
