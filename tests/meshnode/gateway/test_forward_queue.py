"""The PACS forward queue on the node's shared retry queue (meshnode.node.retry_driver in batch mode), in-process
on trio's MockClock: the PACS is a scripted stand-in for one DICOM association per batch (`ScriptedPacs`), the
database the real store (memory and SQLite). What the forwarder's items live through: queued when the receipt is
delivered, retried with the shared backoff while the PACS is down (not counted as attempts), failed at once on a
permanent refusal, retried by the operator, carried over a restart, removed on recall."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import pytest
import trio
import trio.testing

from meshnode.gateway.config import PacsDestination
from meshnode.gateway.forwarder import Forwarder
from meshnode.gateway.pacs_queue import ForwardKey, queue_name
from meshnode.node.delivery import Deliveries
from meshnode.node.retry_driver import BatchOutcome, Failure
from meshnode.storage.audit import AuditEvent
from meshnode.storage.memory_metadata import MemoryMetadataStore
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.records import ManifestRow
from meshnode.storage.sqlite_metadata import SqliteMetadataStore
from protocol.cid import CID
from protocol.document import Signed
from protocol.errors import StorageError
from protocol.lifecycle import ManifestState
from protocol.manifest import Manifest, Priority
from protocol.outbox import DeliveryKey, DeliveryState
from tests.protocol.factories import NODE_A, make_instance, make_manifest

T = TypeVar("T")


class InlineDb:
    """DatabaseThread's interface run inline (a thread would let the MockClock jump during a write)."""

    def __init__(self, store: MetadataStore) -> None:
        self.store = store

    async def run(self, fn: Callable[[MetadataStore], T]) -> T:
        await trio.lowlevel.checkpoint()
        return fn(self.store)


class ScriptedPacs:
    """One association per batch: `script` says what the next associations do ("down": refused or not
    listening; "ok": stores everything except what `refuse` lists, answered with that status)."""

    def __init__(self, script: Sequence[str] = ()) -> None:
        self.script = list(script)
        self.refuse: dict[str, int] = {}
        self.associations: list[float] = []
        self.stored: list[str] = []

    async def send(self, dest: PacsDestination, keys: Sequence[ForwardKey]) -> BatchOutcome[ForwardKey]:
        self.associations.append(trio.current_time())
        if (self.script.pop(0) if self.script else "ok") == "down":
            return BatchOutcome({}, "cannot connect: [Errno 111] Connection refused")
        results: dict[ForwardKey, Failure | None] = {}
        for key in keys:
            code = self.refuse.get(key.sop_instance_uid)
            if code is None:
                self.stored.append(key.sop_instance_uid)
                results[key] = None
            else:
                results[key] = Forwarder.refusal(code, "")
        return BatchOutcome(results)


DEST = PacsDestination("main", "PACS", "127.0.0.1", 11112, retry_max_s=60, max_attempts=3)


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataStore]:
    s: MetadataStore = (SqliteMetadataStore(tmp_path / "node.db") if request.param == "sqlite"
                        else MemoryMetadataStore())
    yield s
    s.close()


def received(store: MetadataStore, state: ManifestState = ManifestState.RECEIPTED) -> Signed[Manifest]:
    signed = make_manifest().sign(NODE_A)
    store.save_manifest(ManifestRow(signed.cid, signed.document.study_uid, "received", "RGT", 1, state, 0, 10**10,
                                    signed.encode()), [])
    return signed


def forwarder(store: MetadataStore, pacs: ScriptedPacs, audits: list[AuditEvent] | None = None,
              dest: PacsDestination = DEST) -> Forwarder:
    async def audit(event: AuditEvent) -> None:
        if audits is not None:
            audits.append(event)

    return Forwarder(InlineDb(store), None, [dest], "MESHTEST", audit, Path("/nonexistent"), clock=trio.current_time,
                     rng=random.Random(3), send=pacs.send, jitter=0.0)


def states(store: MetadataStore) -> dict[str, tuple[DeliveryState, int]]:
    return {r.key.split(" ")[1]: (r.state, r.attempts) for r in store.queue_rows(queue_name("main"))}


async def until(check: Callable[[], bool]) -> None:
    while not check():
        await trio.sleep(0.25)


async def test_nothing_is_queued_before_the_receipt(store: MetadataStore,
                                                    autojump_clock: trio.testing.MockClock) -> None:
    signed = received(store, ManifestState.COMPLETE)
    fwd = forwarder(store, ScriptedPacs())
    assert await fwd.release(signed.cid) == 0  # receipt not delivered: not queued yet
    assert states(store) == {}
    progress = fwd.progress(store, signed.cid)["main"]
    assert (progress.state, progress.waiting, progress.total) == ("waiting-for-receipt", 3, 3)


