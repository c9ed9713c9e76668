"""One contract, two implementations: the SQLite store and the in-memory one behave alike."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from meshnode.storage.audit import AuditEvent, EventCode, verify_chain
from meshnode.storage.memory_metadata import MemoryMetadataStore
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.records import AddOutcome, ManifestRow, hash_uid
from meshnode.storage.sqlite_metadata import SqliteMetadataStore
from protocol.cid import CID
from protocol.lifecycle import ManifestState
from tests.meshnode.storage.helpers import STUDY, instance

NOW_MS = 1_767_225_600_000
NOW_S = NOW_MS // 1000


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataStore]:
    s: MetadataStore = SqliteMetadataStore(tmp_path / "node.db") if request.param == "sqlite" else MemoryMetadataStore()
    yield s
    s.close()


def import_event(study: str = STUDY) -> AuditEvent:
    return AuditEvent(EventCode.IMPORT, "ingest", actor="tester", study=hash_uid(study))


def test_add_duplicate_and_conflict(store: MetadataStore) -> None:
    a, b = instance(1), instance(2)
    assert store.add_instances([a, b], [import_event()], NOW_MS) == [AddOutcome.ADDED, AddOutcome.ADDED]
    assert store.add_instances([a], [], NOW_MS) == [AddOutcome.DUPLICATE]
    changed = replace(instance(1, payload=b"other bytes"))
    # the default policy (reject): the newcomer is held in the conflict queue, not beside the stored one
    assert store.add_instances([changed], [], NOW_MS) == [AddOutcome.CONFLICT]
    kept = [i for i in store.instances(STUDY) if i.sop_instance_uid == a.sop_instance_uid]
    assert [i.digest for i in kept] == [a.digest]
    alerts = [e for e in store.audit_entries() if e.event.code == EventCode.SECURITY_ALERT]
    assert len(alerts) == 1 and alerts[0].event.study == hash_uid(STUDY)
    summary = store.study(STUDY)
    assert summary is not None and summary.instance_count == 2


def test_instances_round_trip_and_summary(store: MetadataStore) -> None:
    recs = [instance(2), instance(1), instance(1, series=2, modality="SR")]
    store.add_instances(recs, [], NOW_MS)
    got = store.instances(STUDY)
    assert [i.sop_instance_uid for i in got] == [recs[1].sop_instance_uid, recs[0].sop_instance_uid,
                                                recs[2].sop_instance_uid]
    assert got[0] == recs[1]
    summary = store.study(STUDY)
    assert summary is not None
    assert summary.series_count == 2 and summary.instance_count == 3
    assert summary.modalities == ("CT", "SR") and summary.total_bytes == sum(r.size for r in recs)
    assert summary.attributes.patient_id == "9434765919"
    assert [s.attributes.study_uid for s in store.studies()] == [STUDY]
    assert store.study("1.2.3") is None and store.instances("1.2.3") == []


def test_blocks_refcount_and_garbage(store: MetadataStore) -> None:
    a, b = instance(1), instance(1, study="1.2.3.4", payload=b"pixels 1" * 10)
    store.add_instances([a, b], [], NOW_MS)
    shared = a.blocks[1]
    assert b.blocks[1] == shared  # same pixel bytes in two studies
    assert store.block_refcount(shared, NOW_S) == 2
    assert store.present_blocks(list(a.blocks) + [CID.of(b"absent")]) == set(a.blocks)
    assert store.unreferenced_blocks(NOW_S) == []
    assert store.forget_study(STUDY, [], NOW_MS) == 1
    assert store.block_refcount(shared, NOW_S) == 1
    assert store.unreferenced_blocks(NOW_S) == [a.blocks[0]]
    store.forget_blocks([a.blocks[0]])
    assert store.present_blocks(a.blocks) == {shared}


def test_live_manifest_keeps_blocks_until_recalled_or_expired(store: MetadataStore) -> None:
    block = CID.of(b"received block")
    store.record_blocks([(block, 14)], NOW_MS)
    assert store.unreferenced_blocks(NOW_S) == [block]
    mid = CID.of(b"manifest bytes")
    row = ManifestRow(mid, STUDY, "received", "RGT", 1, ManifestState.FETCHING, NOW_S, NOW_S + 100, b"raw", ("RXX",))
    store.save_manifest(row, [block])
    assert store.unreferenced_blocks(NOW_S) == [] and store.block_refcount(block, NOW_S) == 1
    assert store.unreferenced_blocks(NOW_S + 101) == [block]  # expired
    store.set_manifest_state(mid, ManifestState.RECALLED)
    assert store.unreferenced_blocks(NOW_S) == [block]
    saved = store.manifest(mid)
    assert saved is not None and saved.state is ManifestState.RECALLED and saved.recipients == ("RXX",)
    assert [m.manifest_id for m in store.manifests("received")] == [mid] and store.manifests("sent") == []


def test_a_failed_manifest_keeps_why(store: MetadataStore) -> None:
    mid = CID.of(b"failed manifest")
    store.save_manifest(ManifestRow(mid, STUDY, "received", "RXH", 1, ManifestState.FETCHING,
                                    NOW_S, NOW_S + 100, b"raw", ("RGT",)), [])
    assert store.manifest_failure(mid) is None
    store.fail_manifest(mid, "instance 0123: its header's PatientName does not match its manifest", NOW_MS)
    saved = store.manifest(mid)
    assert saved is not None and saved.state is ManifestState.FAILED
    assert store.manifest_failure(mid) == "instance 0123: its header's PatientName does not match its manifest"
    store.fail_manifest(mid, "again", NOW_MS + 1)
    assert store.manifest_failure(mid) == "again" and store.manifest_failure(CID.of(b"other")) is None


def test_transfers_peers_roster(store: MetadataStore) -> None:
    mid = CID.of(b"m")
    assert store.transfer(mid) is None
    store.set_transfer(mid, ManifestState.FETCHING, 3, 3000, NOW_MS)
    store.set_transfer(mid, ManifestState.COMPLETE, 5, 5000, NOW_MS)
    assert store.transfer(mid) == ("complete", 5, 5000)
    assert store.highest_roster_version() == 0
    store.record_roster_version(4)
    store.record_roster_version(2)
    assert store.highest_roster_version() == 4
    store.record_peer("12D3KooWpeer", "RGT", NOW_MS)
    assert store.peers() == [("12D3KooWpeer", "RGT", NOW_MS)]


def test_audit_chain_is_valid(store: MetadataStore) -> None:
    store.add_instances([instance(1)], [import_event()], NOW_MS)
    store.append_audit([AuditEvent(EventCode.EXPORT, "export", actor="tester")], NOW_MS + 1)
    entries = store.audit_entries()
    assert [e.seq for e in entries] == [1, 2]
    assert verify_chain(entries) == []
    assert verify_chain(entries, (2, entries[-1].hash)) == []
    assert verify_chain(entries[:1], (2, entries[-1].hash))[0].problem.startswith("entries 2..2 are missing")


def test_receipts_revisions_served_by(store: MetadataStore) -> None:
    mid = CID.of(b"sent manifest")
    store.save_manifest(ManifestRow(mid, STUDY, "sent", "RGT", 1, ManifestState.SENT,
                                    NOW_S, NOW_S + 100, b"raw", ("RJ1",)), [])
    assert store.receipts(mid) == {}
    store.save_receipt(mid, "RJ1", b"receipt", NOW_MS)
    store.save_receipt(mid, "RJ1", b"a second receipt", NOW_MS + 5)  # the first verified one stays
    assert store.receipts(mid) == {"RJ1": b"receipt"} and store.receipts(CID.of(b"other")) == {}
    assert store.highest_revision(STUDY, "RGT") == 0  # sent manifests do not count
    for rev in (1, 3, 2):
        rid = CID.of(f"received {rev}".encode())
        store.save_manifest(ManifestRow(rid, STUDY, "received", "RGT", rev, ManifestState.ANNOUNCED,
                                        NOW_S, NOW_S + 9, b"r"), [])
    assert store.highest_revision(STUDY, "RGT") == 3 and store.highest_revision(STUDY, "NOPE") == 0
    received = store.received_manifests_of(STUDY)  # received ones only, of this study only
    assert sorted(r.revision for r in received) == [1, 2, 3] and {r.direction for r in received} == {"received"}
    assert store.received_manifests_of("1.2.3.999") == []
    store.set_transfer(mid, ManifestState.FETCHING, 1, 10, NOW_MS)
    blocks = [CID.of(bytes([i])) for i in range(4)]
    store.record_blocks([(c, 1) for c in blocks[:2]], NOW_MS, [(mid, blocks[0], "peer-a"), (mid, blocks[1], "peer-b")])
    # a block obtained twice under the same manifest (a retried request) counts once
    store.record_blocks([(c, 1) for c in blocks], NOW_MS, [(mid, c, "peer-a") for c in blocks])
    store.set_transfer(mid, ManifestState.COMPLETE, 4, 40, NOW_MS)
    assert store.served_by(mid) == {"peer-a": 3, "peer-b": 1}
    assert store.served_by(CID.of(b"none")) == {}


def test_provenance_follows_the_revisions_of_one_share(store: MetadataStore) -> None:
    """Blocks obtained under a received manifest count for it and for later revisions of the same share
    (same study, same sender org), never for another sender's manifest listing the same blocks."""
    a, b, c = CID.of(b"a"), CID.of(b"b"), CID.of(b"c")
    rev1, rev2, other = CID.of(b"rev1"), CID.of(b"rev2"), CID.of(b"other")
    store.save_manifest(ManifestRow(rev1, STUDY, "received", "RGT", 1, ManifestState.FETCHING, NOW_S, NOW_S + 9, b"r",
                                    ("RJ1", "RAJ")), [a, b])
    store.save_manifest(ManifestRow(rev2, STUDY, "received", "RGT", 2, ManifestState.ANNOUNCED, NOW_S, NOW_S + 9, b"r",
                                    ("RJ1",)), [a, b, c])
    store.save_manifest(ManifestRow(other, STUDY, "received", "RXH", 1, ManifestState.ANNOUNCED, NOW_S, NOW_S + 9, b"r",
                                    ("RJ1",)), [a, b, c])
    store.record_blocks([(a, 1), (b, 1), (c, 1)], NOW_MS, [(rev1, a, "p"), (rev2, c, "p")])
    assert store.obtained_blocks(rev1, [a, b, c]) == {a}
    assert store.obtained_blocks(rev2, [a, b, c]) == {a, c}  # a under revision 1, c under revision 2
    assert store.obtained_blocks(other, [a, b, c]) == set()  # another sender: nothing
    held = store.holdings([a, b])
    assert {(h.sender_org, h.first_hand) for h in held[a]} == {("RGT", True), ("RGT", False), ("RXH", False)}
    assert {(h.sender_org, h.first_hand) for h in held[b]} == {("RGT", False), ("RXH", False)}
    assert {h.recipients for h in held[a] if h.first_hand} == {frozenset({"RJ1", "RAJ"})}


