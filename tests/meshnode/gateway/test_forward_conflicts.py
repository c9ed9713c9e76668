"""A received revision changes an instance this node already forwarded to its PACS: [[pacs]] on_replace decides
(hold for a human, or overwrite), and the inbox says what really happened (never "forwarded 1/1" for a held one)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from meshnode.gateway.config import PacsDestination
from meshnode.gateway.forward_conflicts import HELD_MARK, HELD_PREFIX
from meshnode.gateway.pacs_queue import progress, queue_name, queue_received
from meshnode.storage.conflicts import (
    RECEIVED_REVISION,
    held_by_manifest,
    received_revision,
)
from meshnode.storage.memory_metadata import MemoryMetadataStore
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.records import AddOutcome, InstanceRecord, ManifestRow, Source
from meshnode.storage.sqlite_metadata import SqliteMetadataStore
from meshnode.study.manifest_builder import build_manifest
from protocol.conflict import ConflictState
from protocol.document import Signed
from protocol.keys import SigningKey
from protocol.lifecycle import ManifestState
from protocol.manifest import Manifest, Priority, Purpose
from protocol.outbox import DeliveryState
from tests.meshnode.storage.helpers import instance

KEY = SigningKey(bytes([9]) * 32)
NOW = 1_767_225_600
HOLD = PacsDestination("main", "PACS", "127.0.0.1", 11112)
OVERWRITE = replace(HOLD, on_replace="overwrite")


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataStore]:
    s: MetadataStore = (SqliteMetadataStore(tmp_path / "node.db") if request.param == "sqlite"
                        else MemoryMetadataStore())
    yield s
    s.close()


def receive(store: MetadataStore, records: Sequence[InstanceRecord], revision: int) -> Signed[Manifest]:
    """A verified, receipted revision, recorded as the node runtime records it."""
    signed = build_manifest(list(records), sender_org="RGT", sender_peer=KEY.peer_id, recipients=("RXX",),
                            priority=Priority.URGENT, purpose=Purpose.CARE, created_at=NOW, expires_at=NOW + 86400,
                            revision=revision).sign(KEY)
    outcomes = store.add_instances(records, [], NOW * 1000, [RECEIVED_REVISION] * len(records))
    assert AddOutcome.CONFLICT not in outcomes  # a sender's revision is never held at the catalog
    store.save_manifest(ManifestRow(signed.cid, signed.document.study_uid, "received", "RGT", revision,
                                    ManifestState.RECEIPTED, NOW, NOW + 86400, signed.encode()), [])
    return signed


def forwarded_first_revision(store: MetadataStore, dest: PacsDestination) -> None:
    first = receive(store, [instance(1), instance(2)], 1)
    queue_received(store, first.cid, [dest], NOW * 1000)
    rows = store.queue_rows(queue_name(dest.name))
    store.queue_save([replace(r, state=DeliveryState.DELIVERED) for r in rows])  # the PACS stored both


def test_a_new_version_is_held_and_the_inbox_says_so(store: MetadataStore) -> None:
    forwarded_first_revision(store, HOLD)
    changed = instance(1, payload=b"corrected pixels" * 8)
    second = receive(store, [changed, instance(2)], 2)
    assert [i.digest for i in store.instances(changed.study_uid) if i.sop_instance_uid == changed.sop_instance_uid] \
        == [changed.digest]  # the node's own catalog follows the sender's revision
    queued = queue_received(store, second.cid, [HOLD], NOW * 1000)
    assert queued == {"main": []}  # nothing to send: instance 2 is held already, instance 1 is held back
    p = progress(store, second.cid, [HOLD])["main"]
    assert (p.state, p.sent, p.total, p.held) == ("held", 1, 2, 1)
    assert p.last_error.startswith(HELD_PREFIX)
    [conflict] = store.conflicts(ConflictState.PENDING)
    assert conflict.kind == "pacs:main" and conflict.manifest_id == str(second.cid)
    assert (conflict.existing_digest, conflict.newcomer_digest) == (instance(1).digest, changed.digest)
    # the same receipt's queueing again (a restart) holds nothing twice
    queue_received(store, second.cid, [HOLD], NOW * 1000)
    assert len(store.conflicts(ConflictState.PENDING)) == 1


def test_overwrite_sends_the_new_version(store: MetadataStore) -> None:
    forwarded_first_revision(store, OVERWRITE)
    changed = instance(1, payload=b"corrected pixels" * 8)
    second = receive(store, [changed, instance(2)], 2)
    queued = queue_received(store, second.cid, [OVERWRITE], NOW * 1000)
    assert [k.digest for k in queued["main"]] == [changed.digest]
    p = progress(store, second.cid, [OVERWRITE])["main"]
    assert (p.state, p.pending, p.held) == ("forwarding", 1, 0)
    assert store.conflicts(ConflictState.PENDING) == []


def test_a_version_never_forwarded_is_simply_sent(store: MetadataStore) -> None:
    receive(store, [instance(1)], 1)  # received, but never forwarded to this PACS
    changed = instance(1, payload=b"corrected pixels" * 8)
    second = receive(store, [changed], 2)
    queued = queue_received(store, second.cid, [HOLD], NOW * 1000)
    assert [k.digest for k in queued["main"]] == [changed.digest]


def test_an_instance_held_on_arrival_is_not_forwarded_and_the_inbox_says_held(store: MetadataStore) -> None:
    """Review finding 1: a received instance whose UID is held here from local ingest is a conflict held in
    this node's queue; its forward item is FAILED "held: ..." (never sent, never "forwarded")."""
    store.add_instances([instance(1)], [], NOW * 1000)  # ingested here
    theirs = [replace(instance(1, payload=b"RGT's version" * 8), source=Source.RECEIVED, origin="RGT"),
              replace(instance(2), source=Source.RECEIVED, origin="RGT")]
    signed = build_manifest(theirs, sender_org="RGT", sender_peer=KEY.peer_id, recipients=("RXX",),
                            priority=Priority.URGENT, purpose=Purpose.CARE, created_at=NOW, expires_at=NOW + 86400,
                            ).sign(KEY)
    outcomes = store.add_instances(theirs, [], NOW * 1000, [received_revision("RGT", str(signed.cid))] * 2)
    assert outcomes == [AddOutcome.CONFLICT, AddOutcome.ADDED]
    store.save_manifest(ManifestRow(signed.cid, signed.document.study_uid, "received", "RGT", 1,
                                    ManifestState.RECEIPTED, NOW, NOW + 86400, signed.encode()), [])
    queued = queue_received(store, signed.cid, [HOLD], NOW * 1000)
    assert [k.sop_instance_uid for k in queued["main"]] == [instance(2).sop_instance_uid]  # the other one only
    p = progress(store, signed.cid, [HOLD])["main"]
    assert (p.pending, p.failed, p.held, p.total) == (1, 1, 1, 2)
    assert p.last_error.startswith(HELD_MARK) and "held here" in p.last_error
    assert held_by_manifest(store) == {str(signed.cid): 1}
