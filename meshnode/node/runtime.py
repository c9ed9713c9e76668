"""`meshnode run`: the node's trio process, one nursery holding every service.

Start-up: open storage, start the libp2p host (TCP + Noise + Yamux) with the
node key, serve the exchange protocols, register the signed address record
with the directory, resume unfinished transfers, start the control API.
Then: roster watch (revoked peers are cut off as soon as a roster is published), deliveries with retry,
multi-source fetching, receipts. SIGTERM or Ctrl-C cancels the nursery:
block writes in progress are discarded (their temp files), everything
committed stays, and the next start resumes from the blocks on disk.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio
from libp2p.abc import IHost

from meshnode.audit_export.exporter import AuditExporter, audit_source
from meshnode.control.app import ControlApp
from meshnode.control.server import serve_control
from meshnode.control.token import create_token
from meshnode.directory.cache import DirectoryCache, FileRosterVersionStore
from meshnode.directory.client import DirectoryClient
from common.directory_transport import directory_peer_id, libp2p_transport
from meshnode.gateway.service import Gateway
from meshnode.node.forward_reports import ForwardReporter
from meshnode.gateway.intake import StoredInstance, StudyIntake
from meshnode.home import NodeHome
from meshnode.node import lifecycle as node_lifecycle
from meshnode.node.completion import verify_instances
from meshnode.node.context import NodeContext, keep_running
from meshnode.node.control_routes import routes
from meshnode.node.corruption import CorruptBlocks
from meshnode.node.delivery import Deliveries, NodeTransport, stored_deliveries
from meshnode.node.events import StudyEvent, StudyEventKind
from meshnode.node.org_fetcher import OrgFetcher
from meshnode.node.fetcher import Fetcher
from meshnode.node.limits import PeerLimits
from meshnode.node.peer_link import Libp2pLink
from meshnode.node.replication import Replication
from meshnode.node.peers import PeerRegistry
from meshnode.node.reach import Reach
from meshnode.node.receiver import Receiver
from meshnode.node.research_share import ResearchShares
from meshnode.node.sender import Sender
from meshnode.node.request_wire import Libp2pRequestLink, RequestWire
from meshnode.node.requests import Requests
from meshnode.node.sessions import Sessions
from meshnode.node.wire import Wire
from common.p2p.host import listen_multiaddrs, running_host
from meshnode.web.node_web import run_web
from meshnode.storage.audit import AuditEvent, EventCode, Outcome
from meshnode.storage.blockstore import BlockCorruptError
from meshnode.storage.conflicts import held_among, held_detail, received_revision
from meshnode.storage.dbthread import DatabaseThread
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.node_storage import NodeStorage
from meshnode.storage.records import AddOutcome, InstanceRecord, ManifestRow, hash_uid
from protocol.cid import CID
from protocol.conflict import ConflictPolicy
from protocol.directory_messages import WATCH_WAIT
from protocol.document import Signed
from protocol.errors import LocalProtocolError, MeshError, NotFoundError, RosterExpiredError, RosterRollbackError
from protocol.lifecycle import ManifestEvent, ManifestState
from protocol.manifest import Manifest
from protocol.backoff import Backoff
from protocol.outbox import DeliveryKey, DeliveryKind, DeliveryRecord, DeliveryState
from protocol.receipt import Receipt
from protocol.roster import RosterGuard

if TYPE_CHECKING:
    from trio_typing import TaskStatus

    from meshnode.patient.service import LinkService

log = logging.getLogger(__name__)

#: The least time between two roster watches when the directory answers one at once.
ROSTER_WATCH_MIN_INTERVAL = 1.0
#: Between failed directory registrations or roster watches: 2 s doubling to 15 min.
DIRECTORY_BACKOFF = Backoff(base=2.0, factor=2.0, cap=900.0)


async def store_research_copy(intake: StudyIntake, data: bytes, source: str) -> StoredInstance:
    """A research share's de-identified instance, through the intake, with conflict policy reject whatever
    [conflicts] default says: a copy never replaces a stored instance (held for a person instead)."""
    return await intake.store(data, None, source=source, on_conflict=ConflictPolicy.REJECT)


def forget_recalled(store: MetadataStore, open_manifest: Callable[[CID, bytes], Signed[Manifest]],
                    row: ManifestRow, now_ms: int) -> int:
    """A received manifest was recalled: forget the instances it listed that came from its sender org, except
    those another live received manifest of the study still lists (a later revision, say). Another org's
    instances that reuse the Study UID, and local ones, stay. Returns instances forgotten."""
    listed = {(e.sop_instance_uid, e.digest) for e in open_manifest(row.manifest_id, row.raw).document.instances}
    for other in store.manifests("received"):
        if (other.manifest_id != row.manifest_id and other.study_uid == row.study_uid
                and other.state is not ManifestState.RECALLED):
            listed -= {(e.sop_instance_uid, e.digest)
                       for e in open_manifest(other.manifest_id, other.raw).document.instances}
    if not listed:
        return 0
    return store.forget_received(row.study_uid, row.sender_org, sorted(listed), [], now_ms)


class Node:
    def __init__(self, home: NodeHome) -> None:
        self.home = home
        #: where this node listens, once each listener is up (`meshnode status`): libp2p multiaddrs, the
        #: control API's URL, the HTTP listener's URL ("" when off)
        self.listen_addrs: list[str] = []
        self.control_url = ""
        self.http_url = ""
        #: the patient link service ([patient_access] on), made by meshnode.web.node_web.run_web
        self.patient_links: LinkService | None = None

    async def run(self, *, task_status: TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        home = self.home
        config = home.config()
        key = home.signing_key()
        certificate = home.certificate()
        storage = NodeStorage.open(home.path)
        db = DatabaseThread(storage.metadata)
        guard = RosterGuard(config.authority_keys, FileRosterVersionStore(home.state_dir / "roster-version"),
                            skew=config.clock_skew)
        try:
            async with running_host(key.seed, config.listen) as host:
                directory = DirectoryClient(
                    libp2p_transport(host, config.directory), guard, DirectoryCache(home.directory_cache_dir),
                    directory_peer_id=directory_peer_id(config.directory), skew=config.clock_skew,
                    watch_transport=libp2p_transport(host, config.directory, timeout=WATCH_WAIT + 10))
                ctx = NodeContext(home, config, key, certificate, storage, db,
                                  PeerRegistry(guard, skew=config.clock_skew), directory)
                await self._serve(ctx, host, task_status)
        finally:
            # under the database lock: a C-STORE association thread may be mid-transaction (run_blocking);
            # later calls get UnavailableError (0xA700)
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(db.close)

    async def _store_copy(self, data: bytes, source: str) -> StoredInstance:
        """A research share's de-identified instance, stored durably through the gateway's intake."""
        return await store_research_copy(self.gateway.intake, data, source)

    async def _serve(self, ctx: NodeContext, host: IHost, task_status: TaskStatus[list[str]]) -> None:
        await ctx.directory.refresh_roster()  # fail closed at start without a valid roster
        self.ctx = ctx
        self.transport = NodeTransport(ctx)
        self.deliveries = Deliveries(ctx.db, ctx.clock, self.transport, on_receipted=self._receipted,
                                     on_failed=self._delivery_failed)
        self.sender = Sender(ctx, self.deliveries)
        self.receiver = Receiver(ctx, self._accepted, self._recalled)
        self.wire = Wire(ctx, host, self.receiver, self.sender,
                         PeerLimits(ctx.config.max_streams_per_peer, ctx.config.max_requests_per_second))
        self.sessions = Sessions(ctx, self.wire)
        self.reach = Reach(ctx, host, self.wire)  # [reach]: relay service, reservations (ConfigError at start)
        self.sessions.reach_relay = self.reach.check_relay
        link = Libp2pLink(self.wire, self.sessions)
        self.fetcher = Fetcher(ctx, link, self._completed, self._verification_failed)
        self.org_fetcher = OrgFetcher(ctx, link, self.fetcher)  # which node of this org fetches a study
        self.transport.connect(self.wire, self.sessions)
        # several nodes per organisation, the sender's side (docs/operators.md, "High availability")
        self.replication = Replication(ctx, Libp2pLink(self.wire, self.sessions), ctx.config.replication.mode.value,
                                       self.deliveries)
        self.receiver.sibling = self.replication.accept
        self.receiver.sibling_recalled = self.replication.sibling_recalled
        self.sender.on_shared = self.replication.offer
        self.sender.on_receipt = self.replication.receipt_taken
        self.sender.on_recall = self.replication.recalled
        self.gateway = Gateway(ctx, self.sender)
        self.sender.research = ResearchShares(ctx, ctx.home.path, self.sender.share_study, self._store_copy)
        await self.sender.research.recover()  # shares a stop left half-made: recorded failed (nothing announced)
        self.deliveries.receipted_write = self.gateway.queue_write  # the PACS forward, with the receipt
        if self.gateway.forwarder is not None:  # how the forward ended, told to the study's sender
            reporter = ForwardReporter(ctx, self.deliveries, self.gateway.forwarder.destinations)
            self.gateway.forwarder.report_hook = reporter.forward_ended
        self.corrupt = CorruptBlocks(ctx.storage, ctx.db, ctx.audit, ctx.peer_id, self._repair)
        #: received manifests being fetched again to repair a quarantined block, with their state before
        self._repairing: dict[CID, ManifestState] = {}
        #: received manifests being verified again after a restart (they fetch what is missing themselves)
        self._resuming: set[CID] = set()
        self.wire.serve()
        # study requests and prior queries (issue 13): served past the same gate
        self.requests = Requests(ctx, self.sender, Libp2pRequestLink(self.wire, self.sessions))
        RequestWire(self.wire, self.requests).serve()
        addrs = listen_multiaddrs(host)
        await ctx.audit(AuditEvent(EventCode.APPLICATION_ACTIVITY, "node-start", actor=ctx.peer_id,
                                   actor_org=ctx.org, detail=", ".join(addrs)[:300]))
        await self._audit_refused_cache()
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.corrupt.run)
                await nursery.start(self.wire.run)
                await nursery.start(self.requests.run)
                self.listen_addrs = list(addrs)
                self.control_url = await nursery.start(
                    serve_control, ControlApp(create_token(ctx.home.path), routes(self)), ctx.home.path,
                    ctx.config.control_port)
                await nursery.start(self.gateway.run)
                self.audit_exporter = AuditExporter(ctx.storage, ctx.db, audit_source(
                    ctx.peer_id, ctx.org, ctx.key.public_key.raw.hex()), ctx.config.audit_repository)
                await nursery.start(self.audit_exporter.run)  # checkpoints; alerts to the audit repository
                if ctx.config.http.enabled or ctx.config.http.webhooks or ctx.config.notify.enabled:
                    # DICOMweb, web UI, metrics, health, webhooks, arrival emails
                    self.http_url = await nursery.start(run_web, self)
                await nursery.start(self.reach.run)
                listen = [a.rsplit("/p2p/", 1)[0] for a in addrs]
                nursery.start_soon(keep_running, "directory registration", lambda: self._register_loop(listen))
                nursery.start_soon(keep_running, "roster refresh", self._roster_loop)
                await self.deliveries.load()  # before _resume, which asks it which receipts are queued
                nursery.start_soon(keep_running, "deliveries", self.deliveries.run)
                nursery.start_soon(keep_running, "fetcher", self.fetcher.run)
                nursery.start_soon(keep_running, "org fetcher", self.org_fetcher.run)
                nursery.start_soon(keep_running, "sibling copies", self.replication.run)
                await self._resume(nursery)
                log.info("node %s (%s) running on %s", ctx.peer_id, ctx.org, ", ".join(addrs))
                task_status.started(addrs)
        finally:
            with trio.CancelScope(shield=True):
                await ctx.audit(AuditEvent(EventCode.APPLICATION_ACTIVITY, "node-stop", actor=ctx.peer_id,
                                           actor_org=ctx.org))

    # -- background loops ------------------------------------------------------------------
    async def _register_loop(self, addrs: list[str]) -> None:
        """Publish the signed address record, again at half its lifetime and whenever the relayed addresses
        change (meshnode.node.reach: a reservation made or lost)."""
        ctx = self.ctx
        attempts = 0
        while True:
            changed = self.reach.changed
            published = self.reach.addresses(addrs)
            if not published:  # private, no reservation yet: nothing to publish
                await changed.wait()
                continue
            try:
                await ctx.directory.register(ctx.certificate.encode(), ctx.key, published,
                                             ctx.config.address_record_ttl)
                attempts = 0
                with trio.move_on_after(ctx.config.address_record_ttl / 2):
                    await changed.wait()
            except MeshError as exc:
                attempts += 1
                log.warning("cannot register with the directory (attempt %d): %s", attempts, exc)
                await trio.sleep(DIRECTORY_BACKOFF.delay(attempts))

    async def _roster_loop(self) -> None:
        """Keep the roster current: a watch held open on the directory hears of a new roster as soon
        as it is published; revoked peers are then cut off at once. While the directory cannot be
        watched (down, or too old to know watches) the roster is fetched every roster_refresh seconds
        (the cached one serves until it expires, then every peer is refused: fail closed)."""
        ctx = self.ctx
        failures = 0
        while True:
            started = trio.current_time()
            before = ctx.peers.guard.current
            try:
                await ctx.directory.watch_roster()
                failures = 0
            except MeshError as exc:
                failures += 1
                log.warning("roster watch failed (%d in a row), fetching it instead: %s", failures, exc)
                try:
                    await ctx.directory.refresh_roster()
                except MeshError as refresh_exc:
                    log.warning("roster refresh failed: %s", refresh_exc)
            current = ctx.peers.guard.current
            if current is not None and current is not before:
                await self._cut_off_revoked(current.document.version)
            if failures:
                await trio.sleep(min(DIRECTORY_BACKOFF.delay(failures), ctx.config.roster_refresh))
            elif trio.current_time() - started < ROSTER_WATCH_MIN_INTERVAL:
                # answered at once (the directory is over its watch cap): poll, paced
                await trio.sleep(ROSTER_WATCH_MIN_INTERVAL)

    async def _audit_refused_cache(self) -> None:
        """A cached roster that did not verify is local state someone changed (or a crash between writing the
        version and the roster: an older one). An expired one is only old, and not alerted."""
        exc = self.ctx.directory.cache_refused
        if exc is None or isinstance(exc, RosterExpiredError):
            return
        outcome = Outcome.MINOR_FAILURE if isinstance(exc, RosterRollbackError) else Outcome.SERIOUS_FAILURE
        await self.ctx.audit(AuditEvent(EventCode.SECURITY_ALERT, "roster-cache-refused", outcome,
                                        actor=self.ctx.peer_id, actor_org=self.ctx.org,
                                        detail=f"{exc.name}: {exc}"[:300]))

    async def _cut_off_revoked(self, version: int) -> None:
        """A new roster: every peer it no longer admits is refused from now on (revalidate drops it
        before any await) and its connections are closed, ending its block streams."""
        ctx = self.ctx
        dropped = ctx.peers.revalidate(ctx.clock())
        self.reach.roster_changed()  # a relay drops the reservations of nodes no longer certified
        for peer_id in dropped:
            self.fetcher.peer_lost(peer_id)
        async with trio.open_nursery() as nursery:
            for peer_id in dropped:
                nursery.start_soon(self.wire.disconnect, peer_id)
        for peer_id in dropped:
            log.warning("peer %s refused under roster v%d: disconnected", peer_id, version)
            await ctx.audit(AuditEvent(EventCode.SECURITY_ALERT, "peer-revoked", Outcome.MINOR_FAILURE,
                                       actor=peer_id, detail=f"roster v{version}: disconnected"))
        ctx.wake()

    # -- hooks ----------------------------------------------------------------------------
    async def _accepted(self, signed: Signed[Manifest], announced_at: float) -> None:
        if self.ctx.config.auto_fetch:
            await self.org_fetcher.begin(signed, since=announced_at)

    async def fetch(self, manifest_id: CID) -> None:
        row = await self.ctx.db.run(lambda s: s.manifest(manifest_id))
        if row is None or row.direction != "received" or row.state is ManifestState.RECALLED:
            raise NotFoundError("no such received manifest")
        signed = self.ctx.manifests.open(row.manifest_id, row.raw)
        await self.fetcher.start(signed, holder=signed.document.sender_peer)

    async def _recalled(self, manifest_id: CID) -> None:
        self.org_fetcher.stop(manifest_id)
        self.fetcher.stop(manifest_id)
        row = await self.ctx.db.run(lambda s: s.manifest(manifest_id))
        if row is not None:
            now_ms = int(self.ctx.clock() * 1000)
            await self.ctx.db.run(lambda s: forget_recalled(s, self.ctx.manifests.open, row, now_ms))
        # gc reads and writes metadata, so it runs on the database thread like every other access
        result = await self.ctx.db.run(lambda _: self.ctx.storage.gc(orphan_grace_s=3600))
        log.info("recall of %s: %d block(s) collected", manifest_id, result.blocks_removed)

    async def _verification_failed(self, signed: Signed[Manifest], reason: str) -> None:
        """Every block matched its CID, yet an instance does not match the manifest (its digest, or its own
        DICOM header): the sender's document is inconsistent, and fetching again cannot help. Nothing of
        it is recorded; blocks it shares with the node's own studies stay as they are."""
        manifest_id = signed.cid
        self._repairing.pop(manifest_id, None)
        log.error("manifest %s failed verification: %s", manifest_id, reason)
        now_ms = int(self.ctx.clock() * 1000)

        def fail(store: MetadataStore) -> None:
            node_lifecycle.next_state(store, manifest_id, ManifestEvent.VERIFICATION_FAILED)
            store.fail_manifest(manifest_id, reason[:300], now_ms)

        try:
            await self.ctx.db.run(fail)
        except LocalProtocolError as exc:  # recalled meanwhile: nothing left to fail
            log.info("manifest %s: verification failure not recorded: %s", manifest_id, exc)
            return
        await self.ctx.audit(AuditEvent(EventCode.SECURITY_ALERT, "verification-failed", Outcome.SERIOUS_FAILURE,
                                        manifest_id=str(manifest_id), detail=reason[:300]))
        manifest = signed.document
        await self.ctx.events.publish(StudyEvent(StudyEventKind.FAILED, str(manifest_id), manifest.study_uid,
                                                 manifest.sender_org, manifest.priority.value, "received",
                                                 detail="verification failed: the study does not match its manifest"))

    async def _repair(self, cid: CID) -> str:
        """A block was quarantined (meshnode.node.corruption): when it belongs to a received manifest still
        live and complete, fetch that manifest again. The fetch wants only what is not present (this
        block), asks every holder (the sender and fellow recipients), checks the block against its CID
        on arrival and re-verifies its instances; on completion the manifest gets its state back
        (`_completed`), with no second receipt."""
        now = self.ctx.clock()

        def find(store: MetadataStore) -> list[tuple[CID, ManifestState, bytes]]:
            return [(row.manifest_id, row.state, row.raw) for row in reversed(store.manifests("received"))
                    if row.state in (ManifestState.COMPLETE, ManifestState.RECEIPTED) and row.expires_at >= now
                    and not store.not_in_manifest(row.manifest_id, [cid])]

        for manifest_id, state, raw in await self.ctx.db.run(find):
            if manifest_id in self.fetcher.active or manifest_id in self._repairing or manifest_id in self._resuming:
                return f"; being fetched again under manifest {manifest_id}"
            self._repairing[manifest_id] = state
            signed = self.ctx.manifests.open(manifest_id, raw)
            await self.fetcher.start(signed, holder=signed.document.sender_peer)
            return f"; fetching it again under manifest {manifest_id}"
        return "; no live received manifest lists it: not fetched again"

    async def _completed(self, signed: Signed[Manifest], records: list[InstanceRecord] | None = None) -> None:
        """Every block is here and every instance verified (`records`; verified here when None, as after a
        restart): record the study, send the signed receipt."""
        ctx = self.ctx
        manifest = signed.document
        manifest_id = signed.cid
        previous = self._repairing.pop(manifest_id, None)
        if previous is not None:  # a repair: the study is recorded (and receipted, or its receipt on its way)
            now = int(ctx.clock() * 1000)

            def restore(store: MetadataStore) -> bool:
                node_lifecycle.move(store, manifest_id, ManifestEvent.VERIFIED)
                delivered = any(d.key.kind is DeliveryKind.RECEIPT and d.state is DeliveryState.DELIVERED
                                for d in stored_deliveries(store, manifest_id))
                # its receipt was delivered before the repair, or while it went on (the move was refused then)
                if previous is ManifestState.RECEIPTED or delivered:
                    node_lifecycle.move(store, manifest_id, ManifestEvent.RECEIPT_DELIVERED)
                    self.gateway.queue_write(store, manifest_id)  # (idempotent: what was sent stays sent)
                done = store.transfer(manifest_id)
                store.set_transfer(manifest_id, ManifestState.COMPLETE, done[1] if done else 0, manifest.total_bytes,
                                   now)
                return previous is not ManifestState.RECEIPTED and delivered

            try:
                receipted_meanwhile = await ctx.db.run(restore)
            except LocalProtocolError as exc:  # recalled during the repair
                log.info("manifest %s: repair not recorded: %s", manifest_id, exc)
                return
            if receipted_meanwhile:
                await self.gateway.receipted(manifest_id)  # the PACS forward may start
            await ctx.audit(AuditEvent(EventCode.APPLICATION_ACTIVITY, "block-repaired", actor=ctx.peer_id,
                                       manifest_id=str(manifest_id),
                                       detail="quarantined block(s) fetched again and verified"))
            log.info("manifest %s: quarantined block(s) fetched again and verified", manifest_id)
            return
        if records is None:
            self._resuming.add(manifest_id)
            try:
                records = await trio.to_thread.run_sync(verify_instances, ctx.storage.blocks, manifest)
            except BlockCorruptError as exc:
                # bit rot found on restart (the store has quarantined the block): fetch what is missing
                # again, then complete as usual
                rotten = exc.cid
                if rotten is not None:
                    await ctx.db.run(lambda s: s.forget_blocks([rotten]))
                await self.fetcher.start(signed, holder=manifest.sender_peer)
                return
            except MeshError as exc:
                await self._verification_failed(signed, str(exc))
                return
            finally:
                self._resuming.discard(manifest_id)
        event = AuditEvent(EventCode.INSTANCES_TRANSFERRED, "received", actor=manifest.sender_peer,
                           actor_org=manifest.sender_org, study=hash_uid(manifest.study_uid),
                           manifest_id=str(manifest_id), detail=f"{len(records)} instance(s) verified")
        now_ms = int(ctx.clock() * 1000)

        held: list[int] = []

        def record(store: MetadataStore) -> None:
            state = node_lifecycle.next_state(store, manifest_id, ManifestEvent.VERIFIED)  # refused: nothing written
            # a sender's signed revision supersedes its own earlier version of an instance of the study; an
            # instance whose UID is held here from another lineage is held for a human (protocol.conflict)
            incoming = received_revision(manifest.sender_org, str(manifest_id))
            outcomes = store.add_instances(records, [event], now_ms, [incoming] * len(records))
            held[:] = [held_among(store, records, outcomes)]
            store.set_manifest_state(manifest_id, state)
            previous = store.transfer(manifest_id)
            store.set_transfer(manifest_id, state, previous[1] if previous else 0, manifest.total_bytes, now_ms)
            ctx.storage.write_head()  # on the database thread: it reads the newest audit entry

        if self.org_fetcher.copied(manifest_id):  # from a sibling, which sent the organisation's receipt
            await self._copied(signed, records, record)
            return
        # the PACS forward is queued when the receipt is delivered (meshnode.gateway.pacs_queue)
        receipt = Receipt(manifest_id, ctx.org, ctx.peer_id, len(records), int(ctx.clock())).sign(ctx.key)
        try:
            # the study and the receipt to send are durable together: a restart sends the receipt, not the study
            await self.deliveries.receipt(manifest_id, manifest.sender_org, receipt.encode(), also=record)
        except LocalProtocolError as exc:  # recalled while its last blocks were verified
            log.info("manifest %s: completion not recorded: %s", manifest_id, exc)
            return
        started = self.fetcher.started_at(manifest_id)
        await ctx.events.publish(StudyEvent(
            StudyEventKind.ARRIVED, str(manifest_id), manifest.study_uid, manifest.sender_org,
            manifest.priority.value, "received", accession=records[0].study.accession if records else "",
            instances=len(records), duration_s=ctx.clock() - started if started is not None else None,
            detail=held_detail(held[0] if held else 0)))

    async def _copied(self, signed: Signed[Manifest], records: list[InstanceRecord],
                      record: Callable[[MetadataStore], None]) -> None:
        """A study copied from a sibling node of this org (meshnode.node.org_fetcher): recorded with no receipt
        (the sibling that fetched it from the sender sent the organisation's one) and no PACS forward (that
        sibling's); its state goes straight to receipted, so a restart never sends a receipt for it."""
        manifest_id = signed.cid
        manifest = signed.document

        def record_copy(store: MetadataStore) -> None:
            record(store)
            node_lifecycle.move(store, manifest_id, ManifestEvent.RECEIPT_DELIVERED)

        try:
            await self.ctx.db.run(record_copy)
        except LocalProtocolError as exc:  # recalled while its last blocks were verified
            log.info("manifest %s: copy not recorded: %s", manifest_id, exc)
            return
        await self.ctx.audit(AuditEvent(EventCode.INSTANCES_TRANSFERRED, "org-copy", actor=self.ctx.peer_id,
                                        actor_org=self.ctx.org, study=hash_uid(manifest.study_uid),
                                        manifest_id=str(manifest_id),
                                        detail=f"{len(records)} instance(s) copied from a sibling node; no receipt"))
        log.info("manifest %s: copied from a sibling node (%d instance(s)); no receipt", manifest_id, len(records))

    # -- deliveries (meshnode.node.delivery) -------------------------------------------------
    async def _receipted(self, manifest_id: CID) -> None:
        row = await self.ctx.db.run(lambda s: s.manifest(manifest_id))
        if row is not None and row.state is ManifestState.RECEIPTED:  # not recalled (or repaired) meanwhile
            await self.gateway.receipted(manifest_id)  # the PACS forward may start

    async def _delivery_failed(self, record: DeliveryRecord[DeliveryKey]) -> None:
        key = record.key
        if key.kind is not DeliveryKind.ANNOUNCE or key.org == self.ctx.org:  # (an offer to the siblings)
            return
        row = await self.ctx.db.run(lambda s: s.manifest(key.item))
        if row is None:
            return
        manifest = self.ctx.manifests.open(row.manifest_id, row.raw).document
        await self.ctx.events.publish(StudyEvent(
            StudyEventKind.FAILED, str(key.item), manifest.study_uid, key.org, manifest.priority.value, "sent",
            detail=f"delivery refused: {record.last_error.split(':', 1)[0]}"))

    async def _resume(self, nursery: trio.Nursery) -> None:
        """Restart unfinished transfers and undelivered receipts from what is on disk."""
        def load(store: MetadataStore) -> tuple[list[ManifestRow], set[CID]]:
            rows = store.manifests("received")
            receipts = {m.manifest_id for m in rows if m.state is ManifestState.COMPLETE and any(
                d.key.kind is DeliveryKind.RECEIPT for d in stored_deliveries(store, m.manifest_id))}
            return rows, receipts

        rows, queued_receipts = await self.ctx.db.run(load)
        now = self.ctx.clock()
        for row in rows:
            if row.expires_at < now:
                continue
            signed = self.ctx.manifests.open(row.manifest_id, row.raw)
            auto = self.ctx.config.auto_fetch
            if row.state is ManifestState.FETCHING or (row.state is ManifestState.ANNOUNCED and auto):
                await self.org_fetcher.begin(signed)  # learns from this org's other nodes first
            elif row.state is ManifestState.COMPLETE and row.manifest_id not in queued_receipts:
                nursery.start_soon(self._completed, signed)  # completed before receipts were queued durably
