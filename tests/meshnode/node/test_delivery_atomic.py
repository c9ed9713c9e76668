"""What the deliveries write together is written together, and a failed write is not forgotten.

- a recall (the manifest RECALLED, the recall queued to every org, its undelivered announcements dropped) is
  one transaction: a write that fails half-way changes nothing, so the operator can recall again;
- a manifest recalled with no recall queued (written by an older version, or a stop between two writes)
  is recalled again by the operator's next recall, which queues what is missing;
- an announcement of a manifest that is recalled is never attempted (checked at attempt time);
- a write of the driver's state that fails is retried, not forgotten: a success stays a success.

The store is real (memory and SQLite); the failing write in SQLite is a real one (a trigger that aborts the
insert, as a full disk would), in memory a store method that raises.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence

import pytest
import trio
import trio.testing

from meshnode.node import lifecycle as node_lifecycle
from meshnode.node.delivery import KEYS, QUEUE, Deliveries
from meshnode.storage.memory_metadata import MemoryMetadataStore
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.records import ManifestRow
from meshnode.storage.retry_queue import QueuedRow
from meshnode.storage.sqlite_metadata import SqliteMetadataStore
from protocol.errors import StorageError
from protocol.lifecycle import ManifestEvent, ManifestState
from protocol.outbox import DeliveryKey, DeliveryKind, DeliveryState
from tests.meshnode.node.harness import MemoryMesh
from tests.meshnode.node.test_delivery_driver import (  # noqa: F401  (the store fixture)
    ANNOUNCE_RXX,
    M,
    InlineDb,
    Orgs,
    deliveries,
    running,
    store,
    stored,
    until,
)

RECALL_RXX = DeliveryKey(DeliveryKind.RECALL, M, "RXX")


def sent_manifest(s: MetadataStore) -> None:
    s.save_manifest(ManifestRow(M, "1.2.3", "sent", "RGT", 1, ManifestState.SENT, 0, 10**10, b"raw", ("RXX",)), [])


def fail_recall_rows(s: MetadataStore) -> Callable[[], None]:
    """Make storing a recall delivery fail (disk full); returns the undo."""
    if isinstance(s, SqliteMetadataStore):
        db = sqlite3.connect(s.path)
        db.execute("CREATE TRIGGER full BEFORE INSERT ON retry_queue WHEN NEW.key LIKE 'recall %'"
                   " BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END")
        db.commit()

        def undo() -> None:
            db.execute("DROP TRIGGER full")
            db.commit()
            db.close()
        return undo
    assert isinstance(s, MemoryMetadataStore)
    real = s.queue_add

    def full(rows: Sequence[QueuedRow]) -> list[str]:
        if any(r.key.startswith("recall ") for r in rows):
            raise StorageError("database update failed: database or disk is full")
        return real(rows)
    s.queue_add = full  # type: ignore[method-assign]

    def undo_memory() -> None:
        s.queue_add = real  # type: ignore[method-assign]
    return undo_memory


def fail_the_write_after_each_success(d: Deliveries) -> None:
    """The driver's write that follows each successful attempt fails once (disk full)."""
    fail = {"next_save": False}
    real_run = d.driver.db.run

    async def flaky(fn: Callable[[MetadataStore], object]) -> object:
        if fail["next_save"] and getattr(fn, "__name__", "") == "save":
            fail["next_save"] = False
            raise StorageError("database update failed: database or disk is full")
        return await real_run(fn)
    d.driver.db.run = flaky  # type: ignore[method-assign]
    real_attempt = d.driver._attempt_fn

    async def attempt(key: DeliveryKey, payload: bytes | None) -> None:
        await real_attempt(key, payload)
        fail["next_save"] = True
    d.driver._attempt_fn = attempt


def recalled(s: MetadataStore) -> None:
    node_lifecycle.move(s, M, ManifestEvent.RECALLED)


async def test_a_recall_whose_write_fails_changes_nothing_and_can_be_made_again(
        store: MetadataStore, autojump_clock: trio.testing.MockClock) -> None:
    sent_manifest(store)
    orgs = Orgs(store, per_org={"RXX": ["down"] * 100})
    d = deliveries(store, orgs)
    async with trio.open_nursery() as nursery:
        await running(nursery, d)
        await d.announce(M, ["RXX"])
        await until(lambda: len(orgs.attempts) >= 1)
        undo = fail_recall_rows(store)
        with pytest.raises(StorageError):
            await d.recall(M, ["RXX"], b"signed recall", also=recalled)
        # nothing of the recall was written: still SENT, the announcement still queued, no recall
        m = store.manifest(M)
        assert m is not None and m.state is ManifestState.SENT
        assert set(stored(store)) == {ANNOUNCE_RXX}
        undo()
        await d.recall(M, ["RXX"], b"signed recall", also=recalled)
        m = store.manifest(M)
        assert m is not None and m.state is ManifestState.RECALLED
        assert set(stored(store)) == {RECALL_RXX}  # the undelivered announcement dropped with it
        nursery.cancel_scope.cancel()


async def test_a_recall_and_the_dropping_of_its_announcements_are_one_write(
        store: MetadataStore, autojump_clock: trio.testing.MockClock) -> None:
    """A stop right after the recall's write leaves no announcement of the recalled manifest queued."""
    sent_manifest(store)
    orgs = Orgs(store, per_org={"RXX": ["down"] * 3})
    d = deliveries(store, orgs)
    writes: list[set[DeliveryKey]] = []
    real_run = d.driver.db.run

    async def watched(fn: Callable[[MetadataStore], object]) -> object:
        out = await real_run(fn)
        writes.append(set(stored(store)))
        return out
    d.driver.db.run = watched  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        await running(nursery, d)
        await d.announce(M, ["RXX"])
        await until(lambda: len(orgs.attempts) >= 1)
        writes.clear()
        await d.recall(M, ["RXX"], b"signed recall", also=recalled)
        nursery.cancel_scope.cancel()
    # after every database call the recall made, a restart would find: the recall queued, no announcement
    assert writes and all(ANNOUNCE_RXX not in w for w in writes if RECALL_RXX in w)
    assert all(RECALL_RXX in w for w in writes if ANNOUNCE_RXX not in w)


