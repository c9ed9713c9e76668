"""A later revision listing again a received instance held in the conflict queue (or decided without being
stored: discarded, kept under a new UID): the store calls it a duplicate, yet its forward item must say held
(or why it is not forwarded), never fail as "no longer stored here"; a replace decision lets every revision's
held item go (second review of issue 15, finding 5). Both stores."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from meshnode.gateway.config import PacsDestination
from meshnode.gateway.conflict_desk import ConflictDesk
from meshnode.gateway.forward_conflicts import HELD_HERE
from meshnode.gateway.forwarder import _records_for
from meshnode.gateway.pacs_queue import KEYS, ForwardKey, progress, queue_name, queue_received
from meshnode.storage.conflicts import held_among, received_revision
from meshnode.storage.memory_metadata import MemoryMetadataStore
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.records import AddOutcome, ManifestRow, Source
from meshnode.storage.sqlite_metadata import SqliteMetadataStore
from meshnode.study.manifest_builder import build_manifest
from protocol.cid import CID
from protocol.conflict import ConflictState, Decision
from protocol.keys import SigningKey
from protocol.lifecycle import ManifestState
from protocol.manifest import Priority, Purpose
from protocol.outbox import DeliveryState
from tests.meshnode.storage.helpers import instance

KEY = SigningKey(bytes([9]) * 32)
NOW = 1_767_225_600
PACS = PacsDestination("main", "PACS", "127.0.0.1", 11112)
THEIRS = [replace(instance(1, payload=b"RGT's version" * 8), source=Source.RECEIVED, origin="RGT"),
          replace(instance(2), source=Source.RECEIVED, origin="RGT")]


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataStore]:
    s: MetadataStore = SqliteMetadataStore(tmp_path / "node.db") if request.param == "sqlite" else MemoryMetadataStore()
    s.add_instances([instance(1)], [], NOW * 1000)  # ingested here: RGT's instance 1 reuses its UID
    yield s
    s.close()


def revision(store: MetadataStore, rev: int) -> tuple[CID, list[AddOutcome]]:
    signed = build_manifest(THEIRS, sender_org="RGT", sender_peer=KEY.peer_id, recipients=("RXX",),
                            priority=Priority.URGENT, purpose=Purpose.CARE, created_at=NOW + rev,
                            expires_at=NOW + 86400, revision=rev).sign(KEY)
    outcomes = store.add_instances(THEIRS, [], NOW * 1000, [received_revision("RGT", str(signed.cid))] * 2)
    store.save_manifest(ManifestRow(signed.cid, signed.document.study_uid, "received", "RGT", rev,
                                    ManifestState.RECEIPTED, NOW, NOW + 86400, signed.encode()), [])
    queue_received(store, signed.cid, [PACS], NOW * 1000)
    return signed.cid, outcomes


def item(store: MetadataStore, manifest_id: CID) -> tuple[DeliveryState, str]:
    key = ForwardKey(manifest_id, THEIRS[0].sop_instance_uid, THEIRS[0].digest)
    [row] = [r for r in store.queue_rows(queue_name("main"), ref=KEYS.ref(key)) if r.key == KEYS.encode(key)]
    return row.state, row.last_error


def test_a_revision_repeating_a_held_instance_shows_it_held(store: MetadataStore) -> None:
    first, outcomes = revision(store, 1)
    assert outcomes[0] is AddOutcome.CONFLICT
    second, outcomes = revision(store, 2)
    assert outcomes[0] is AddOutcome.DUPLICATE
    assert held_among(store, THEIRS, outcomes) == 1  # what the arrival event says
    assert item(store, second) == (DeliveryState.FAILED, HELD_HERE)
    assert progress(store, second, [PACS])["main"].held == 1
    # a person lets it in: both revisions' held items go to the PACS
    [conflict] = store.conflicts(ConflictState.PENDING)
    done = store.decide_conflict(conflict.conflict_id, Decision.REPLACE, "alice", [], NOW * 1000)
    ConflictDesk._reopen_forward(store, done, Decision.REPLACE, ["main"])
    assert item(store, first)[0] is DeliveryState.PENDING
    assert item(store, second)[0] is DeliveryState.PENDING


@pytest.mark.parametrize(("decision", "why"), [(Decision.DISCARD, "discarded"),
                                               (Decision.KEEP_BOTH, "kept under a new UID")])
def test_a_revision_repeating_a_decided_instance_says_why_it_is_not_forwarded(
        store: MetadataStore, decision: Decision, why: str) -> None:
    revision(store, 1)
    [conflict] = store.conflicts(ConflictState.PENDING)
    assert conflict.newcomer is not None
    renamed = replace(conflict.newcomer, sop_instance_uid="2.25.1234") if decision is Decision.KEEP_BOTH else None
    store.decide_conflict(conflict.conflict_id, decision, "alice", [], NOW * 1000, renamed=renamed)
    second, outcomes = revision(store, 2)
    assert outcomes[0] is AddOutcome.DUPLICATE and held_among(store, THEIRS, outcomes) == 0
    assert item(store, second) == (DeliveryState.FAILED, f"not forwarded: {why} by alice")


def test_keep_both_of_an_instance_held_on_arrival_forwards_the_renamed_instance(store: MetadataStore) -> None:
    """Second review, finding 9: the renamed instance is added to the study and queued for the PACS that
    held the manifest's item (under that manifest); the held item says why it was not sent."""
    first, _ = revision(store, 1)
    [conflict] = store.conflicts(ConflictState.PENDING)
    assert conflict.newcomer is not None
    renamed = replace(conflict.newcomer, sop_instance_uid="2.25.1234")
    done = store.decide_conflict(conflict.conflict_id, Decision.KEEP_BOTH, "alice", [], NOW * 1000, renamed=renamed)
    ConflictDesk._reopen_forward(store, done, Decision.KEEP_BOTH, ["main"], renamed, NOW * 1000)
    assert item(store, first) == (DeliveryState.FAILED, "not forwarded: kept under a new UID by alice")
    new = ForwardKey(first, "2.25.1234", renamed.digest)
    [row] = [r for r in store.queue_rows(queue_name("main"), ref=KEYS.ref(new)) if r.key == KEYS.encode(new)]
    assert row.state is DeliveryState.PENDING
    assert (new.sop_instance_uid, new.digest) in _records_for(store, [new])  # what the forwarder sends
