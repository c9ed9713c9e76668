"""One contract, two implementations: the gateway's SQLite state and the in-memory one behave alike."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from meshnode.storage.gateway_store import (
    AnnouncementState,
    Arrival,
    ForwardInstance,
    ForwardResult,
    ForwardState,
    GatewayStore,
)
from meshnode.storage.memory_gateway import MemoryGatewayStore
from meshnode.storage.sqlite_gateway import SqliteGatewayStore
from protocol.cid import CID

STUDY = "1.2.826.0.1.3680043.8.498.100"
M1, M2 = CID.of(b"manifest 1"), CID.of(b"manifest 2")
NOW = 1_767_225_600_000


def instances(n: int) -> list[ForwardInstance]:
    return [ForwardInstance(f"{STUDY}.1.{i}", bytes([i]) * 32) for i in range(n)]


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[GatewayStore]:
    s: GatewayStore = SqliteGatewayStore(tmp_path / "node.db") if request.param == "sqlite" else MemoryGatewayStore()
    yield s
    s.close()


def test_arrivals_open_and_reopen_an_announcement(store: GatewayStore) -> None:
    store.note_arrivals([Arrival(STUDY, "stroke", 3)], NOW)
    store.note_arrivals([Arrival(STUDY, "stroke", 2)], NOW + 10)
    row = store.announcement(STUDY, "stroke")
    assert row is not None and row.state is AnnouncementState.PENDING
    assert (row.instances, row.first_ms, row.last_instance_ms, row.revision) == (5, NOW, NOW + 10, 0)
    # an instance arrived after what the share covered: stays pending
    assert not store.mark_announced(STUDY, "stroke", M1, 1, NOW + 5, NOW + 20)
    assert store.announcement(STUDY, "stroke").state is AnnouncementState.PENDING  # type: ignore[union-attr]
    assert store.mark_announced(STUDY, "stroke", M1, 1, NOW + 10, NOW + 20)
    row = store.announcement(STUDY, "stroke")
    assert row is not None and row.state is AnnouncementState.ANNOUNCED and row.manifest_id == M1
    assert store.announcements(AnnouncementState.PENDING) == []
    store.note_arrivals([Arrival(STUDY, "stroke", 1)], NOW + 30)  # a late instance re-opens it
    row = store.announcement(STUDY, "stroke")
    assert row is not None and row.state is AnnouncementState.PENDING and row.instances == 1 and row.revision == 1
    store.announce_failed(STUDY, "stroke", "unavailable: no node", NOW + 40)
    row = store.announcement(STUDY, "stroke")
    assert row is not None and (row.attempts, row.next_attempt_ms, row.last_error) == (1, NOW + 40,
                                                                                      "unavailable: no node")
    store.forget_announcement(STUDY, "stroke")
    assert store.announcement(STUDY, "stroke") is None


def test_forward_queue_lifecycle(store: GatewayStore) -> None:
    assert store.enqueue_forward(M1, STUDY, "main", 2, instances(3), NOW) == 3
    assert store.enqueue_forward(M1, STUDY, "main", 2, instances(3), NOW) == 0  # idempotent
    assert store.forward_due("main", NOW, 10) == []  # waiting for the receipt
    assert store.waiting_manifests() == [M1]
    assert store.forward_progress(M1)["main"].state == "waiting-for-receipt"
    assert store.release_forward(M1, NOW + 1) == 3
    due = store.forward_due("main", NOW + 1, 10)
    assert [i.seq for i in due] == [0, 1, 2] and all(i.state is ForwardState.PENDING for i in due)
    store.record_forward([
        ForwardResult(M1, "main", due[0].sop_instance_uid, ForwardState.SENT, 1, NOW + 2, "", 0),
        ForwardResult(M1, "main", due[1].sop_instance_uid, ForwardState.PENDING, 1, NOW + 5000, "PACS refused it",
                      0xA700),
    ], NOW + 2)
    assert [i.seq for i in store.forward_due("main", NOW + 3, 10)] == [2]
    assert store.next_forward_ms("main") == 0
    store.defer_forward("main", NOW + 9000, "cannot connect", NOW + 3)
    assert store.forward_due("main", NOW + 3, 10) == [] and store.next_forward_ms("main") == NOW + 9000
    progress = store.forward_progress(M1)["main"]
    assert (progress.total, progress.sent, progress.pending, progress.state) == (3, 1, 2, "forwarding")
    assert progress.last_error == "cannot connect"
    assert store.forward_counts() == {"main": {"sent": 1, "pending": 2}}


def test_an_instance_the_pacs_holds_is_not_sent_again(store: GatewayStore) -> None:
    store.enqueue_forward(M1, STUDY, "main", 2, instances(2), NOW)
    store.release_forward(M1, NOW)
    for item in store.forward_due("main", NOW, 10):
        store.record_forward([ForwardResult(M1, "main", item.sop_instance_uid, ForwardState.SENT, 1, NOW, "", 0)], NOW)
    # revision 2 of the study: the two held instances and a new one
    assert store.enqueue_forward(M2, STUDY, "main", 1, instances(3), NOW + 1) == 1
    store.release_forward(M2, NOW + 1)
    assert [i.sop_instance_uid for i in store.forward_due("main", NOW + 1, 10)] == [instances(3)[2].sop_instance_uid]
    assert store.forward_progress(M2)["main"].sent == 2


def test_urgent_items_first_then_oldest(store: GatewayStore) -> None:
    store.enqueue_forward(M1, STUDY, "main", 2, instances(2), NOW)
    store.enqueue_forward(M2, STUDY + ".9", "main", 1, [ForwardInstance("9.9", b"x" * 32)], NOW + 5)
    store.release_forward(M1, NOW + 6)
    store.release_forward(M2, NOW + 6)
    assert [i.manifest_id for i in store.forward_due("main", NOW + 6, 10)] == [M2, M1, M1]
    assert len(store.forward_due("main", NOW + 6, 2)) == 2
    assert store.forward_due("other", NOW + 6, 10) == []


def test_failed_items_retry_and_recall_cancels(store: GatewayStore) -> None:
    store.enqueue_forward(M1, STUDY, "main", 2, instances(2), NOW)
    store.release_forward(M1, NOW)
    first, second = store.forward_due("main", NOW, 10)
    store.record_forward([ForwardResult(M1, "main", first.sop_instance_uid, ForwardState.FAILED, 5, NOW,
                                        "PACS refused it: 0xA900", 0xA900)], NOW)
    assert store.forward_progress(M1)["main"].failed == 1
    assert store.retry_forward(None, "other", NOW) == 0
    assert store.retry_forward(M1, "main", NOW) == 1
    assert len(store.forward_due("main", NOW, 10)) == 2
    assert store.cancel_forward(M1, NOW) == 2
    assert store.forward_due("main", NOW, 10) == [] and store.forward_progress(M1)["main"].state == "cancelled"
    # results for a cancelled item do not bring it back
    store.record_forward([ForwardResult(M1, "main", second.sop_instance_uid, ForwardState.SENT, 1, NOW, "", 0)], NOW)
    assert store.forward_progress(M1)["main"].sent == 0


def test_sqlite_state_survives_a_reopen(tmp_path: Path) -> None:
    s = SqliteGatewayStore(tmp_path / "node.db")
    s.note_arrivals([Arrival(STUDY, "rgt", 7)], NOW)
    s.enqueue_forward(M1, STUDY, "main", 1, instances(4), NOW)
    s.close()
    again = SqliteGatewayStore(tmp_path / "node.db")
    assert [a.instances for a in again.announcements(AnnouncementState.PENDING)] == [7]
    assert again.waiting_manifests() == [M1] and again.forward_progress(M1)["main"].total == 4
    again.close()