async def test_an_announcement_of_a_recalled_manifest_is_never_attempted(
        store: MetadataStore, autojump_clock: trio.testing.MockClock) -> None:
    """Left queued by an older version (or a stop): after the restart it fails for good, unsent."""
    sent_manifest(store)
    store.queue_add([QueuedRow(QUEUE, KEYS.encode(ANNOUNCE_RXX), KEYS.ref(ANNOUNCE_RXX), DeliveryState.PENDING,
                               0, 0, 0, "")])
    recalled(store)
    orgs = Orgs(store)
    d = deliveries(store, orgs)
    async with trio.open_nursery() as nursery:
        await running(nursery, d)
        with trio.move_on_after(3600):
            await until(lambda: stored(store)[ANNOUNCE_RXX][0] is not DeliveryState.PENDING)
        nursery.cancel_scope.cancel()
    assert orgs.attempts == []
    assert stored(store)[ANNOUNCE_RXX][0] is DeliveryState.FAILED
    (row,) = store.queue_rows(QUEUE)
    assert "recalled" in row.last_error


async def test_a_write_that_fails_once_is_written_later(
        store: MetadataStore, autojump_clock: trio.testing.MockClock) -> None:
    """The success of an attempt whose write failed is written when the restarted driver next writes."""
    sent_manifest(store)
    orgs = Orgs(store, per_org={"RXX": ["ok"]})
    d = deliveries(store, orgs)
    fail_the_write_after_each_success(d)
    restarts = 0

    async def keep_running() -> None:  # as meshnode.node.context.keep_running does
        nonlocal restarts
        while True:
            try:
                await d.run()
            except Exception:  # the driver failed (its write): restarted, as keep_running does
                restarts += 1
                await trio.sleep(1)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(keep_running)
        await trio.sleep(0.1)
        await d.announce(M, ["RXX"])
        await trio.sleep(600)
        nursery.cancel_scope.cancel()
    assert restarts == 1 and len(orgs.attempts) == 1
    assert stored(store)[ANNOUNCE_RXX][0] is DeliveryState.DELIVERED
    assert d.records() == []


async def test_a_receipt_whose_delivered_write_fails_is_still_receipted(
        store: MetadataStore, autojump_clock: trio.testing.MockClock) -> None:
    """The RECEIPT_DELIVERED move and on_receipted of a receipt are not lost with a failed write."""
    store.save_manifest(ManifestRow(M, "1.2.3", "received", "RXX", 1, ManifestState.COMPLETE, 0, 10**10, b"raw",
                                    ("RGT",)), [])
    orgs = Orgs(store, per_org={"RXX": ["ok"]})
    receipted: list[object] = []
    d = deliveries(store, orgs, receipted=receipted)  # type: ignore[arg-type]
    fail_the_write_after_each_success(d)

    async def keep_running() -> None:
        while True:
            try:
                await d.run()
            except Exception:  # the driver failed (its write): restarted, as keep_running does
                await trio.sleep(1)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(keep_running)
        await trio.sleep(0.1)
        await d.receipt(M, "RXX", b"signed receipt")
        await trio.sleep(600)
        nursery.cancel_scope.cancel()
    m = store.manifest(M)
    assert m is not None and m.state is ManifestState.RECEIPTED
    assert receipted == [M]


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_atomic_is_all_or_nothing(kind: str, tmp_path: object) -> None:
    from pathlib import Path
    s: MetadataStore = (SqliteMetadataStore(Path(str(tmp_path)) / "node.db") if kind == "sqlite"
                        else MemoryMetadataStore())
    sent_manifest(s)
    with pytest.raises(StorageError), s.atomic():
        recalled(s)
        s.queue_add([QueuedRow(QUEUE, "x", "x", DeliveryState.PENDING, 0, 0, 0, "")])
        raise StorageError("disk full")
    m = s.manifest(M)
    assert m is not None and m.state is ManifestState.SENT and s.queue_rows(QUEUE) == []
    with s.atomic():
        with s.atomic():  # nested: joins
            recalled(s)
        s.queue_add([QueuedRow(QUEUE, "x", "x", DeliveryState.PENDING, 0, 0, 0, "")])
    m = s.manifest(M)
    assert m is not None and m.state is ManifestState.RECALLED and len(s.queue_rows(QUEUE)) == 1
    s.close()


async def test_recalling_a_recalled_manifest_queues_the_missing_recalls(
        autojump_clock: trio.testing.MockClock, mesh: MemoryMesh, study: str) -> None:
    a = mesh.add("a", "RGT", 50)
    signed = await mesh.share(a, study, ["RAJ", "RJ1"])
    # recalled with nothing queued: a stop between two writes of an older version
    a.store.queue_remove(QUEUE, [r.key for r in a.store.queue_rows(QUEUE)])
    node_lifecycle.move(a.store, signed.cid, ManifestEvent.RECALLED)
    await a.sender.recall(signed.cid, "wrong patient")
    kinds = sorted((KEYS.decode(r.key).kind.value, KEYS.decode(r.key).org) for r in a.store.queue_rows(QUEUE))
    assert kinds == [("recall", "RAJ"), ("recall", "RJ1")]
    # and again: nothing more, nothing twice
    await a.sender.recall(signed.cid, "wrong patient")
    assert len(a.store.queue_rows(QUEUE)) == 2
