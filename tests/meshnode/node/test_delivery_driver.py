"""The node's deliveries (meshnode.node.delivery) driving protocol.outbox.Outbox, in-process on trio's
MockClock: retries with backoff, attempt timeout, max attempts, restart, receipts. The network is a
scripted stand-in for the recipient orgs' nodes (`Orgs`); the database is the real store (memory or SQLite)."""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import trio
import trio.testing

from meshnode.node.delivery import KEYS, QUEUE, Deliveries
from meshnode.node.retry_driver import RetryPolicy
from meshnode.storage.memory_metadata import MemoryMetadataStore
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.retry_queue import QueuedRow
from meshnode.storage.records import ManifestRow
from meshnode.storage.sqlite_metadata import SqliteMetadataStore
from protocol.backoff import Backoff
from protocol.cid import CID
from protocol.errors import SignatureError, UnavailableError
from protocol.lifecycle import ManifestState
from protocol.outbox import DeliveryKey, DeliveryKind, DeliveryRecord, DeliveryState

T = TypeVar("T")
M = CID.of(b"manifest")
NO_JITTER = RetryPolicy(Backoff(base=2.0, factor=2.0, cap=900.0), attempt_timeout=60.0, max_attempts=None,
                        jitter=0.0, concurrency=8)


class InlineDb:
    """DatabaseThread's interface, run inline: the store is real, only the thread hop is left out (a thread
    would let the MockClock jump while a write is in progress)."""

    def __init__(self, store: MetadataStore) -> None:
        self.store = store

    async def run(self, fn: Callable[[MetadataStore], T]) -> T:
        await trio.lowlevel.checkpoint()
        return fn(self.store)


class Orgs:
    """The recipient orgs' nodes as the deliveries see them: each attempt is recorded (its time and what
    the store held then); `script` says what the next attempts do."""

    def __init__(self, store: MetadataStore, script: list[str] | None = None,
                 per_org: dict[str, list[str]] | None = None) -> None:
        self.store = store
        self.script = list(script or [])
        self.per_org = per_org or {}
        self.attempts: list[tuple[float, DeliveryKey, bytes | None]] = []
        self.stored_before_attempt: list[bool] = []

    async def deliver(self, key: DeliveryKey, payload: bytes | None) -> None:
        self.attempts.append((trio.current_time(), key, payload))
        self.stored_before_attempt.append(KEYS.encode(key) in {r.key for r in self.store.queue_rows(QUEUE)})
        script = self.per_org.get(key.org, self.script)
        action = script.pop(0) if script else "ok"
        if action == "down":
            raise UnavailableError(f"no reachable node of {key.org}")
        if action == "reset":
            raise ConnectionResetError(104, "Connection reset by peer")
        if action == "refuse":
            raise SignatureError("bad signature")
        if action == "hang":
            await trio.sleep_forever()
        if action == "bug":
            raise KeyError("a bug in the driver's caller")


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataStore]:
    s: MetadataStore = (SqliteMetadataStore(tmp_path / "node.db") if request.param == "sqlite"
                        else MemoryMetadataStore())
    yield s
    s.close()


def deliveries(store: MetadataStore, orgs: Orgs, policy: RetryPolicy = NO_JITTER,
               receipted: list[CID] | None = None, failed: list[DeliveryRecord[DeliveryKey]] | None = None,
               ) -> Deliveries:
    async def on_receipted(m: CID) -> None:
        if receipted is not None:
            receipted.append(m)

    async def on_failed(r: DeliveryRecord[DeliveryKey]) -> None:
        if failed is not None:
            failed.append(r)

    return Deliveries(InlineDb(store), trio.current_time, orgs, on_receipted=on_receipted, on_failed=on_failed,
                      policy=policy, rng=random.Random(7))


async def running(nursery: trio.Nursery, d: Deliveries) -> None:
    await nursery.start(d.run)


async def until(check: Callable[[], bool]) -> None:
    while not check():
        await trio.sleep(0.5)


