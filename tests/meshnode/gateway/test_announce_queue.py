"""The announcer on the shared retry queue (queue `gateway-announce`, key (study, route)), in one trio process on
trio's MockClock (moved by hand: the intake's file writes run in threads, which an autojumping clock would
jump over): the quiet period is the item's due time, a new instance postpones it, an instance after the
announcement reopens it (a new revision), a failing share is retried with the shared delivery backoff, an
unchanged study makes no new revision, and a pending announcement survives a restart."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
import trio
import trio.testing

from meshnode.gateway.announcer import ANNOUNCE_POLICY, ANNOUNCE_QUEUE, StudyAnnouncer
from meshnode.gateway.intake import StudyIntake
from meshnode.gateway.routes import Route, RouteTable
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.node_storage import NodeStorage
from meshnode.storage.records import InstanceRecord, ManifestRow
from meshnode.storage.retry_queue import QueuedRow
from meshnode.storage.sqlite_gateway import SqliteGatewayStore
from meshnode.study.manifest_builder import build_manifest
from protocol.delivery_policy import jitter_fraction
from protocol.document import Signed
from protocol.errors import UnavailableError
from protocol.lifecycle import ManifestState
from protocol.manifest import Manifest, Priority, Purpose
from protocol.outbox import DeliveryState
from tests.meshnode.gateway.harness import KEY

QUIET = 30.0
ROUTE = Route("stroke", ("RJ1", "RAJ"), Priority.URGENT, called_ae="MESH_STROKE", quiet_period_s=int(QUIET))
EPOCH = 1_767_225_600.0
SEED = 7
T = TypeVar("T")


def now() -> float:
    return EPOCH + trio.current_time()


class InlineDb:
    """DatabaseThread's interface run inline (no thread: the MockClock stands still during a write)."""

    def __init__(self, store: MetadataStore) -> None:
        self.store = store

    async def run(self, fn: Callable[[MetadataStore], T]) -> T:
        await trio.lowlevel.checkpoint()
        return fn(self.store)


@dataclass
class Bench:
    home: Path
    storage: NodeStorage
    db: InlineDb
    state: SqliteGatewayStore
    intake: StudyIntake
    announcer: StudyAnnouncer
    clock: trio.testing.MockClock
    nursery: trio.Nursery
    manifests: list[Signed[Manifest]]
    calls: list[float]
    failures: int = 0
    gate: trio.Event | None = None  # when set, a share waits for it (an instance can arrive meanwhile)

    async def share(self, study: str, to: Sequence[str], priority: Priority, purpose: Purpose) -> Signed[Manifest]:
        self.calls.append(now())
        if self.gate is not None:
            await self.gate.wait()
        if self.failures:
            self.failures -= 1
            raise UnavailableError("no node of the recipient org is reachable (bench)")

        def load(store: MetadataStore) -> tuple[list[InstanceRecord], int]:
            sent = [m.revision for m in store.manifests("sent") if m.study_uid == study]
            return store.instances(study), max(sent, default=0)

        records, last = await self.db.run(load)
        at = int(now())
        manifest = build_manifest(records, sender_org="RGT", sender_peer=KEY.peer_id, recipients=to,
                                  priority=priority, purpose=purpose, created_at=at, expires_at=at + 86400,
                                  revision=last + 1)
        signed = manifest.sign(KEY)
        row = ManifestRow(signed.cid, study, "sent", "RGT", manifest.revision, ManifestState.SENT, at,
                          manifest.expires_at, signed.encode(), manifest.recipients)
        await self.db.run(lambda s: s.save_manifest(row, []))
        self.manifests.append(signed)
        return signed

    def new_announcer(self) -> StudyAnnouncer:
        return StudyAnnouncer(self.db, self.state, RouteTable([ROUTE]), self.share,  # type: ignore[arg-type]
                              clock=now, rng=random.Random(SEED))

    async def store(self, files: Sequence[Path]) -> str:
        study = ""
        for path in files:
            study = (await self.intake.store(path.read_bytes(), ROUTE, source="dimse:CT@127.0.0.1")).study_uid
        await trio.testing.wait_all_tasks_blocked()
        return study

    async def advance(self, seconds: float) -> None:
        """Move the clock by `seconds` in small steps, letting everything due run at each."""
        step = 0.25
        while seconds > 1e-9:
            self.clock.jump(min(step, seconds))
            seconds -= step
            await trio.testing.wait_all_tasks_blocked()

    async def rows(self) -> list[QueuedRow]:
        return await self.db.run(lambda s: s.queue_rows(ANNOUNCE_QUEUE))


