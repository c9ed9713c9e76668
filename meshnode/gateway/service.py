"""Everything of the gateway a running node holds, as one service in its nursery.

    gateway = Gateway(ctx, sender)                 # in Node._serve
    await nursery.start(gateway.run)
    await gateway.received(signed)                 # a received study is verified and recorded
    await gateway.receipted(manifest_id)           # ... and its receipt was sent: forward it
    await gateway.recalled(manifest_id)

The intake and the announcer always run (DICOMweb STOW-RS uses the intake
too); the DIMSE server when [dimse] enabled = true; the forwarder when at
least one [[pacs]] is configured.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from common.sqlite_db import SqliteConnection
from meshnode.gateway.announcer import StudyAnnouncer
from meshnode.gateway.conflict_desk import ConflictDesk
from meshnode.gateway.dimse.server import DimseServer
from meshnode.gateway.forwarder import Forwarder
from meshnode.gateway.intake import StudyIntake
from meshnode.gateway.pacs_queue import received_manifest
from meshnode.gateway.reconciler import Reconciler
from meshnode.gateway.routes import Route, RouteError
from meshnode.node.context import NodeContext, keep_running
from meshnode.node.events import StudyEvent, StudyEventKind
from meshnode.node.research_share import PixelRiskRefusedError
from meshnode.storage.audit import AuditEvent
from meshnode.storage.gateway_store import GatewayStore
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.patients import ReconState
from meshnode.storage.records import hash_uid
from meshnode.storage.research_store import ResearchState
from meshnode.storage.sqlite_gateway import SqliteGatewayStore
from protocol.cid import CID
from protocol.conflict import ConflictState
from protocol.document import Signed, open_document
from protocol.manifest import Manifest

if TYPE_CHECKING:
    from trio_typing import TaskStatus

    from meshnode.node.sender import Sender

log = logging.getLogger(__name__)


class Gateway:
    def __init__(self, ctx: NodeContext, sender: Sender, state: GatewayStore | None = None) -> None:
        self.ctx = ctx
        #: instances given up on, per PACS destination, since start (for /metrics)
        self.forward_failures: dict[str, int] = {}
        config = ctx.config.gateway
        self.config = config
        if state is None:
            metadata = ctx.storage.metadata
            # on the metadata store's own connection: the intake's arrivals commit in its instances' transaction
            state = SqliteGatewayStore(ctx.home.path / "node.db",
                                       share=metadata if isinstance(metadata, SqliteConnection) else None)
        self.state: GatewayStore = state
        self.sender = sender
        self.announcer = StudyAnnouncer(ctx.db, self.state, config.routes, sender.share, clock=ctx.clock,
                                        share_research=self._share_research)
        self.intake = StudyIntake(ctx.storage, ctx.db, self.state, self.announcer,
                                  max_instance_bytes=config.dimse.max_instance_bytes, clock=ctx.clock,
                                  conflict_default=config.conflict_default)
        self.dimse = DimseServer(config, self.intake, self.audit, ctx.home.path) if config.dimse.enabled else None
        self.forwarder = (Forwarder(ctx.db, ctx.storage.blocks, config.pacs, config.dimse.ae_title,
                                    self.audit, ctx.home.path / "tmp" / "forward", clock=ctx.clock)
                          if config.pacs else None)
        if self.forwarder is not None:
            self.forwarder.failed_hook = self._forward_failed  # webhooks and metrics (meshnode.node.events)
        #: patient reconciliation of received studies ([reconciliation]; meshnode.gateway.reconciler)
        self.reconciler = Reconciler(ctx.db, ctx.storage.blocks, config.reconciliation, self.audit,
                                     f"{ctx.org} dicom-mesh {config.dimse.ae_title}", ctx.clock)
        if self.forwarder is not None and config.reconciliation.enabled:
            self.forwarder.reconciler = self.reconciler
            self.reconciler.on_matched = self.forwarder.release

        #: the conflict queue (same SOP Instance UID, other bytes): decisions, and policy keep-both applied
        self.conflicts = ConflictDesk(ctx.db, ctx.storage, self.state, self.announcer, config.routes,
                                      self.forwarder, ctx.clock, self.reconciler)
        self.intake.conflicts_held = self.conflicts.wake

    async def _share_research(self, study_uid: str, route: Route) -> Signed[Manifest] | None:
        """A route marked for de-identification: its de-identified copy's manifest; None when the share is held
        for a human decision or refused by the route's pixel-risk policy (recorded and audited: not retried)."""
        if route.deid is None:
            raise RouteError(f"route {route.name} does not de-identify")
        try:
            outcome = await self.sender.share_research(study_uid, route.to, route.priority, route.deid,
                                                       actor=f"route:{route.name}", purpose=route.purpose)
        except PixelRiskRefusedError as exc:
            log.warning("study %s on route %s: research share refused (%s)", hash_uid(study_uid), route.name, exc)
            return None
        return outcome.manifest

    async def _forward_failed(self, manifest_id: CID, destination: str, error: str, instances: int) -> None:
        row = await self.ctx.db.run(lambda s: s.manifest(manifest_id))
        if row is None:
            return
        manifest = open_document(row.raw, Manifest).document
        self.forward_failures[destination] = self.forward_failures.get(destination, 0) + instances
        await self.ctx.events.publish(StudyEvent(
            StudyEventKind.FAILED, str(manifest_id), row.study_uid, manifest.sender_org, manifest.priority.value,
            "received", instances=instances, detail=f"forward to PACS {destination} failed: {error}"[:300]))

    async def audit(self, event: AuditEvent) -> None:
        if not event.actor_org and event.actor in ("", self.config.dimse.ae_title):
            event = AuditEvent(event.code, event.action, event.outcome, event.actor or self.ctx.peer_id,
                               self.ctx.org, event.study, event.manifest_id, event.detail)
        await self.ctx.audit(event)

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.intake.run)
                nursery.start_soon(keep_running, "announcer", self.announcer.run)
                nursery.start_soon(keep_running, "conflicts", self.conflicts.run)
                if self.forwarder is not None:
                    (self.ctx.home.path / "tmp" / "forward").mkdir(parents=True, exist_ok=True)
                    await nursery.start(self.forwarder.run)
                if self.dimse is not None:
                    await nursery.start(self.dimse.run)
                task_status.started()
        finally:
            self.state.close()

    # -- hooks from the node runtime ---------------------------------------------------------
    def queue_write(self, store: MetadataStore, manifest_id: CID) -> None:
        """In the database call that records our receipt delivered: queue the study for the PACS."""
        if self.forwarder is not None:
            self.forwarder.queue_write(store, manifest_id)
        else:
            self.reconciler.gate(store, manifest_id)  # no PACS: reconciled all the same (what DICOMweb shows)

    async def receipted(self, manifest_id: CID) -> None:
        if self.forwarder is not None:
            await self.forwarder.release(manifest_id)
        else:
            await self.reconciler.settle(manifest_id)

    async def recalled(self, manifest_id: CID) -> None:
        if self.forwarder is not None:
            await self.forwarder.cancel(manifest_id)

    # -- what the control API shows (called on the database thread) ------------------------------
    def forward_progress(self, store: MetadataStore, manifest_id: CID) -> dict[str, object]:
        if self.forwarder is None:
            return {}
        progress: dict[str, object] = {dest: p.json() for dest, p in self.forwarder.progress(store, manifest_id).items()}
        held = self.reconciler.holding(store, manifest_id)
        if held and not progress:  # not queued: it waits for its patient to be reconciled, or was rejected
            found = received_manifest(store, manifest_id)
            total = len(found[1].instances) if found else 0
            progress = {d.name: {"state": held, "total": total, "sent": 0, "pending": 0, "waiting": total,
                                 "failed": 0, "cancelled": 0, "last_error": ""} for d in self.config.pacs}
        return progress

    def forward_counts(self, store: MetadataStore) -> dict[str, dict[str, int]]:
        return self.forwarder.counts(store) if self.forwarder is not None else {}

    def status(self, store: MetadataStore) -> dict[str, object]:
        """The gateway's state for `meshnode status` / `meshnode gateway` (database thread)."""
        dimse = self.dimse.address if self.dimse is not None else None
        counts = self.forward_counts(store)
        return {
            "dimse": ({"ae_title": self.config.dimse.ae_title, "host": dimse[0], "port": dimse[1]}
                      if dimse is not None else None),
            "routes": [{"name": r.name, "called_ae": r.called_ae, "to": list(r.to), "priority": r.priority.value,
                        "purpose": r.purpose.value, "quiet_period_seconds": r.quiet_period_s}
                       for r in self.config.routes],
            "pending_announcements": self.announcer.status(store),
            "intake": {"stored": self.intake.counters.stored, "duplicates": self.intake.counters.duplicates,
                       "refused": self.intake.counters.refused, "bytes": self.intake.counters.bytes,
                       "held": self.intake.counters.held},
            "conflicts": [c.json() for c in store.conflicts(ConflictState.PENDING)],
            **waiting_for_people(store),
            "forward": {
                d.name: {"ae_title": d.ae_title, "host": d.host, "port": d.port,
                         "items": counts.get(d.name, {}),
                         "unreachable": self.forwarder.unreachable.get(d.name, "") if self.forwarder else ""}
                for d in self.config.pacs},
        }


def waiting_for_people(store: MetadataStore) -> dict[str, object]:
    """For `meshnode gateway` (review 2 finding 11): received manifests not forwarded until a person decides
    their patient (`meshnode reconcile`), and research shares held for a pixel-risk decision
    (`meshnode deid held`)."""
    return {
        "reconciliation": {state.value: len(store.reconciliations((state,)))
                           for state in (ReconState.ARRIVED, ReconState.WAITING)},
        "research_held": [{"share_id": r.share_id, "study_uid": r.original_study_uid, "project": r.project}
                          for r in store.research_shares(ResearchState.HELD)],
    }