def stored(store: MetadataStore) -> dict[DeliveryKey, tuple[DeliveryState, int]]:
    return {KEYS.decode(r.key): (r.state, r.attempts) for r in store.queue_rows(QUEUE) if r.ref != "x"}


ANNOUNCE_RXX = DeliveryKey(DeliveryKind.ANNOUNCE, M, "RXX")


async def test_retries_with_backoff_until_delivered(store: MetadataStore, autojump_clock: trio.testing.MockClock
                                                    ) -> None:
    orgs = Orgs(store, ["down", "reset", "down"])
    d = deliveries(store, orgs)
    async with trio.open_nursery() as nursery:
        await running(nursery, d)
        start = trio.current_time()
        await d.announce(M, ["RXX"])
        await until(lambda: stored(store).get(ANNOUNCE_RXX, (None, 0))[0] is DeliveryState.DELIVERED)
        nursery.cancel_scope.cancel()
    assert [round(t - start, 3) for t, _, _ in orgs.attempts] == [0.0, 2.0, 6.0, 14.0]  # 2, 4, 8 s between
    assert stored(store) == {ANNOUNCE_RXX: (DeliveryState.DELIVERED, 4)}
    assert all(orgs.stored_before_attempt)  # data safety: recorded durably before any attempt


async def test_jitter_is_drawn_by_the_driver_within_its_bounds(store: MetadataStore,
                                                               autojump_clock: trio.testing.MockClock) -> None:
    orgs = Orgs(store, ["down"] * 6)
    d = deliveries(store, orgs, policy=RetryPolicy(Backoff(base=10.0, cap=900.0), jitter=0.2))
    async with trio.open_nursery() as nursery:
        await running(nursery, d)
        await d.announce(M, ["RXX"])
        await until(lambda: len(orgs.attempts) == 7)
        nursery.cancel_scope.cancel()
    gaps = [b[0] - a[0] for a, b in zip(orgs.attempts, orgs.attempts[1:])]
    for n, gap in enumerate(gaps, start=1):
        assert 0.8 * 10 * 2 ** (n - 1) <= gap <= 1.2 * 10 * 2 ** (n - 1)
    assert len({round(g / 2 ** n, 6) for n, g in enumerate(gaps)}) > 1  # drawn, not constant


async def test_an_attempt_that_hangs_times_out_and_is_retried(store: MetadataStore,
                                                              autojump_clock: trio.testing.MockClock) -> None:
    orgs = Orgs(store, ["hang"])
    d = deliveries(store, orgs)
    async with trio.open_nursery() as nursery:
        await running(nursery, d)
        start = trio.current_time()
        await d.announce(M, ["RXX"])
        await until(lambda: len(orgs.attempts) == 1 and stored(store)[ANNOUNCE_RXX][0] is DeliveryState.PENDING)
        record = d.records()[0]
        assert record.last_error.startswith("no answer within 60 s") and record.attempts == 1
        await until(lambda: stored(store)[ANNOUNCE_RXX][0] is DeliveryState.DELIVERED)
        nursery.cancel_scope.cancel()
    assert [round(t - start, 3) for t, _, _ in orgs.attempts] == [0.0, 62.0]  # timeout, then 2 s backoff


async def test_max_attempts_then_failed_until_an_operator_retries(store: MetadataStore,
                                                                  autojump_clock: trio.testing.MockClock) -> None:
    orgs = Orgs(store, ["down"] * 3)
    failed: list[DeliveryRecord[DeliveryKey]] = []
    d = deliveries(store, orgs, policy=RetryPolicy(Backoff(), attempt_timeout=60.0, max_attempts=3, jitter=0.0),
                   failed=failed)
    async with trio.open_nursery() as nursery:
        await running(nursery, d)
        await d.announce(M, ["RXX"])
        await until(lambda: bool(failed))
        await trio.sleep(86400)  # a day later: nothing more was attempted
        assert len(orgs.attempts) == 3 and stored(store) == {ANNOUNCE_RXX: (DeliveryState.FAILED, 3)}
        assert [r.key for r in failed] == [ANNOUNCE_RXX] and "no reachable node" in failed[0].last_error
        assert await d.retry(M) == 1
        await until(lambda: stored(store)[ANNOUNCE_RXX][0] is DeliveryState.DELIVERED)
        nursery.cancel_scope.cancel()
    assert len(orgs.attempts) == 4


