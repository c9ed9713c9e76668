"""Announce a study once it is complete: when no instance has arrived for its route's quiet period.

DICOM has no end-of-study signal. Every (study, route) that instances
arrive on is an item of the node's shared retry queue (queue
`gateway-announce`, key "<study> <route>": meshnode.node.retry_driver over
protocol.outbox, states protocol.outbox.DeliveryState), due one quiet
period after its last instance: each new instance pushes it later
(`Outbox.postpone`). Once due, the attempt shares the study with the
route's organisations through the node's ordinary share path (Sender.share:
signed manifest, durable deliveries with retry); a local failure is retried
with the shared delivery backoff (ANNOUNCE_POLICY). An instance that arrives
after the announcement queues the item again (`Outbox.reopen`,
`RetryQueueStore.queue_reopen`), and the next announcement is a new manifest
revision (the recipients fetch only the blocks they do not have). When
nothing changed since the last announcement (a PACS sending the same study
again) no new revision is made: the attempt succeeds without a share.

What the announcer keeps beyond the queue item (instances counted, the last
manifest shared and its revision) is data in gateway_announcements
(meshnode.storage.gateway_store).

Restart: pending items are loaded and announced one quiet period after the
start (instances that arrived since the item was written are on disk; the
association that carried them is gone).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import trio

from meshnode.gateway.routes import Route, RouteTable, check_route_name
from meshnode.node.retry_driver import (
    Database,
    Failure,
    RetryDriver,
    RetryPolicy,
    StoreFn,
)
from meshnode.storage.conflicts import own_lineage
from meshnode.storage.gateway_store import Arrival, GatewayStore
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.records import InstanceRecord, hash_uid
from meshnode.storage.retry_queue import QueuedRow
from protocol.document import Signed, open_document
from protocol.errors import MeshError, StorageError
from protocol.manifest import Manifest, Priority, Purpose
from protocol.outbox import DeliveryRecord, DeliveryState

if TYPE_CHECKING:
    from trio_typing import TaskStatus

log = logging.getLogger(__name__)

ShareFn = Callable[[str, Sequence[str], Priority, Purpose], Awaitable[Signed[Manifest]]]
#: a route marked for de-identification: (study UID, route) -> the research copy's manifest, None when held
ResearchShareFn = Callable[[str, Route], Awaitable[Signed[Manifest] | None]]
AnnounceKey = tuple[str, str]  # (study UID, route name)

ANNOUNCE_QUEUE = "gateway-announce"
#: The node's delivery policy (backoff 2 s doubling to 15 min, jitter), a few shares at once.
ANNOUNCE_POLICY = RetryPolicy(concurrency=4)
#: The quiet period of a (study, route) whose route is no longer configured (its attempt drops it).
IDLE_CHECK_S = 60.0


class AnnounceKeys:
    """The queue's keys as text: "<study UID> <route>" (a UID has no space, a route name neither)."""

    def encode(self, key: AnnounceKey) -> str:
        return f"{key[0]} {key[1]}"

    def decode(self, text: str) -> AnnounceKey:
        study, sep, route = text.partition(" ")
        try:
            if not sep or not study or len(study) > 64 or " " in route:
                raise ValueError("not '<study UID> <route>'")
            return study, check_route_name(route)
        except (ValueError, MeshError) as exc:
            raise StorageError(f"unreadable announcement item {text[:80]!r}: {exc}") from None

    def ref(self, key: AnnounceKey) -> str:
        return key[0]


KEYS = AnnounceKeys()


def same_content(manifest: Manifest, instances: Sequence[InstanceRecord], route: Route) -> bool:
    """Would sharing the study on this route now announce exactly what `manifest` already did?"""
    latest = {r.sop_instance_uid: r.digest for r in instances}
    announced = {i.sop_instance_uid: i.digest for i in manifest.instances}
    return (latest == announced and tuple(sorted(route.to)) == manifest.recipients
            and route.priority is manifest.priority and route.purpose is manifest.purpose)


def _classify(exc: BaseException) -> Failure | None:
    """A refused or failed share (MeshError) is retried; anything else is a bug (logged with its traceback)."""
    if isinstance(exc, MeshError):
        return Failure(f"{exc.name}: {exc}", False)
    return None