@pytest.fixture
async def bench(tmp_path: Path, mock_clock: trio.testing.MockClock) -> AsyncIterator[Bench]:
    storage = NodeStorage.open(tmp_path)
    state = SqliteGatewayStore(tmp_path / "node.db")
    db = InlineDb(storage.metadata)
    async with trio.open_nursery() as nursery:
        b = Bench(tmp_path, storage, db, state, None, None, mock_clock, nursery, [], [])  # type: ignore[arg-type]
        b.announcer = b.new_announcer()
        b.intake = StudyIntake(storage, db, state, b.announcer, clock=now)  # type: ignore[arg-type]
        await nursery.start(b.intake.run)
        yield b
        nursery.cancel_scope.cancel()
    state.close()
    storage.close()


async def test_announced_one_quiet_period_after_the_last_instance_which_a_new_one_postpones(
        bench: Bench, ct_study: list[Path], mock_clock: trio.testing.MockClock) -> None:
    await bench.nursery.start(bench.announcer.run)
    start = now()
    study = await bench.store(ct_study[:2])
    (row,) = await bench.rows()
    assert (row.key, row.ref, row.state) == (f"{study} stroke", study, DeliveryState.PENDING)
    await bench.advance(0.6 * QUIET)
    await bench.store(ct_study[2:3])  # a new instance: the quiet period starts again
    await bench.advance(0.6 * QUIET)
    assert not bench.calls
    assert bench.announcer.pending()[(study, "stroke")] == pytest.approx(start + 1.6 * QUIET, abs=0.01)
    await bench.advance(0.5 * QUIET)
    assert bench.calls and bench.calls[0] == pytest.approx(start + 1.6 * QUIET, abs=0.3)
    (signed,) = bench.manifests
    assert (signed.document.revision, len(signed.document.instances)) == (1, 3)
    (row,) = await bench.rows()
    assert row.state is DeliveryState.DELIVERED
    announced = bench.state.announcement(study, "stroke")
    assert announced is not None and announced.manifest_id == signed.cid and announced.revision == 1


async def test_an_instance_after_the_announcement_reopens_it_and_unchanged_content_makes_no_revision(
        bench: Bench, ct_study: list[Path], mock_clock: trio.testing.MockClock) -> None:
    await bench.nursery.start(bench.announcer.run)
    study = await bench.store(ct_study[:2])
    await bench.advance(QUIET + 1)
    assert len(bench.manifests) == 1
    await bench.store(ct_study[2:4])  # late instances: the delivered item is queued again
    (row,) = await bench.rows()
    assert (row.state, row.attempts) == (DeliveryState.PENDING, 0)
    await bench.advance(QUIET + 1)
    assert [(m.document.revision, len(m.document.instances)) for m in bench.manifests] == [(1, 2), (2, 4)]
    await bench.store(ct_study[:4])  # the PACS sends the same study again: reopened, but nothing new
    assert (await bench.rows())[0].state is DeliveryState.PENDING
    await bench.advance(QUIET + 1)
    assert len(bench.manifests) == 2 and len(bench.calls) == 2
    (row,) = await bench.rows()
    assert row.state is DeliveryState.DELIVERED
    settled = bench.state.announcement(study, "stroke")
    assert settled is not None and settled.revision == 2 and settled.manifest_id == bench.manifests[1].cid
    assert bench.announcer.pending() == {}