async def test_a_permanent_refusal_fails_at_once(store: MetadataStore, autojump_clock: trio.testing.MockClock
                                                 ) -> None:
    orgs = Orgs(store, ["refuse"])
    failed: list[DeliveryRecord[DeliveryKey]] = []
    d = deliveries(store, orgs, failed=failed)
    async with trio.open_nursery() as nursery:
        await running(nursery, d)
        await d.announce(M, ["RXX", "RYY"])
        await until(lambda: len(failed) == 1 and len(orgs.attempts) == 2)
        await until(lambda: DeliveryState.DELIVERED in {s for s, _ in stored(store).values()})
        nursery.cancel_scope.cancel()
    refused = failed[0].key
    assert stored(store)[refused] == (DeliveryState.FAILED, 1) and "signature" in failed[0].last_error
    assert len(orgs.attempts) == 2


async def test_a_restart_restores_the_outbox(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    path = tmp_path / "node.db"
    store = SqliteMetadataStore(path)
    orgs = Orgs(store, per_org={"RXX": ["down", "down"], "RYY": ["hang"]})
    async with trio.open_nursery() as nursery:
        d = deliveries(store, orgs)
        await running(nursery, d)
        start = trio.current_time()
        await d.announce(M, ["RXX"])
        await d.announce(CID.of(b"second"), ["RYY"])
        await until(lambda: len(orgs.attempts) == 3)  # RXX: down, down (next at +6 s); RYY hangs
        nursery.cancel_scope.cancel()  # the node stops
    store.close()
    store = SqliteMetadataStore(path)  # and starts again
    try:
        orgs2 = Orgs(store)
        async with trio.open_nursery() as nursery:
            d = deliveries(store, orgs2)
            await running(nursery, d)
            restarted = trio.current_time()
            await until(lambda: all(s is DeliveryState.DELIVERED for s, _ in stored(store).values()))
            nursery.cancel_scope.cancel()
        # the attempt cut short is due at once; RXX keeps its attempts and its backoff (due 6 s after start)
        times = {k.org: round(t - restarted, 3) for t, k, _ in orgs2.attempts}
        assert times == {"RYY": 0.0, "RXX": round(start + 6.0 - restarted, 3)}
        assert {k.org: n for k, (_, n) in stored(store).items()} == {"RXX": 3, "RYY": 2}
    finally:
        store.close()


async def test_a_receipt_survives_a_restart(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """The finding: a receipt lived only in a coroutine retrying it in memory; a stop lost it."""
    path = tmp_path / "node.db"
    store = SqliteMetadataStore(path)
    store.save_manifest(ManifestRow(M, "1.2.3", "received", "RGT", 1, ManifestState.FETCHING, 0, 10**10, b"raw"), [])
    orgs = Orgs(store, ["down"] * 3)

    def complete(s: MetadataStore) -> None:
        s.set_manifest_state(M, ManifestState.COMPLETE)

    async with trio.open_nursery() as nursery:
        d = deliveries(store, orgs)
        await running(nursery, d)
        await d.receipt(M, "RGT", b"signed receipt", also=complete)
        await until(lambda: len(orgs.attempts) == 2)
        nursery.cancel_scope.cancel()
    store.close()
    store = SqliteMetadataStore(path)
    try:
        row = store.manifest(M)
        assert row is not None and row.state is ManifestState.COMPLETE
        receipted: list[CID] = []
        orgs2 = Orgs(store, ["down"])
        async with trio.open_nursery() as nursery:
            d = deliveries(store, orgs2, receipted=receipted)
            await running(nursery, d)
            assert [r.key.kind for r in d.records(M)] == [DeliveryKind.RECEIPT]
            await until(lambda: bool(receipted))
            nursery.cancel_scope.cancel()
        key = DeliveryKey(DeliveryKind.RECEIPT, M, "RGT")
        assert [(k, p) for _, k, p in orgs2.attempts] == [(key, b"signed receipt")] * 2
        assert receipted == [M] and d.records() == []  # delivered: only in the database now
        row = store.manifest(M)
        assert row is not None and row.state is ManifestState.RECEIPTED  # written with the delivered state
        assert stored(store) == {key: (DeliveryState.DELIVERED, 4)}
    finally:
        store.close()


async def test_a_recall_replaces_announcements_not_yet_delivered(store: MetadataStore,
                                                                 autojump_clock: trio.testing.MockClock) -> None:
    orgs = Orgs(store, ["ok", "down", "down"])
    d = deliveries(store, orgs)
    async with trio.open_nursery() as nursery:
        await running(nursery, d)
        await d.announce(M, ["RXX"])
        await until(lambda: stored(store).get(ANNOUNCE_RXX, (None, 0))[0] is DeliveryState.DELIVERED)
        await d.announce(M, ["RYY"])
        await until(lambda: len(orgs.attempts) == 3)
        await d.recall(M, ["RXX", "RYY"], b"signed recall")
        await until(lambda: all(s is DeliveryState.DELIVERED for s, _ in stored(store).values()))
        nursery.cancel_scope.cancel()
    recall = DeliveryKind.RECALL
    assert set(stored(store)) == {ANNOUNCE_RXX, DeliveryKey(recall, M, "RXX"), DeliveryKey(recall, M, "RYY")}
    assert {(k.kind, k.org, p) for _, k, p in orgs.attempts[3:]} == {(recall, "RXX", b"signed recall"),
                                                                     (recall, "RYY", b"signed recall")}


async def test_network_failures_are_one_line_and_bugs_keep_their_traceback(
        store: MetadataStore, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    orgs = Orgs(store, ["reset", "bug"])
    d = deliveries(store, orgs)
    with caplog.at_level(logging.INFO, logger="meshnode.node"):
        async with trio.open_nursery() as nursery:
            await running(nursery, d)
            await d.announce(M, ["RXX"])
            await until(lambda: stored(store).get(ANNOUNCE_RXX, (None, 0))[0] is DeliveryState.DELIVERED)
            nursery.cancel_scope.cancel()
    reset = [r for r in caplog.records if "ConnectionResetError" in r.getMessage()]
    assert len(reset) == 1 and reset[0].levelno == logging.INFO and reset[0].exc_info is None
    bug = [r for r in caplog.records if r.exc_info is not None]
    assert len(bug) == 1 and bug[0].levelno == logging.ERROR
    assert bug[0].exc_info is not None and bug[0].exc_info[0] is KeyError
    assert len(orgs.attempts) == 3  # the bug counted as a failed attempt; the queue kept going


async def test_delivered_items_leave_memory_and_are_never_queued_twice(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    store = SqliteMetadataStore(tmp_path / "node.db")
    try:
        orgs = Orgs(store)
        async with trio.open_nursery() as nursery:
            d = deliveries(store, orgs)
            await running(nursery, d)
            await d.announce(M, ["RXX"])
            await until(lambda: stored(store).get(ANNOUNCE_RXX, (None, 0))[0] is DeliveryState.DELIVERED)
            assert d.records() == [] and d.pending() == 0
            nursery.cancel_scope.cancel()
        async with trio.open_nursery() as nursery:  # restarted: the delivered item is not loaded ...
            d = deliveries(store, orgs)
            await running(nursery, d)
            assert d.records() == []
            await d.announce(M, ["RXX"])  # ... nor queued again
            await trio.sleep(3600)
            nursery.cancel_scope.cancel()
        assert len(orgs.attempts) == 1 and d.records() == []
        assert [r.state for r in await d.driver.stored()] == [DeliveryState.DELIVERED]
    finally:
        store.close()


async def test_no_more_than_concurrency_attempts_and_none_waits_past_its_deadline(
        store: MetadataStore, autojump_clock: trio.testing.MockClock) -> None:
    orgs = Orgs(store, per_org={org: ["hang"] for org in ("RAA", "RBB", "RCC", "RDD")})
    in_flight, most = [0], [0]
    deliver = orgs.deliver

    async def counted(key: DeliveryKey, payload: bytes | None) -> None:
        in_flight[0] += 1
        most[0] = max(most[0], in_flight[0])
        try:
            await deliver(key, payload)
        finally:
            in_flight[0] -= 1

    orgs.deliver = counted  # type: ignore[method-assign]
    d = deliveries(store, orgs, policy=RetryPolicy(Backoff(), attempt_timeout=60.0, jitter=0.0, concurrency=2))
    async with trio.open_nursery() as nursery:
        await running(nursery, d)
        start = trio.current_time()
        await d.announce(M, ["RAA", "RBB", "RCC", "RDD"])
        await until(lambda: all(s is DeliveryState.DELIVERED for s, _ in stored(store).values())
                    and len(stored(store)) == 4)
        nursery.cancel_scope.cancel()
    assert most[0] == 2
    first = sorted(round(t - start) for t, _, _ in orgs.attempts[:4])
    assert first == [0, 0, 60, 60]  # two hang until their timeout, then the other two start
    assert {n for _, n in stored(store).values()} == {2}  # each: one timed-out attempt, one delivered


async def test_an_unreadable_stored_item_is_skipped_not_fatal(store: MetadataStore,
                                                               autojump_clock: trio.testing.MockClock) -> None:
    """A row someone changed (or a bug wrote) does not stop every other delivery from being restored."""
    bad = [QueuedRow(QUEUE, key, "x", DeliveryState.PENDING, 0, 0, 0) for key in
           ("announce nothex RXX", "announce 00 RXX", "bogus 0155 RXX", "announce", f"receipt {M.to_bytes().hex()} r")]
    store.queue_add(bad)
    orgs = Orgs(store)
    d = deliveries(store, orgs)
    async with trio.open_nursery() as nursery:
        await running(nursery, d)
        await d.announce(M, ["RXX"])
        await until(lambda: stored(store).get(ANNOUNCE_RXX, (None, 0))[0] is DeliveryState.DELIVERED)
        nursery.cancel_scope.cancel()
    assert [k for _, k, _ in orgs.attempts] == [ANNOUNCE_RXX]
    assert {r.key for r in store.queue_rows(QUEUE)} >= {b.key for b in bad}  # left as they were


def test_the_node_retries_with_protocols_outbox_and_policy() -> None:
    """The state machine and the numbers are protocol/'s, so the simulator can import the same ones."""
    from meshnode.node import delivery
    from protocol.delivery_policy import ATTEMPT_BACKSTOP, DeliveryPolicy

    d = deliveries(MemoryMetadataStore(), Orgs(MemoryMetadataStore()), policy=delivery.POLICY)
    node = DeliveryPolicy()
    assert isinstance(delivery.POLICY, DeliveryPolicy)
    assert (delivery.POLICY.backoff, delivery.POLICY.attempt_timeout, delivery.POLICY.max_attempts,
            delivery.POLICY.jitter) == (node.backoff, node.attempt_timeout, node.max_attempts, node.jitter)
    outbox = d.driver.outbox
    assert (outbox.backoff, outbox.attempt_timeout, outbox.max_attempts) == (
        node.backoff, node.attempt_timeout + ATTEMPT_BACKSTOP, node.max_attempts)