async def test_a_pacs_that_is_down_is_retried_with_the_shared_backoff(store: MetadataStore,
                                                                      autojump_clock: trio.testing.MockClock) -> None:
    signed = received(store)
    pacs = ScriptedPacs(["down"] * 8)
    fwd = forwarder(store, pacs)
    async with trio.open_nursery() as nursery:
        await nursery.start(fwd.run)
        start = trio.current_time()
        assert await fwd.release(signed.cid) == 3
        await until(lambda: len(pacs.associations) == 2)
        assert fwd.unreachable == {"main": "cannot connect: [Errno 111] Connection refused"}
        progress = fwd.progress(store, signed.cid)["main"]
        assert progress.state == "forwarding" and "Connection refused" in progress.last_error
        await until(lambda: len(pacs.stored) == 3)
        nursery.cancel_scope.cancel()
    # one association per attempt, 2 s doubling, capped at the destination's retry_max_seconds (60)
    gaps = [round(b - a, 3) for a, b in zip(pacs.associations, pacs.associations[1:])]
    assert gaps == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    assert pacs.associations[0] == start
    # eight unreachable batches, max_attempts 3: never given up on, each counted once (the one that stored it)
    assert states(store) == {uid: (DeliveryState.DELIVERED, 1) for uid in pacs.stored}
    assert fwd.unreachable == {}


async def test_a_permanent_refusal_fails_at_once_and_the_operator_retries_it(
        store: MetadataStore, autojump_clock: trio.testing.MockClock) -> None:
    signed = received(store)
    first, second, third = (i.sop_instance_uid for i in signed.document.instances)
    pacs = ScriptedPacs()
    pacs.refuse = {first: 0xA900, second: 0xA700}  # data set does not match the SOP class; out of resources
    failed: list[tuple[str, str, int]] = []
    audits: list[AuditEvent] = []
    fwd = forwarder(store, pacs, audits)

    async def hook(manifest_id: object, destination: str, error: str, instances: int) -> None:
        failed.append((destination, error, instances))

    fwd.failed_hook = hook
    async with trio.open_nursery() as nursery:
        await nursery.start(fwd.run)
        await fwd.release(signed.cid)
        await until(lambda: states(store).get(second, (None, 0))[0] is DeliveryState.FAILED)
        s = states(store)
        assert s[first] == (DeliveryState.FAILED, 1)  # at once
        assert s[second] == (DeliveryState.FAILED, 3)  # transient: retried up to max_attempts
        assert s[third] == (DeliveryState.DELIVERED, 1)
        assert len(pacs.associations) == 3
        assert failed[0] == ("main", "PACS refused it: 0xA900", 1) and len(failed) == 2
        progress = fwd.progress(store, signed.cid)["main"]
        assert (progress.state, progress.failed, progress.sent) == ("failed", 2, 1)
        pacs.refuse.clear()  # the PACS administrator fixed it
        assert await fwd.retry(signed.cid, None) == 2
        await until(lambda: len(pacs.stored) == 3)
        nursery.cancel_scope.cancel()
    assert set(states(store).values()) == {(DeliveryState.DELIVERED, 1)}
    assert fwd.progress(store, signed.cid)["main"].state == "forwarded"
    assert all(int(e.code) == 110104 and e.action == "forward" for e in audits)
    assert any("not stored" in e.detail for e in audits)


