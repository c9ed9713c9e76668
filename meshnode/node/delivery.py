"""Deliveries with retry: announcing manifests to recipient orgs, receipts back, recalls out.

Every delivery is a row in the database (manifest, org, state, attempts,
next attempt), so it survives a restart; a failed attempt backs off
exponentially (2 s doubling up to 15 min). A refusal that cannot change by
retrying (wrong org, bad signature, rollback) marks the delivery failed.

Deliveries to different orgs run concurrently (at most CONCURRENCY at once):
a study shared with three orgs reaches all three at once rather than one
after another, and an org whose node is slow or unreachable (a dial can take
its full timeout) holds up nobody else.
"""

from __future__ import annotations

import logging

import trio

from meshnode.node.context import NodeContext
from meshnode.node.events import StudyEvent, StudyEventKind
from meshnode.node.sender import backoff_s
from meshnode.node.sessions import Sessions
from meshnode.node.wire import Wire
from meshnode.storage.records import DeliveryRow
from protocol.cid import CID
from protocol.document import open_document
from protocol.errors import (
    CertificateError,
    DocumentError,
    MeshError,
    SignatureError,
    UnavailableError,
)
from protocol.manifest import Manifest

log = logging.getLogger(__name__)

TICK = 1.0
CONCURRENCY = 32
PERMANENT = (DocumentError, SignatureError, CertificateError)


class Deliveries:
    def __init__(self, ctx: NodeContext, wire: Wire, sessions: Sessions) -> None:
        self.ctx = ctx
        self.wire = wire
        self.sessions = sessions
        self._limit = trio.CapacityLimiter(CONCURRENCY)
        self._in_flight: set[tuple[CID, str]] = set()

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                changed = self.ctx.changed
                await self.attempt_due(nursery)
                with trio.move_on_after(TICK):
                    await changed.wait()

    async def attempt_due(self, nursery: trio.Nursery) -> None:
        """Start an attempt for every due delivery that has none in progress."""
        now_ms = int(self.ctx.clock() * 1000)
        rows = await self.ctx.db.run(lambda s: s.deliveries())
        for row in rows:
            key = (row.manifest_id, row.org)
            if row.state in ("pending", "recall-pending") and row.next_attempt_ms <= now_ms \
                    and key not in self._in_flight:
                self._in_flight.add(key)
                nursery.start_soon(self._attempt_one, key, row)

    async def _attempt_one(self, key: tuple[CID, str], row: DeliveryRow) -> None:
        try:
            async with self._limit:
                await self._attempt(row)
        finally:
            self._in_flight.discard(key)

    async def _attempt(self, row: DeliveryRow) -> None:
        manifest = await self.ctx.db.run(lambda s: s.manifest(row.manifest_id))
        if manifest is None:
            return
        recalling = row.state == "recall-pending"
        payload = row.document if recalling else manifest.raw  # a recall-pending row holds the signed recall
        try:
            peers = await self.sessions.org_peers(row.org)
            if not peers:
                raise UnavailableError(f"no reachable node of {row.org}")
            accepted, errors = 0, []
            for peer in peers:
                try:
                    await self.sessions.ensure(peer)
                    if recalling and payload is not None:
                        await self.wire.deliver_recall(peer.peer_id, payload)
                    else:
                        await self.wire.announce(peer.peer_id, manifest.raw)
                    accepted += 1
                except PERMANENT:
                    raise
                except MeshError as exc:
                    errors.append(f"{peer.peer_id}: {exc}")
            if not accepted:
                raise UnavailableError("; ".join(errors)[:500])
            state = "recalled" if recalling else "announced"
            error = ""
            attempts = row.attempts + 1
            next_ms = row.next_attempt_ms
            log.info("%s %s to %s (%d node(s))", "recalled" if recalling else "announced", row.manifest_id,
                     row.org, accepted)
        except PERMANENT as exc:
            state, error, attempts, next_ms = "failed", f"{exc.name}: {exc}"[:500], row.attempts + 1, 0
            log.warning("delivery of %s to %s failed for good: %s", row.manifest_id, row.org, exc)
            if not recalling:
                await self.ctx.events.publish(StudyEvent(
                    StudyEventKind.FAILED, str(row.manifest_id), manifest.study_uid, row.org,
                    open_document(manifest.raw, Manifest).document.priority.value, "sent",
                    detail=f"delivery refused: {exc.name}"))
        except MeshError as exc:
            attempts = row.attempts + 1
            state, error = row.state, f"{exc.name}: {exc}"[:500]
            next_ms = int((self.ctx.clock() + backoff_s(attempts)) * 1000)
            log.info("delivery of %s to %s failed (attempt %d), retrying in %.0f s: %s", row.manifest_id,
                     row.org, attempts, backoff_s(attempts), exc)
        now_ms = int(self.ctx.clock() * 1000)
        updated = DeliveryRow(row.manifest_id, row.org, state, attempts, next_ms, error, row.document, now_ms)
        await self.ctx.db.run(lambda s: s.save_delivery(updated))