class StudyAnnouncer:
    def __init__(self, db: Database, gateway: GatewayStore, routes: RouteTable, share: ShareFn,
                 clock: Callable[[], float] = time.time, *, policy: RetryPolicy = ANNOUNCE_POLICY,
                 rng: random.Random | None = None, share_research: ResearchShareFn | None = None) -> None:
        self.db = db
        self.gateway = gateway
        self.routes = routes
        self.share = share
        self.share_research = share_research
        self.clock = clock
        self.driver: RetryDriver[AnnounceKey] = RetryDriver(
            ANNOUNCE_QUEUE, KEYS, db, clock, self._attempt, _classify, policy=policy, on_ended=self._ended, rng=rng)
        self._last: dict[AnnounceKey, float] = {}  # the last arrival seen in this run, seconds
        #: arrivals seen in this run, and how many of them an attempt in progress started after (a count, not a
        #: time: an arrival's time is the intake's, in whole milliseconds)
        self._seen: dict[AnnounceKey, int] = {}
        self._covered: dict[AnnounceKey, int] = {}
        self.announced = 0

    def quiet_period(self, route: str) -> float:
        r = self.routes.get(route)
        return float(r.quiet_period_s) if r is not None else IDLE_CHECK_S

    # -- called by the intake ------------------------------------------------------------------
    def needs_note(self, study_uid: str, route: str) -> bool:
        """Must an arrival's queue item be written? Not when the (study, route) is pending already (the arrival
        only pushes its due time, in memory: a restart announces it one quiet period after the start anyway)."""
        record = self.driver.outbox.record((study_uid, route))
        return record is None or record.state is not DeliveryState.PENDING

    def note(self, store: MetadataStore, arrivals: Sequence[Arrival], now_ms: int,
             reopen: Sequence[Arrival] | None = None) -> None:
        """On the database thread, in the intake's commit: count the arrivals and (re)open the items of
        `reopen` (those `needs_note` asked for; all by default)."""
        self.gateway.note_arrivals(arrivals, now_ms)
        store.queue_reopen([self._row((a.study_uid, a.route), now_ms, now_ms + int(1000 * self.quiet_period(a.route)))
                            for a in (arrivals if reopen is None else reopen)])

    def arrived(self, study_uid: str, route: str, at_s: float) -> None:
        """After the commit (trio thread): the item is due one quiet period from this arrival."""
        key = (study_uid, route)
        self._last[key] = max(self._last.get(key, 0.0), at_s)
        self._seen[key] = self._seen.get(key, 0) + 1
        if self.driver.outbox.reopen(key, self.clock(), not_before=at_s + self.quiet_period(route)):
            self.driver.wake()  # newly pending: the driver's next due time may be sooner now
        # else it was pending (pushed later, in memory: the driver writes it with its next flush, and a restart
        # announces one quiet period after the start anyway) or being attempted (the attempt's end decides):
        # waking the driver would only cost a database write per C-STORE group

    # -- what the operator sees -------------------------------------------------------------------
    def pending(self) -> dict[AnnounceKey, float]:
        """Pending (study, route) -> when it will be announced (seconds since the epoch)."""
        return {r.key: r.next_attempt_at for r in self.driver.records()
                if r.state in (DeliveryState.PENDING, DeliveryState.ATTEMPTING)}

    def status(self, store: MetadataStore) -> list[dict[str, object]]:
        """The announcements not done (pending, being shared, given up), for `meshnode gateway` (database
        thread): their queue items with the announcer's data."""
        pending = self.pending()
        data = {(a.study_uid, a.route): a for a in self.gateway.announcements()}
        items: list[dict[str, object]] = []
        for q in store.queue_rows(ANNOUNCE_QUEUE, states=(DeliveryState.PENDING, DeliveryState.ATTEMPTING,
                                                          DeliveryState.FAILED)):
            try:
                key = KEYS.decode(q.key)
            except MeshError:
                continue  # unreadable: skipped by the driver too (it logged it)
            a = data.get(key)
            summary = store.study(key[0])
            # every instance the study holds (what the announcement will carry), and how many of them arrived
            # since its last revision (`new_instances`)
            items.append({"study_uid": key[0], "route": key[1], "state": q.state.value,
                          "instances": summary.instance_count if summary is not None else 0,
                          "new_instances": a.instances if a is not None else 0,
                          "announce_at_ms": int(1000 * pending[key]) if key in pending else q.next_attempt_ms,
                          "revision": a.revision if a is not None else 0, "attempts": q.attempts,
                          "last_error": q.last_error})
        return items

    # -- the service ---------------------------------------------------------------------------
    async def load(self) -> int:
        """Pick up the pending announcements a previous run left: announced a quiet period from now."""
        await self.driver.load()
        now = self.clock()
        resumed = [r.key for r in self.driver.records() if r.state is DeliveryState.PENDING]
        for key in resumed:
            self.driver.outbox.postpone(key, now, now + self.quiet_period(key[1]))
        if resumed:
            log.info("%d pending study announcement(s) resumed", len(resumed))
        return len(resumed)

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.load()
        await self.driver.run(task_status=task_status)

    async def _attempt(self, key: AnnounceKey, _payload: bytes | None) -> None:
        study_uid, route_name = key
        self._covered[key] = self._seen.get(key, 0)
        covered = self.clock()
        route = self.routes.get(route_name)
        if route is None:
            log.warning("study %s is pending on route %r, which is no longer configured; dropped",
                        hash_uid(study_uid), route_name)
            await self.db.run(lambda _: self.gateway.forget_announcement(study_uid, route_name))
            return
        row = await self.db.run(lambda _: self.gateway.announcement(study_uid, route_name))

        def load(store: MetadataStore) -> tuple[list[InstanceRecord], bytes | None]:
            previous = store.manifest(row.manifest_id) if row is not None and row.manifest_id else None
            return own_lineage(store.instances(study_uid)), previous.raw if previous else None  # as Sender.share

        instances, previous_raw = await self.db.run(load)
        if not instances:
            log.warning("study %s pending on route %s has no instances any more; dropped",
                        hash_uid(study_uid), route_name)
            await self.db.run(lambda _: self.gateway.forget_announcement(study_uid, route_name))
            return
        previous = open_document(previous_raw, Manifest) if previous_raw is not None else None
        if previous is not None and same_content(previous.document, instances, route):
            manifest_id, revision = previous.cid, previous.document.revision
            log.info("study %s on route %s: nothing new since revision %d; not announced again",
                     hash_uid(study_uid), route_name, revision)
        else:
            if route.deid is not None:  # a de-identified copy, never the original (meshnode.node.research_share)
                if self.share_research is None:
                    raise StorageError(f"route {route_name} de-identifies, and research shares are unavailable")
                research = await self.share_research(study_uid, route)  # raises: retried
                if research is None:
                    log.info("study %s on route %s: held for a human decision (pixel risk)", hash_uid(study_uid),
                             route_name)
                    return
                signed = research
            else:
                signed = await self.share(study_uid, route.to, route.priority, route.purpose)  # raises: retried
            manifest_id, revision = signed.cid, signed.document.revision
            self.announced += 1
            log.info("study %s announced on route %s to %s (%s), revision %d, %d instance(s)", hash_uid(study_uid),
                     route_name, ",".join(route.to), route.priority.value, revision, len(signed.document.instances))
        now_ms, covered_ms = int(self.clock() * 1000), int(covered * 1000)
        await self.db.run(lambda _: self.gateway.mark_announced(study_uid, route_name, manifest_id, revision,
                                                                covered_ms, now_ms))

    def _ended(self, record: DeliveryRecord[AnnounceKey], _payload: bytes | None
               ) -> tuple[StoreFn | None, Callable[[], Awaitable[None]] | None]:
        key = record.key
        covered = self._covered.pop(key, None)
        if record.state is DeliveryState.FAILED:
            log.warning("study %s on route %s: announcing given up after %d attempts (%s); a new instance "
                        "queues it again", hash_uid(key[0]), key[1], record.attempts, record.last_error)

        async def after() -> None:
            # an instance that arrived while this was being shared (or its outcome written): queue it again,
            # durably, for the next revision
            last = self._last.get(key)
            if (last is None or covered is None or self._seen.get(key, 0) <= covered
                    or record.state is not DeliveryState.DELIVERED):
                self._last.pop(key, None)
                self._seen.pop(key, None)
                return
            now = self.clock()
            due = last + self.quiet_period(key[1])
            row = self._row(key, int(now * 1000), int(due * 1000))
            await self.db.run(lambda s: s.queue_reopen([row]))
            self.driver.outbox.reopen(key, now, not_before=due)
            self.driver.wake()

        return None, after

    @staticmethod
    def _row(key: AnnounceKey, now_ms: int, due_ms: int) -> QueuedRow:
        return QueuedRow(ANNOUNCE_QUEUE, KEYS.encode(key), KEYS.ref(key), DeliveryState.PENDING, 0, due_ms, now_ms, "")