async def test_a_forward_survives_a_restart(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    store = SqliteMetadataStore(tmp_path / "node.db")
    signed = received(store)
    pacs = ScriptedPacs(["down"] * 3)
    first = forwarder(store, pacs)
    async with trio.open_nursery() as nursery:
        await nursery.start(first.run)
        await first.release(signed.cid)
        await until(lambda: len(pacs.associations) == 1)
        nursery.cancel_scope.cancel()  # the node stops while the PACS is down
    store.close()
    store = SqliteMetadataStore(tmp_path / "node.db")
    assert {s for s, _ in states(store).values()} == {DeliveryState.PENDING}
    again = forwarder(store, pacs)
    async with trio.open_nursery() as nursery:
        await nursery.start(again.run)
        await until(lambda: len(pacs.stored) == 3)
        nursery.cancel_scope.cancel()
    assert sorted(pacs.stored) == sorted(i.sop_instance_uid for i in signed.document.instances)
    assert {s for s, _ in states(store).values()} == {DeliveryState.DELIVERED}
    store.close()


async def test_recall_removes_what_was_not_sent(store: MetadataStore, autojump_clock: trio.testing.MockClock) -> None:
    signed = received(store)
    pacs = ScriptedPacs(["down"] * 100)
    fwd = forwarder(store, pacs)
    async with trio.open_nursery() as nursery:
        await nursery.start(fwd.run)
        await fwd.release(signed.cid)
        await until(lambda: len(pacs.associations) == 2)
        store.set_manifest_state(signed.cid, ManifestState.RECALLED)
        await fwd.cancel(signed.cid)
        await trio.sleep(3600)
        nursery.cancel_scope.cancel()
    assert states(store) == {} and len(pacs.associations) == 2
    assert await fwd.release(signed.cid) == 0  # a late receipt does not bring it back
    assert fwd.progress(store, signed.cid)["main"].state == "cancelled"


async def test_an_instance_the_pacs_holds_is_not_sent_again(store: MetadataStore,
                                                             autojump_clock: trio.testing.MockClock) -> None:
    first = received(store)
    instances = first.document.instances
    revision = make_manifest(instances=(*instances, make_instance(4)),
                             revision=2).sign(NODE_A)
    store.save_manifest(ManifestRow(revision.cid, revision.document.study_uid, "received", "RGT", 2,
                                    ManifestState.RECEIPTED, 0, 10**10, revision.encode()), [])
    pacs = ScriptedPacs()
    fwd = forwarder(store, pacs)
    async with trio.open_nursery() as nursery:
        await nursery.start(fwd.run)
        await fwd.release(first.cid)
        await until(lambda: len(pacs.stored) == 3)
        assert await fwd.release(revision.cid) == 1
        await until(lambda: len(pacs.stored) == 4)
        await trio.sleep(60)
        nursery.cancel_scope.cancel()
    assert len(pacs.stored) == 4
    progress = fwd.progress(store, revision.cid)["main"]
    assert (progress.total, progress.sent, progress.state) == (4, 4, "forwarded")


async def test_the_most_urgent_study_goes_first(store: MetadataStore, autojump_clock: trio.testing.MockClock) -> None:
    routine = make_manifest(priority=Priority.ROUTINE).sign(NODE_A)
    stat = make_manifest(priority=Priority.STAT, instances=(make_instance(7),), study_uid="1.2.7").sign(NODE_A)
    for signed in (routine, stat):
        store.save_manifest(ManifestRow(signed.cid, signed.document.study_uid, "received", "RGT", 1,
                                        ManifestState.RECEIPTED, 0, 10**10, signed.encode()), [])
    pacs = ScriptedPacs()
    fwd = forwarder(store, pacs, dest=PacsDestination("main", "PACS", "127.0.0.1", 11112))
    await fwd.release(routine.cid)  # queued first, before the driver runs
    await fwd.release(stat.cid)
    batches: list[list[str]] = []
    send = pacs.send

    async def one_at_a_time(dest: PacsDestination, keys: Sequence[ForwardKey]) -> BatchOutcome[ForwardKey]:
        batches.append([k.sop_instance_uid for k in keys])
        return await send(dest, keys)

    fwd._send = one_at_a_time
    for driver in fwd.drivers.values():
        driver._batch = replace(driver._batch, size=2)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(fwd.run)
        await until(lambda: len(pacs.stored) == 4)
        nursery.cancel_scope.cancel()
    assert batches[0][0] == stat.document.instances[0].sop_instance_uid and len(batches[0]) == 2


class FlakyMove(MemoryMetadataStore):
    """A store whose move to RECEIPTED fails once (a stop between the writes of the receipt's delivery)."""

    fail_receipted = True

    def set_manifest_state(self, manifest_id: CID, state: ManifestState) -> None:
        if state is ManifestState.RECEIPTED and self.fail_receipted:
            self.fail_receipted = False
            raise StorageError("the node stopped here")
        super().set_manifest_state(manifest_id, state)


async def test_the_receipts_delivery_and_the_forward_are_one_write(autojump_clock: trio.testing.MockClock) -> None:
    """The forward is queued by the write that records the receipt delivered and moves the manifest to
    RECEIPTED, all in one transaction: a stop in that write leaves none of it, the receipt is delivered again
    after the restart and the forward goes ahead (and a recalled manifest queues nothing)."""
    store = FlakyMove()
    signed = received(store, ManifestState.COMPLETE)
    recalled = make_manifest(study_uid="1.2.8", instances=(make_instance(8),)).sign(NODE_A)
    store.save_manifest(ManifestRow(recalled.cid, "1.2.8", "received", "RGT", 1, ManifestState.RECALLED, 0, 10**10,
                                    recalled.encode()), [])
    pacs = ScriptedPacs()
    fwd = forwarder(store, pacs)

    class Sender:
        async def deliver(self, key: DeliveryKey, payload: bytes | None) -> None:
            return None

    deliveries = Deliveries(InlineDb(store), trio.current_time, Sender(), on_receipted=fwd.release)
    deliveries.receipted_write = fwd.queue_write
    with pytest.raises(ExceptionGroup):
        async with trio.open_nursery() as nursery:
            await nursery.start(deliveries.run)
            await deliveries.receipt(signed.cid, "RGT", b"receipt")
            await trio.sleep(60)
    assert store.manifest(signed.cid).state is ManifestState.COMPLETE  # type: ignore[union-attr]
    assert states(store) == {}  # all or nothing: the failed write queued no forward either
    async with trio.open_nursery() as nursery:  # the restart: the forward goes ahead
        await nursery.start(fwd.run)
        await deliveries.receipt(recalled.cid, "RGT", b"receipt")
        d2 = Deliveries(InlineDb(store), trio.current_time, Sender(), on_receipted=fwd.release)
        d2.receipted_write = fwd.queue_write
        await nursery.start(d2.run)
        await until(lambda: len(pacs.stored) == 3)
        await trio.sleep(60)
        nursery.cancel_scope.cancel()
    assert sorted(pacs.stored) == sorted(i.sop_instance_uid for i in signed.document.instances)
    assert store.manifest(recalled.cid).state is ManifestState.RECALLED  # type: ignore[union-attr]