def test_served_counts_add_up(store: MetadataStore) -> None:
    m1, m2 = CID.of(b"m1"), CID.of(b"m2")
    store.add_served(m1, "RJ1", 16, 1600, NOW_MS)
    store.add_served(m1, "RJ1", 4, 400, NOW_MS + 1)
    store.add_served(m1, "RAJ", 1, 10, NOW_MS + 2)
    store.add_served(m2, "RJ1", 2, 20, NOW_MS + 3)
    assert [(r.org, r.blocks, r.bytes) for r in store.served(m1)] == [("RAJ", 1, 10), ("RJ1", 20, 2000)]
    assert sum(r.blocks for r in store.served()) == 23


def test_a_received_manifest_keeps_its_senders_certificate(store: MetadataStore) -> None:
    mid = CID.of(b"with certificate")
    store.save_manifest(ManifestRow(mid, STUDY, "received", "RGT", 1, ManifestState.ANNOUNCED, NOW_S, NOW_S + 9, b"r",
                                    ("RJ1",), b"certificate bytes"), [])
    found = store.manifest(mid)
    assert found is not None and found.certificate == b"certificate bytes"


def test_not_in_manifest(store: MetadataStore) -> None:
    mid, a, b = CID.of(b"m"), CID.of(b"a"), CID.of(b"b")
    store.save_manifest(ManifestRow(mid, STUDY, "sent", "RGT", 1, ManifestState.SENT,
                                    NOW_S, NOW_S + 9, b"r", ("RJ1",)), [a])
    assert store.not_in_manifest(mid, [a, b]) == {b}
    assert store.not_in_manifest(CID.of(b"other"), [a]) == {a}
    assert store.not_in_manifest(mid, []) == set()


