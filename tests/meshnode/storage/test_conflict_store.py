"""The conflict queue (meshnode.storage.conflicts): one contract, the SQLite store and the in-memory one."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from meshnode.storage.audit import EventCode
from meshnode.storage.conflicts import ConflictRow, Incoming
from meshnode.storage.memory_metadata import MemoryMetadataStore
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.records import AddOutcome, hash_uid
from meshnode.storage.sqlite_metadata import SqliteMetadataStore
from protocol.conflict import ConflictError, ConflictPolicy, ConflictState, Decision
from tests.meshnode.storage.helpers import STUDY, instance

NOW_MS = 1_767_225_600_000
NOW_S = NOW_MS // 1000
REJECT = Incoming(ConflictPolicy.REJECT, "dimse:MODALITY@127.0.0.1", "stroke")


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataStore]:
    s: MetadataStore = SqliteMetadataStore(tmp_path / "node.db") if request.param == "sqlite" else MemoryMetadataStore()
    yield s
    s.close()


def held(store: MetadataStore) -> ConflictRow:
    a, b = instance(1), instance(1, payload=b"corrected pixels" * 8)
    assert store.add_instances([a], [], NOW_MS) == [AddOutcome.ADDED]
    assert store.add_instances([b], [], NOW_MS, [REJECT]) == [AddOutcome.CONFLICT]
    [row] = store.conflicts(ConflictState.PENDING)
    return row


def test_reject_holds_the_newcomer_out_of_the_study(store: MetadataStore) -> None:
    row = held(store)
    a, b = instance(1), instance(1, payload=b"corrected pixels" * 8)
    assert [i.digest for i in store.instances(STUDY)] == [a.digest]  # the study (and so any manifest) as before
    assert (row.existing_digest, row.newcomer_digest) == (a.digest, b.digest)
    assert row.newcomer == b and row.source == REJECT.source and row.route == "stroke"
    assert row.policy is ConflictPolicy.REJECT
    # the same newcomer again: no second queue entry
    assert store.add_instances([b], [], NOW_MS, [REJECT]) == [AddOutcome.DUPLICATE]
    assert len(store.conflicts()) == 1
    # its blocks are live (gc keeps them) while it waits
    assert store.unreferenced_blocks(NOW_S) == []
    assert store.block_refcount(b.blocks[1], NOW_S) == 1
    [alert] = [e for e in store.audit_entries() if e.event.code == EventCode.SECURITY_ALERT]
    assert a.digest.hex() in alert.event.detail and b.digest.hex() in alert.event.detail
    assert hash_uid(a.sop_instance_uid) in alert.event.detail and a.sop_instance_uid not in alert.event.detail


def test_replace_policy_supersedes(store: MetadataStore) -> None:
    a, b = instance(1), instance(1, payload=b"corrected pixels" * 8)
    store.add_instances([a, instance(2)], [], NOW_MS)
    assert store.add_instances([b], [], NOW_MS, [Incoming(ConflictPolicy.REPLACE)]) == [AddOutcome.REPLACED]
    assert {i.digest for i in store.instances(STUDY) if i.sop_instance_uid == a.sop_instance_uid} == {b.digest}
    [row] = store.conflicts()
    assert row.state is ConflictState.REPLACED and row.decided_by == "policy"
    assert store.conflicts(ConflictState.PENDING) == []
    assert a.blocks[1] in store.unreferenced_blocks(NOW_S)  # the old version's pixels are garbage now


def test_decide_replace_then_replay_is_refused(store: MetadataStore) -> None:
    row = held(store)
    done = store.decide_conflict(row.conflict_id, Decision.REPLACE, "alice", [], NOW_MS)
    assert done.state is ConflictState.REPLACED and done.decided_by == "alice"
    assert [i.digest for i in store.instances(STUDY)] == [row.newcomer_digest]
    audit_before = len(store.audit_entries())
    for decision in Decision:
        with pytest.raises(ConflictError, match="decided already"):
            store.decide_conflict(row.conflict_id, decision, "mallory", [], NOW_MS + 1)
    assert len(store.audit_entries()) == audit_before
    assert store.conflict(row.conflict_id) == done
    last = store.audit_entries()[-1].event
    assert last.code == EventCode.SECURITY_ALERT and last.actor == "alice" and "decided: replace" in last.detail


def test_decide_discard_frees_the_blocks(store: MetadataStore) -> None:
    row = held(store)
    assert row.newcomer is not None
    store.decide_conflict(row.conflict_id, Decision.DISCARD, "alice", [], NOW_MS)
    assert [i.digest for i in store.instances(STUDY)] == [row.existing_digest]
    assert row.newcomer.blocks[1] in store.unreferenced_blocks(NOW_S)


def test_decide_keep_both(store: MetadataStore) -> None:
    row = held(store)
    assert row.newcomer is not None
    with pytest.raises(ConflictError, match="new UID"):
        store.decide_conflict(row.conflict_id, Decision.KEEP_BOTH, "alice", [], NOW_MS)
    renamed = replace(instance(7, payload=b"re-encoded"), sop_instance_uid="2.25.1234")
    done = store.decide_conflict(row.conflict_id, Decision.KEEP_BOTH, "alice", [], NOW_MS, renamed=renamed)
    assert done.new_uid == "2.25.1234" and done.state is ConflictState.KEPT_BOTH
    assert {i.sop_instance_uid for i in store.instances(STUDY)} == {row.sop_instance_uid, "2.25.1234"}


def test_unknown_conflict_changes_nothing(store: MetadataStore) -> None:
    held(store)
    before = (store.conflicts(), len(store.audit_entries()))
    with pytest.raises(ConflictError, match="no conflict 99"):
        store.decide_conflict(99, Decision.REPLACE, "alice", [], NOW_MS)
    assert (store.conflicts(), len(store.audit_entries())) == before


def test_forward_conflict_is_held_once_and_cannot_keep_both(store: MetadataStore) -> None:
    a = instance(1)
    row = ConflictRow(0, "pacs:main", a.sop_instance_uid, STUDY, b"\x01" * 32, a.digest, ConflictPolicy.REJECT,
                      ConflictState.PENDING, "RGT", "", NOW_MS, manifest_id="bafkrei-manifest")
    first = store.add_forward_conflict(row, [], NOW_MS)
    assert first is not None and store.add_forward_conflict(row, [], NOW_MS) is None
    with pytest.raises(ConflictError, match="PACS holds one version"):
        store.decide_conflict(first, Decision.KEEP_BOTH, "alice", [], NOW_MS, renamed=instance(2))
    assert store.decide_conflict(first, Decision.REPLACE, "alice", [], NOW_MS).state is ConflictState.REPLACED


def test_held_conflict_survives_a_restart(tmp_path: Path) -> None:
    s = SqliteMetadataStore(tmp_path / "node.db")
    row = held(s)
    s.close()
    again = SqliteMetadataStore(tmp_path / "node.db")
    assert again.conflicts() == [row]
    again.close()


def test_superseded_digests_are_remembered(store: MetadataStore) -> None:
    a, b = instance(1), instance(1, payload=b"corrected pixels" * 8)
    store.add_instances([a], [], NOW_MS)
    assert store.superseded_digests(a.sop_instance_uid) == []
    store.add_instances([b], [], NOW_MS, [Incoming(ConflictPolicy.REPLACE)])
    assert store.superseded_digests(a.sop_instance_uid) == [a.digest]