async def test_a_failing_share_is_retried_with_the_shared_backoff(
        bench: Bench, ct_study: list[Path], mock_clock: trio.testing.MockClock) -> None:
    bench.failures = 2
    await bench.nursery.start(bench.announcer.run)
    start = now()
    study = await bench.store(ct_study[:2])
    await bench.advance(QUIET + 0.5)
    assert len(bench.calls) == 1 and not bench.manifests
    (row,) = await bench.rows()
    assert (row.state, row.attempts) == (DeliveryState.PENDING, 1) and "unavailable" in row.last_error
    (shown,) = await bench.db.run(bench.announcer.status)  # what `meshnode gateway` lists
    assert (shown["study_uid"], shown["route"], shown["state"], shown["attempts"], shown["instances"]) == (
        study, "stroke", "pending", 1, 2)
    assert "unavailable" in str(shown["last_error"])
    assert shown["announce_at_ms"] == int(1000 * bench.announcer.pending()[(study, "stroke")])
    draws = random.Random(SEED)
    first = ANNOUNCE_POLICY.backoff.delay(1, jitter_fraction(ANNOUNCE_POLICY, draws.random()))
    second = ANNOUNCE_POLICY.backoff.delay(2, jitter_fraction(ANNOUNCE_POLICY, draws.random()))
    await bench.advance(first + second + 1)
    assert len(bench.calls) == 3 and len(bench.manifests) == 1
    assert bench.calls[1] - bench.calls[0] == pytest.approx(first, abs=0.3)
    assert bench.calls[2] - bench.calls[1] == pytest.approx(second, abs=0.3)
    assert bench.calls[0] == pytest.approx(start + QUIET, abs=0.3)
    (row,) = await bench.rows()
    assert (row.state, row.last_error) == (DeliveryState.DELIVERED, "")
    assert bench.state.announcement(study, "stroke").revision == 1  # type: ignore[union-attr]
    assert await bench.db.run(bench.announcer.status) == []


async def test_a_pending_announcement_survives_a_restart(
        bench: Bench, ct_study: list[Path], mock_clock: trio.testing.MockClock) -> None:
    study = await bench.store(ct_study[:4])  # the announcer is not running: "the node stopped"
    await bench.advance(5 * QUIET)
    assert not bench.calls
    assert [r.state for r in await bench.rows()] == [DeliveryState.PENDING]
    restarted = bench.new_announcer()
    start = now()
    await bench.nursery.start(restarted.run)
    await bench.advance(QUIET - 1)
    assert not bench.calls  # one quiet period after the start: the association that carried it is gone
    await bench.advance(1.5)
    assert bench.calls and bench.calls[0] == pytest.approx(start + QUIET, abs=0.3)
    (signed,) = bench.manifests
    assert signed.document.study_uid == study and len(signed.document.instances) == 4
    assert [r.state for r in await bench.rows()] == [DeliveryState.DELIVERED]


async def test_an_instance_that_arrives_during_the_share_reopens_it(
        bench: Bench, ct_study: list[Path], mock_clock: trio.testing.MockClock) -> None:
    await bench.nursery.start(bench.announcer.run)
    await bench.store(ct_study[:2])
    bench.gate = trio.Event()
    await bench.advance(QUIET)  # exactly to the due time: the attempt starts, the clock stays there
    assert len(bench.calls) == 1 and not bench.manifests  # the share is under way
    assert bench.calls[0] == now()
    await bench.store(ct_study[2:3])  # at the attempt's start time (in whole ms): the order still counts
    bench.gate.set()
    bench.gate = None
    await trio.testing.wait_all_tasks_blocked()
    assert [(m.document.revision, len(m.document.instances)) for m in bench.manifests] == [(1, 3)]
    (row,) = await bench.rows()
    assert (row.state, row.attempts) == (DeliveryState.PENDING, 0)  # queued again, durably
    await bench.advance(QUIET + 1)
    # attempted again: the share had read the late instance already, so nothing new (no share, no revision)
    assert len(bench.calls) == 1 and len(bench.manifests) == 1
    assert [r.state for r in await bench.rows()] == [DeliveryState.DELIVERED]
