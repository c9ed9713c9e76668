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
from meshnode.storage.records import AddOutcome, ManifestRow, hash_uid
from meshnode.storage.sqlite_metadata import SqliteMetadataStore
from protocol.cid import CID
from protocol.conflict import ConflictError, ConflictPolicy, ConflictState, Decision
from protocol.lifecycle import ManifestState
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


# -- review fixes (finding 10: compare-and-set; 8: decided newcomers remembered; 11: recalled manifest) ------


def two_pending(store: MetadataStore) -> tuple[ConflictRow, ConflictRow]:
    a, b, c = instance(1), instance(1, payload=b"v2" * 50), instance(1, payload=b"v3" * 50)
    store.add_instances([a], [], NOW_MS)
    store.add_instances([b], [], NOW_MS, [REJECT])
    store.add_instances([c], [], NOW_MS, [REJECT])
    first, second = store.conflicts(ConflictState.PENDING)
    return first, second


def test_a_decision_rebases_the_other_pending_conflicts_of_the_uid(store: MetadataStore) -> None:
    first, second = two_pending(store)
    assert first.existing_digest == second.existing_digest == instance(1).digest
    store.decide_conflict(first.conflict_id, Decision.REPLACE, "user:alice", [], NOW_MS)
    again = store.conflict(second.conflict_id)
    assert again is not None and again.existing_digest == first.newcomer_digest  # what is stored now
    # bob saw the listing from before alice's decision: his replace is refused, nothing changes
    audit_before = len(store.audit_entries())
    with pytest.raises(ConflictError, match="not the one you saw"):
        store.decide_conflict(second.conflict_id, Decision.REPLACE, "user:bob", [], NOW_MS,
                              expected_existing=second.existing_digest)
    assert [i.digest for i in store.instances(STUDY)] == [first.newcomer_digest]
    assert len(store.audit_entries()) == audit_before and store.conflict(second.conflict_id) == again
    # deciding on what is stored now works, and its audit entry names alice's version as the one replaced
    store.decide_conflict(second.conflict_id, Decision.REPLACE, "user:bob", [], NOW_MS,
                          expected_existing=first.newcomer_digest)
    assert [i.digest for i in store.instances(STUDY)] == [second.newcomer_digest]
    last = store.audit_entries()[-1].event
    assert f"stored sha256 {first.newcomer_digest.hex()}" in last.detail and last.actor == "user:bob"


def test_a_decision_on_a_version_gone_since_is_refused(store: MetadataStore) -> None:
    row = held(store)
    store.forget_study(STUDY, [], NOW_MS)  # the stored version went (a recall, say)
    for decision in (Decision.REPLACE, Decision.KEEP_BOTH):
        renamed = replace(instance(7), sop_instance_uid="2.25.99") if decision is Decision.KEEP_BOTH else None
        with pytest.raises(ConflictError, match="changed since it was held"):
            store.decide_conflict(row.conflict_id, decision, "alice", [], NOW_MS, renamed=renamed)
    assert store.instances(STUDY) == [] and store.conflict(row.conflict_id) == row
    assert store.decide_conflict(row.conflict_id, Decision.DISCARD, "alice", [], NOW_MS).state \
        is ConflictState.DISCARDED


@pytest.mark.parametrize("decision", [Decision.KEEP_BOTH, Decision.DISCARD])
def test_a_decided_newcomer_sent_again_is_a_duplicate(store: MetadataStore, decision: Decision) -> None:
    row = held(store)
    assert row.newcomer is not None
    renamed = replace(instance(7, payload=b"re-encoded"), sop_instance_uid="2.25.1234")
    store.decide_conflict(row.conflict_id, decision, "alice", [], NOW_MS,
                          renamed=renamed if decision is Decision.KEEP_BOTH else None)
    before = (store.instances(STUDY), store.conflicts())
    for _ in range(3):
        assert store.add_instances([row.newcomer], [], NOW_MS, [REJECT]) == [AddOutcome.DUPLICATE]
        assert store.add_instances([row.newcomer], [], NOW_MS, [Incoming(ConflictPolicy.KEEP_BOTH)]) \
            == [AddOutcome.DUPLICATE]
    assert (store.instances(STUDY), store.conflicts()) == before
    # other bytes again are a new conflict
    third = instance(1, payload=b"third version" * 9)
    assert store.add_instances([third], [], NOW_MS, [REJECT]) == [AddOutcome.CONFLICT]


def recalled_forward_conflict(store: MetadataStore) -> int:
    manifest_id = CID.of(b"a received manifest")
    store.save_manifest(ManifestRow(manifest_id, STUDY, "received", "RGT", 2, ManifestState.RECEIPTED,
                                    NOW_S, NOW_S + 3600, b"raw", ("RJ1",)), [])
    a = instance(1)
    row = ConflictRow(0, "pacs:main", a.sop_instance_uid, STUDY, b"\x01" * 32, a.digest, ConflictPolicy.REJECT,
                      ConflictState.PENDING, "RGT", "", NOW_MS, manifest_id=str(manifest_id))
    conflict_id = store.add_forward_conflict(row, [], NOW_MS)
    assert conflict_id is not None
    store.set_manifest_state(manifest_id, ManifestState.RECALLED)
    return conflict_id


def test_a_decision_on_a_recalled_manifests_conflict_is_refused(store: MetadataStore) -> None:
    conflict_id = recalled_forward_conflict(store)
    before = (store.conflicts(), len(store.audit_entries()))
    with pytest.raises(ConflictError, match="recalled"):
        store.decide_conflict(conflict_id, Decision.REPLACE, "alice", [], NOW_MS)
    assert (store.conflicts(), len(store.audit_entries())) == before
    done = store.decide_conflict(conflict_id, Decision.DISCARD, "alice", [], NOW_MS)  # closing it is allowed
    assert done.state is ConflictState.DISCARDED
