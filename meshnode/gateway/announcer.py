"""Announce a study once it is complete: when no instance has arrived for its route's quiet period.

DICOM has no end-of-study signal. Every (study, route) that instances
arrive on becomes a pending announcement (durable: gateway_announcements);
once `quiet_period_s` passed since its last instance, the study is shared
with the route's organisations through the node's ordinary share path
(Sender.share: signed manifest, durable deliveries with retry). An instance
that arrives later re-opens it, and the next announcement is a new manifest
revision (the recipients fetch only the blocks they do not have). When
nothing changed since the last announcement (a PACS sending the same study
again) no new revision is made.

Restart: pending rows are loaded and announced one quiet period after the
start (instances that arrived since the row was written are on disk; the
association that carried them is gone).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import trio

from meshnode.gateway.routes import Route, RouteTable
from meshnode.storage.dbthread import DatabaseThread
from meshnode.storage.gateway_store import Announcement, AnnouncementState, Arrival, GatewayStore
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.records import InstanceRecord, hash_uid
from protocol.backoff import Backoff
from protocol.document import Signed, open_document
from protocol.errors import MeshError
from protocol.manifest import Manifest, Priority, Purpose

if TYPE_CHECKING:
    from trio_typing import TaskStatus

log = logging.getLogger(__name__)

ShareFn = Callable[[str, Sequence[str], Priority, Purpose], Awaitable[Signed[Manifest]]]
#: Between attempts to announce a study: 2 s doubling to 5 min.
RETRY_BACKOFF = Backoff(base=2.0, factor=2.0, cap=300.0)
IDLE_CHECK_S = 60.0


def same_content(manifest: Manifest, instances: Sequence[InstanceRecord], route: Route) -> bool:
    """Would sharing the study on this route now announce exactly what `manifest` already did?"""
    latest = {r.sop_instance_uid: r.digest for r in instances}
    announced = {i.sop_instance_uid: i.digest for i in manifest.instances}
    return (latest == announced and tuple(sorted(route.to)) == manifest.recipients
            and route.priority is manifest.priority and route.purpose is manifest.purpose)


class StudyAnnouncer:
    def __init__(self, db: DatabaseThread, gateway: GatewayStore, routes: RouteTable, share: ShareFn,
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.gateway = gateway
        self.routes = routes
        self.share = share
        self.clock = clock
        self._last: dict[tuple[str, str], float] = {}  # pending (study, route) -> last arrival, seconds
        self._retry_at: dict[tuple[str, str], float] = {}
        self._wake = trio.Event()
        self.announced = 0

    # -- called by the intake (on the trio thread) --------------------------------------------
    def needs_note(self, study_uid: str, route: str) -> bool:
        """Must an arrival be written down? Not when the (study, route) is pending already."""
        return (study_uid, route) not in self._last

    def arrived(self, study_uid: str, route: str, at_s: float) -> None:
        key = (study_uid, route)
        self._last[key] = max(self._last.get(key, 0.0), at_s)
        self._wake.set()

    def pending(self) -> dict[tuple[str, str], float]:
        """Pending (study, route) -> when it will be announced (seconds since the epoch)."""
        return {key: max(self._deadline(key, last), self._retry_at.get(key, 0.0))
                for key, last in self._last.items()}

    def _deadline(self, key: tuple[str, str], last: float) -> float:
        route = self.routes.get(key[1])
        return last + (route.quiet_period_s if route is not None else IDLE_CHECK_S)

    # -- the service ---------------------------------------------------------------------------
    async def load(self) -> int:
        """Pick up the pending announcements a previous run left (announced a quiet period from now)."""
        rows: list[Announcement] = await self.db.run(
            lambda _: self.gateway.announcements(AnnouncementState.PENDING))
        now = self.clock()
        for row in rows:
            self._last[(row.study_uid, row.route)] = max(row.last_instance_ms / 1000, now)
        if rows:
            log.info("%d pending study announcement(s) resumed", len(rows))
        return len(rows)

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.load()
        task_status.started()
        while True:
            wake = self._wake = trio.Event()
            now = self.clock()
            due = sorted((deadline, key) for key, deadline in self.pending().items() if deadline <= now)
            for _, key in due:
                await self._announce(key)
            upcoming = [d for d in self.pending().values() if d > self.clock()]
            delay = min(upcoming, default=now + IDLE_CHECK_S) - self.clock()
            if not due:
                with trio.move_on_after(max(0.01, delay)):
                    await wake.wait()

    async def _announce(self, key: tuple[str, str]) -> None:
        study_uid, route_name = key
        covered = self._last[key]
        route = self.routes.get(route_name)
        if route is None:
            log.warning("study %s is pending on route %r, which is no longer configured; dropped",
                        hash_uid(study_uid), route_name)
            await self.db.run(lambda _: self.gateway.forget_announcement(study_uid, route_name))
            self._forget(key)
            return
        row = await self.db.run(lambda _: self.gateway.announcement(study_uid, route_name))

        def load(store: MetadataStore) -> tuple[list[InstanceRecord], bytes | None]:
            previous = store.manifest(row.manifest_id) if row is not None and row.manifest_id else None
            return store.instances(study_uid), previous.raw if previous else None

        instances, previous_raw = await self.db.run(load)
        now_ms = int(self.clock() * 1000)
        if not instances:
            log.warning("study %s pending on route %s has no instances any more; dropped",
                        hash_uid(study_uid), route_name)
            await self.db.run(lambda _: self.gateway.forget_announcement(study_uid, route_name))
            self._forget(key)
            return
        previous = open_document(previous_raw, Manifest) if previous_raw is not None else None
        if previous is not None and row is not None and same_content(previous.document, instances, route):
            manifest_id, revision = previous.cid, previous.document.revision
            log.info("study %s on route %s: nothing new since revision %d; not announced again",
                     hash_uid(study_uid), route_name, revision)
        else:
            try:
                signed = await self.share(study_uid, route.to, route.priority, route.purpose)
            except MeshError as exc:
                attempts = (row.attempts if row is not None else 0) + 1
                retry = self.clock() + RETRY_BACKOFF.delay(attempts)
                self._retry_at[key] = retry
                log.warning("cannot announce study %s on route %s (attempt %d): %s", hash_uid(study_uid),
                            route_name, attempts, exc)
                reason = f"{exc.name}: {exc}"  # bound now: the lambda runs on the database thread
                await self.db.run(lambda _: self.gateway.announce_failed(
                    study_uid, route_name, reason, int(retry * 1000)))
                return
            manifest_id, revision = signed.cid, signed.document.revision
            self.announced += 1
            log.info("study %s announced on route %s to %s (%s), revision %d, %d instance(s)", hash_uid(study_uid),
                     route_name, ",".join(route.to), route.priority.value, revision, len(signed.document.instances))
        covered_ms = int(covered * 1000)
        await self.db.run(lambda _: self.gateway.mark_announced(study_uid, route_name, manifest_id, revision,
                                                                covered_ms, now_ms))
        if self._last.get(key, 0.0) > covered:
            # an instance arrived while this was being shared: re-open, durably, for the next revision
            await self.db.run(lambda _: self.gateway.note_arrivals([Arrival(study_uid, route_name, 0)],
                                                                   int(self._last[key] * 1000)))
            self._retry_at.pop(key, None)
        else:
            self._forget(key)

    def _forget(self, key: tuple[str, str]) -> None:
        self._last.pop(key, None)
        self._retry_at.pop(key, None)