def test_recall_tombstones(store: MetadataStore) -> None:
    mid = CID.of(b"recalled before it arrived")
    assert store.recall_tombstone(mid) is None
    store.record_recall_tombstone(mid, "RGT", NOW_MS)
    store.record_recall_tombstone(mid, "RXH", NOW_MS + 1)  # the first word stands
    assert store.recall_tombstone(mid) == "RGT"


def test_audit_checkpoints_tail_and_spool(store: MetadataStore) -> None:
    from meshnode.storage.audit import Outcome
    from meshnode.storage.audit_checkpoint import CHECKPOINT_EVERY, checkpoint_problems
    from protocol.keys import SigningKey

    key = SigningKey(bytes(range(32)))
    store.set_audit_key(key)
    store.append_audit([AuditEvent(EventCode.EXPORT, "export")], NOW_MS)
    store.append_audit([AuditEvent(EventCode.EXPORT, "export", detail=str(i)) for i in range(CHECKPOINT_EVERY)],
                       NOW_MS + 1)
    store.append_audit([AuditEvent(EventCode.SECURITY_ALERT, "refused", Outcome.SERIOUS_FAILURE)], NOW_MS + 2)
    entries = store.audit_entries()
    assert [c.seq for c in store.audit_checkpoints()] == [1, CHECKPOINT_EVERY]  # the first, then every 64th
    tail = store.audit_tail()
    assert tail is not None and (tail.seq, tail.hash) == (entries[-1].seq, entries[-1].hash)
    assert checkpoint_problems(entries, store.audit_checkpoints(), tail, key.public_key) == []
    spool = store.audit_spool(10)
    assert [(i.kind, i.seq) for i in spool] == [("checkpoint", 1), ("checkpoint", CHECKPOINT_EVERY),
                                                ("entry", CHECKPOINT_EVERY + 2)]
    assert spool[2].payload["action"] == "refused" and spool[2].payload["code"] == 110113
    store.audit_spool_attempted([spool[0].id])
    assert store.audit_spool(1)[0].attempts == 1
    store.audit_spool_sent([spool[0].id, spool[1].id])
    assert store.audit_spool_size() == 1
