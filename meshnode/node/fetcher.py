"""The trio driver of protocol.fetch.FetchScheduler: ask peers, hand blocks to the sink, verify, complete.

Every block of every in-flight response goes straight to the BlockSink
(meshnode.node.block_sink), which checks it against its CID, stages it and
makes it durable in groups; only then is it reported to the scheduler, so a
block counts as received only once it is verified, on disk and recorded. A
block whose hash does not match is never stored: the scheduler bans the peer
and asks elsewhere. Each instance is verified (reassembled, digest checked)
as soon as its last block is durable, while the rest of the study arrives.
After a restart, `resume` re-adds unfinished manifests with the blocks
already on disk, so nothing verified is fetched again: before the first
fetch starts, the blocks of a commit group the crash interrupted (durable,
not yet recorded) are checked and adopted (BlockSink.adopt_interrupted).
Peers are reached through a PeerLink (meshnode.node.peer_link): libp2p in
the node, an in-memory link in the tests.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TypeVar

import trio

from meshnode.directory.client import ResolvedPeer
from meshnode.node import lifecycle as node_lifecycle
from meshnode.node.assembly import InstanceAssembly
from meshnode.node.block_sink import Arrival, BlockSink, Outcome, Settled
from meshnode.node.completion import check_summary, same_bytes, verify_instance
from meshnode.node.context import NodeContext
from meshnode.node.peer_link import PeerLink
from meshnode.node.retained import RetainedBlocks
from meshnode.storage.audit import AuditEvent, EventCode, Outcome as AuditOutcome
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.records import InstanceRecord
from protocol.cid import CID
from protocol.document import Signed
from protocol.access import Holding, may_reuse
from protocol.discovery import DiscoverySchedule
from protocol.errors import LocalProtocolError, MeshError, UnauthorisedError
from protocol.exchange_messages import BlockAbsent, BlockData, BlockRequest, Refused, held_blocks
from protocol.fetch_order import fetch_order
from protocol.fetch import (
    BlockStalled,
    BlockWanted,
    FetchScheduler,
    ManifestCompleted,
    PeerBanned,
    Request,
)
from protocol.fetch_schedulers import FetchSchedulers
from protocol.fetch_settings import FetchSettings
from protocol.lifecycle import ManifestEvent, ManifestState
from protocol.manifest import Manifest

log = logging.getLogger(__name__)

V = TypeVar("V")

TICK = 0.5
PROGRESS_INTERVAL = 0.5
ESTIMATED_BLOCK = 1 << 20
VERIFY_BATCH = 16  # instances verified per worker-thread call
#: Manifests whose start and first-instance times are kept for status and metrics.
REMEMBERED = 4096

CompletionHook = Callable[[Signed[Manifest], list[InstanceRecord]], Awaitable[None]]
FailureHook = Callable[[Signed[Manifest], str], Awaitable[None]]


class Fetcher:
    def __init__(self, ctx: NodeContext, link: PeerLink, on_complete: CompletionHook, on_failed: FailureHook) -> None:
        self.ctx = ctx
        self.link = link
        self.on_complete = on_complete
        self.on_failed = on_failed
        #: the scheduler settings (protocol.fetch_settings), with this node's request timeout
        self.settings = FetchSettings(request_timeout=float(ctx.config.request_timeout))
        #: one scheduler per sender org (protocol.fetch_schedulers says why)
        self._schedulers = FetchSchedulers(self.settings)
        #: manifest -> its sender org (kept a while after a manifest stops, for late arrivals)
        self._sender_of: dict[CID, str] = {}
        self.sink = BlockSink(ctx.storage.blocks, ctx.db, self._settled, clock=ctx.clock, worker=ctx.worker)
        self._adopting = trio.Lock()
        self._adopted = False
        self.active: dict[CID, Signed[Manifest]] = {}
        self._orders: dict[CID, list[CID]] = {}
        self._started: dict[CID, float] = {}
        self._assembly: dict[CID, InstanceAssembly] = {}
        #: instances of an active manifest this node verified before (an earlier revision, say), by index
        self._known: dict[CID, dict[int, InstanceRecord]] = {}
        self._to_verify: list[tuple[CID, int]] = []
        #: bytes of durable blocks whose instance is not verified yet: verified from memory, not re-read
        self.retained = RetainedBlocks()
        self._verify_wake = trio.Event()
        self._fetched: set[CID] = set()  # every block durable; waiting for the last verifications
        self._dirty: set[CID] = set()  # progress not yet saved
        self._nursery: trio.Nursery | None = None
        self._discover_now = trio.Event()
        #: when each active manifest's holders are asked next (each backs off on its own: protocol.discovery)
        self._discovery: DiscoverySchedule[CID] = DiscoverySchedule(
            self.settings.discovery_interval, max(self.settings.discovery_interval, self.settings.discovery_interval_max))
        #: (manifest, peer) pairs this node relayed a manifest to (at most once each, this run)
        self._relayed: set[tuple[CID, str]] = set()
        #: seconds from the announcement's arrival (or the start of fetching) to the first instance verified on disk
        self.first_usable: dict[CID, float] = {}
        #: manifests copied from siblings only (meshnode.node.org_fetcher): the only nodes asked
        self._only_from: dict[CID, frozenset[str]] = {}

    def scheduler_of(self, manifest_id: CID) -> FetchScheduler | None:
        """The scheduler a manifest is (or was recently) fetched in."""
        sender = self._sender_of.get(manifest_id)
        return self._schedulers.get(sender) if sender is not None else None

    # -- adding work ------------------------------------------------------------------
    async def start(self, signed: Signed[Manifest], holder: str | None = None, since: float | None = None,
                    only_from: frozenset[str] | None = None) -> None:
        """Fetch everything of this manifest not verified on disk yet; `holder` has it all (the announcer).

        `since` is when the announcement arrived (time to the first usable instance counts from it);
        by default, now. `only_from`: ask only these nodes of this node's own org (a copy from siblings)."""
        manifest_id = signed.cid
        async with self._adopting:  # once, before the first fetch: what a crash left on disk (BlockSink)
            if not self._adopted:
                self._adopted = True
                try:
                    await self.sink.adopt_interrupted()
                except MeshError as exc:  # nothing adopted: those blocks are fetched again, as before
                    log.error("cannot adopt the blocks of an interrupted commit: %s", exc)
        if manifest_id in self.active:
            return
        manifest = signed.document
        order = list(manifest.block_order())
        wanted = fetch_order(manifest, self.ctx.org, self.ctx.peer_id)
        sizes = _block_sizes(manifest)
        def facts(s: MetadataStore) -> tuple[set[CID], dict[CID, list[Holding]], list[InstanceRecord]]:
            present = s.present_blocks(order)
            return present, s.holdings(present) if present else {}, s.instances(manifest.study_uid)

        present, holdings, earlier = await self.ctx.db.run(facts)
        # A block on disk counts only if the sender already knows this node holds it; the rest is fetched
        # again, so what this node asks for never tells a sender what else it stores (protocol.access).
        have = {c for c in present if may_reuse(holdings.get(c, ()), manifest.sender_org)}
        self.active[manifest_id] = signed
        if only_from is not None:
            self._only_from[manifest_id] = only_from
        by_uid = {r.sop_instance_uid: r for r in earlier}
        self._known[manifest_id] = {
            i: by_uid[e.sop_instance_uid] for i, e in enumerate(manifest.instances)
            if e.sop_instance_uid in by_uid and same_bytes(e, by_uid[e.sop_instance_uid])}
        self._orders[manifest_id] = order
        _remember(self._started, manifest_id, self.ctx.clock() if since is None else since)
        self._assembly[manifest_id] = assembly = InstanceAssembly(manifest, have)
        self._queue_ready(manifest_id, assembly)
        _remember(self._sender_of, manifest_id, manifest.sender_org)
        scheduler = self._schedulers.for_sender(manifest.sender_org)
        scheduler.add_manifest(manifest_id, [BlockWanted(c, sizes.get(c, ESTIMATED_BLOCK)) for c in wanted],
                               manifest.priority, have, self.ctx.clock())
        if holder is not None:
            relayed = self.link.relayed(holder)  # None: not connected (resumed; relayed to us): slow until known
            scheduler.peer_available(holder, manifest_id, order, relayed=True if relayed is None else relayed)
        self._discovery.add(manifest_id, trio.current_time())
        self._discover_now.set()
        self.ctx.wake()  # the first requests go out while the state below is written
        try:
            await self.ctx.db.run(lambda s: node_lifecycle.move(s, manifest_id, ManifestEvent.FETCH_STARTED))
        except LocalProtocolError as exc:  # recalled while the facts above were read
            self.stop(manifest_id)
            log.info("manifest %s not fetched: %s", manifest_id, exc)
            return
        log.info("fetching %s manifest %s: %d of %d blocks already on disk (%d more held, fetched again)",
                 manifest.priority.value, manifest_id, len(have), len(order), len(present) - len(have))

    def stop(self, manifest_id: CID) -> None:
        """Recall, cancel or done: stop fetching (blocks in flight are stored but ignored when they arrive)."""
        scheduler = self.scheduler_of(manifest_id)
        if self.active.pop(manifest_id, None) is not None and scheduler is not None:
            scheduler.remove_manifest(manifest_id)
        self._orders.pop(manifest_id, None)
        assembly = self._assembly.pop(manifest_id, None)
        if assembly is not None:
            self.retained.release(c for e in assembly.manifest.instances for c in e.blocks)
        self._known.pop(manifest_id, None)
        self._fetched.discard(manifest_id)
        self._dirty.discard(manifest_id)
        self._discovery.remove(manifest_id)
        self._relayed = {(m, p) for m, p in self._relayed if m != manifest_id}
        self._only_from.pop(manifest_id, None)

    def widen(self, manifest_id: CID) -> None:
        """A copy from siblings (`start(only_from=...)`) makes no progress: ask every holder from now on."""
        if self._only_from.pop(manifest_id, None) is not None:
            self._discovery.hurry(manifest_id, trio.current_time())
            self._discover_now.set()

    def started_at(self, manifest_id: CID) -> float | None:
        """When fetching this manifest started (this run of the node), for transfer-duration metrics."""
        return self._started.get(manifest_id)

    def peer_lost(self, peer_id: str) -> None:
        self._schedulers.peer_lost(peer_id, self.ctx.clock())
        self._discovery.hurry_all(trio.current_time())
        self._discover_now.set()

    # -- the loops ---------------------------------------------------------------------
    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.sink.run)
            nursery.start_soon(self._discover_loop)
            nursery.start_soon(self._verify_loop)
            nursery.start_soon(self._progress_loop)
            while True:
                changed = self.ctx.changed
                for scheduler in self._schedulers:
                    for request in scheduler.next_requests(self.ctx.clock()):
                        nursery.start_soon(self._request, scheduler, request)
                    for event in scheduler.events():
                        await self._event(event)
                with trio.move_on_after(TICK):
                    await changed.wait()

    async def _event(self, event: object) -> None:
        if isinstance(event, ManifestCompleted):
            if event.manifest_id in self.active:
                self._fetched.add(event.manifest_id)
                log.info("manifest %s: every block durable %.0f ms after the announcement", event.manifest_id,
                         1000 * (self.ctx.clock() - self._started.get(event.manifest_id, self.ctx.clock())))
                await self._maybe_finish(event.manifest_id)
        elif isinstance(event, PeerBanned):
            log.warning("peer %s banned from fetching: %s", event.peer, event.reason)
            await self.ctx.audit(AuditEvent(EventCode.SECURITY_ALERT, "peer-banned", AuditOutcome.SERIOUS_FAILURE,
                                            actor=event.peer, detail=event.reason[:300]))
        elif isinstance(event, BlockStalled):
            log.info("manifest %s: block %s has no known holder; looking for one", event.manifest_id, event.cid)
            self._discovery.hurry(event.manifest_id, trio.current_time())
            self._discover_now.set()

    async def _maybe_finish(self, manifest_id: CID) -> None:
        """Hand a manifest on once it is decided: every instance verified, or one failed."""
        signed = self.active.get(manifest_id)
        assembly = self._assembly.get(manifest_id)
        if signed is None or assembly is None or self._nursery is None:
            return
        if assembly.failure is not None:
            reason = assembly.failure
            self.stop(manifest_id)
            self._nursery.start_soon(self.on_failed, signed, reason)
        elif manifest_id in self._fetched and assembly.all_verified:
            await self._save_progress({manifest_id})
            records = assembly.ordered_records()
            seconds = self.ctx.clock() - self._started.get(manifest_id, self.ctx.clock())
            size = signed.document.total_bytes
            log.info("manifest %s: %d instance(s), %.1f MB verified %.0f ms after the announcement (%.0f MB/s)",
                     manifest_id, len(records), size / 1e6, 1000 * seconds, size / 1e6 / max(seconds, 1e-6))
            self.stop(manifest_id)
            self._nursery.start_soon(self.on_complete, signed, records)

    async def _discover_loop(self) -> None:
        """Ask for availability of each manifest when it is due (protocol.discovery: at once when its fetch
        starts or a block stalls, then backing off from the discovery interval up to its maximum)."""
        while True:
            self._discover_now = trio.Event()
            due = [m for m in self._discovery.take_due(trio.current_time()) if m in self.active]
            async with trio.open_nursery() as nursery:
                for manifest_id in due:
                    nursery.start_soon(self._discover, manifest_id, self.active[manifest_id].document)
            next_at = self._discovery.next_at()
            wait = self.settings.discovery_interval_max if next_at is None else next_at - trio.current_time()
            with trio.move_on_after(max(0.0, min(wait, self.settings.discovery_interval_max))):
                await self._discover_now.wait()

    async def _discover(self, manifest_id: CID, manifest: Manifest) -> None:
        """Ask the sender's org and every recipient org which blocks they hold (multi-source).

        Every org is resolved, and every node asked, concurrently: one slow or unreachable node
        (a dial can take DIAL_TIMEOUT) must not hold up hearing from the others.
        """
        orgs = {self.ctx.org} if manifest_id in self._only_from else {manifest.sender_org, *manifest.recipients}
        async with trio.open_nursery() as nursery:
            for org in sorted(orgs):
                nursery.start_soon(self._discover_org, manifest_id, org)

    async def _discover_org(self, manifest_id: CID, org: str) -> None:
        try:
            peers = await self.link.org_peers(org)
        except MeshError as exc:
            log.info("cannot resolve %s: %s", org, exc)
            return
        async with trio.open_nursery() as nursery:
            for peer in peers:
                nursery.start_soon(self._ask_holder, manifest_id, peer)

    async def _ask_holder(self, manifest_id: CID, peer: ResolvedPeer) -> None:
        only = self._only_from.get(manifest_id)
        if manifest_id not in self.active or (only is not None and peer.peer_id not in only):
            return
        try:
            await self.link.ensure(peer)
            bitmap = await self.link.have(peer.peer_id, manifest_id)
            order = self._orders.get(manifest_id)
            if order is None:  # completed or recalled meanwhile
                return
            held = held_blocks(order, bitmap)
        except UnauthorisedError:
            await self._relay(manifest_id, peer)
            return
        except MeshError as exc:
            log.info("no availability from %s: %s", peer.peer_id, exc)
            return
        log.debug("%s (%s) holds %d block(s) of %s", peer.peer_id, peer.org_code, len(held), manifest_id)
        scheduler = self.scheduler_of(manifest_id)
        if held and manifest_id in self.active and scheduler is not None:
            scheduler.peer_available(peer.peer_id, manifest_id, held, relayed=self.link.relayed(peer.peer_id))
            self.ctx.wake()

    async def _relay(self, manifest_id: CID, peer: ResolvedPeer) -> None:
        """A fellow recipient refused to say what it holds: most likely the sender's announcement has not
        reached it yet. Relay the sender's signed manifest to it, once per peer, so it can check it and
        answer (and start fetching) rather than wait."""
        signed = self.active.get(manifest_id)
        if (signed is None or peer.org_code == signed.document.sender_org
                or peer.org_code not in signed.document.recipients or (manifest_id, peer.peer_id) in self._relayed):
            return
        self._relayed.add((manifest_id, peer.peer_id))
        row = await self.ctx.db.run(lambda s: s.manifest(manifest_id))
        if row is None or not row.certificate:
            return
        try:
            await self.link.announce(peer.peer_id, row.raw, row.certificate)
            log.info("relayed manifest %s to fellow recipient %s (%s)", manifest_id, peer.peer_id, peer.org_code)
            self._discover_now.set()
        except MeshError as exc:
            log.info("relaying manifest %s to %s: %s", manifest_id, peer.peer_id, exc)

    async def _request(self, scheduler: FetchScheduler, request: Request) -> None:
        absent: list[CID] = []
        answered: set[CID] = set()
        try:
            try:
                await self.link.ensure_peer_id(request.peer)
            except MeshError as exc:
                # Unreachable: forget what it holds until discovery finds it again (no retry storm).
                log.info("holder %s unreachable: %s", request.peer, exc)
                scheduler.peer_lost(request.peer, self.ctx.clock())
                self.ctx.wake()
                return
            self._path(request.peer)
            async for frame in self.link.fetch_blocks(request.peer, BlockRequest(request.manifest_id, request.cids)):
                if isinstance(frame, BlockData):
                    answered.add(frame.cid)
                    await self.sink.put(Arrival(request.peer, request.manifest_id, frame.cid, frame.data))
                elif isinstance(frame, BlockAbsent):
                    answered.add(frame.cid)
                    absent.append(frame.cid)
                elif isinstance(frame, Refused):
                    answered.update(request.cids)
                    absent.extend(request.cids)
        except MeshError as exc:
            log.info("block request to %s failed: %s", request.peer, exc)
        finally:
            # Blocks handed to the sink are reported when durable; the rest is settled now.
            now = self.ctx.clock()
            for cid in absent:
                scheduler.block_absent(request.peer, cid, now)
            unanswered = [c for c in request.cids if c not in answered]
            if unanswered:
                scheduler.request_failed(request.peer, unanswered, now)
            self._path(request.peer)
            self.ctx.wake()

    def _path(self, peer: str) -> None:
        """Tell the schedulers whether the peer is reached through a relay now (a relayed connection upgraded to
        direct by hole punching, or a direct one replaced by a relayed one), before their next requests."""
        self._schedulers.set_relayed(peer, self.link.relayed(peer))  # None (not connected): the last path kept

    async def _settled(self, settled: list[Settled]) -> None:
        """A commit round of the sink: tell the scheduler, and queue instances that are now complete."""
        now = self.ctx.clock()
        durable: list[CID] = []
        for s in settled:
            # the scheduler of the manifest the block was asked for under (none: stopped long ago)
            scheduler = self.scheduler_of(s.manifest_id)
            if s.outcome is Outcome.DURABLE:
                if scheduler is not None:
                    scheduler.block_received(s.peer, s.cid, True, now)
                durable.append(s.cid)
                if s.data is not None and any(a.needs(s.cid) for a in self._assembly.values()):
                    self.retained.keep(s.cid, s.data)
                self.ctx.count_received(s.peer, [(s.cid, s.size)])  # metrics
            elif s.outcome is Outcome.CORRUPT:
                if scheduler is not None:
                    scheduler.block_received(s.peer, s.cid, False, now)
                await self.ctx.audit(AuditEvent(
                    EventCode.SECURITY_ALERT, "corrupt-block", AuditOutcome.SERIOUS_FAILURE, actor=s.peer,
                    manifest_id=str(s.manifest_id), detail=f"block {s.cid} failed its hash check"))
            elif scheduler is not None:
                scheduler.request_failed(s.peer, [s.cid], now)
        if durable:
            for manifest_id, assembly in self._assembly.items():
                assembly.durable(durable)
                self._queue_ready(manifest_id, assembly)
        self._dirty.update(m for m in {s.manifest_id for s in settled} if m in self.active)
        self.ctx.wake()

    # -- verification --------------------------------------------------------------------
    def _queue_ready(self, manifest_id: CID, assembly: InstanceAssembly) -> None:
        ready = assembly.take_ready()
        if ready:
            self._to_verify.extend((manifest_id, i) for i in ready)
            self._verify_wake.set()

    async def _verify_loop(self) -> None:
        limiter = trio.CapacityLimiter(1)
        while True:
            if not self._to_verify:
                self._verify_wake = trio.Event()
                await self._verify_wake.wait()
            # a few instances per round, so the first of a study that is all on disk at once (a resumed
            # or re-announced transfer) is usable long before the last, and other manifests get a turn
            batch, self._to_verify = self._to_verify[:VERIFY_BATCH], self._to_verify[VERIFY_BATCH:]
            by_manifest: dict[CID, list[int]] = {}
            for manifest_id, index in batch:
                by_manifest.setdefault(manifest_id, []).append(index)
            for manifest_id, indices in by_manifest.items():
                assembly = self._assembly.get(manifest_id)
                if assembly is None:
                    continue
                known = self._known.get(manifest_id, {})
                used = [c for i in indices for c in assembly.manifest.instances[i].blocks]
                retained = {c: data for c in used if (data := self.retained.get(c)) is not None}
                try:
                    results = await self.ctx.worker.run(
                        partial(self._verify, assembly.manifest, indices, known, retained), limiter)
                finally:
                    self.retained.release(used)
                for index, outcome in results:
                    if isinstance(outcome, str):
                        assembly.failed(outcome)
                    else:
                        assembly.verified(index, outcome)
                if assembly.all_verified and assembly.failure is None:
                    try:  # the summary against what the verified instances make up: cheap, no I/O
                        check_summary(assembly.manifest, assembly.ordered_records())
                    except MeshError as exc:
                        assembly.failed(str(exc))
                started = self._started.get(manifest_id)
                if 0 in assembly.records and manifest_id not in self.first_usable and started is not None:
                    _remember(self.first_usable, manifest_id, self.ctx.clock() - started)
                    log.info("manifest %s: first instance usable after %.0f ms", manifest_id,
                             1000 * self.first_usable[manifest_id])
                await self._maybe_finish(manifest_id)

    def _verify(self, manifest: Manifest, indices: list[int], known: dict[int, InstanceRecord],
                retained: dict[CID, bytes]) -> list[tuple[int, InstanceRecord | str]]:
        """Worker thread: verify instances whose blocks (each checked on arrival) are all durable, from the
        bytes retained as they arrived where there are some (meshnode.node.retained), else from disk."""
        out: list[tuple[int, InstanceRecord | str]] = []
        for index in indices:
            try:
                out.append((index, verify_instance(self.ctx.storage.blocks, manifest, index, check_blocks=False,
                                                   known=known.get(index), retained=retained)))
            except MeshError as exc:
                out.append((index, str(exc)))
                break
        return out

    # -- progress --------------------------------------------------------------------------
    async def _progress_loop(self) -> None:
        while True:
            await trio.sleep(PROGRESS_INTERVAL)
            dirty, self._dirty = self._dirty, set()
            if log.isEnabledFor(logging.DEBUG):
                for org, sched in self._schedulers.items():
                    for peer in {r for r in sched.in_flight().values()}:
                        log.debug("%s's manifests, peer %s: window %s, effective %s, in flight %d; sink pending %d"
                                  " bytes, %d rounds", org, peer, sched.window(peer), sched.effective_window(peer),
                                  sched.in_flight_count(peer), self.sink.pending_bytes, self.sink.rounds)
            if dirty:
                await self._save_progress(dirty)

    async def _save_progress(self, manifest_ids: set[CID]) -> None:
        """Progress. (Blocks served per peer are counted with the blocks themselves, as they become durable.)"""
        rows = [(m, sched.progress(m)) for m in manifest_ids
                if m in self.active and (sched := self.scheduler_of(m)) is not None]
        ms = int(self.ctx.clock() * 1000)

        def save(store: MetadataStore) -> None:
            for manifest_id, progress in rows:
                store.set_transfer(manifest_id, ManifestState.FETCHING, progress.blocks_done, progress.bytes_done, ms)

        if rows:
            await self.ctx.db.run(save)


def _remember(table: dict[CID, V], key: CID, value: V) -> None:
    """Set table[key], keeping only the REMEMBERED most recent entries (a node runs for months)."""
    table.pop(key, None)
    table[key] = value
    while len(table) > REMEMBERED:
        del table[next(iter(table))]


def _block_sizes(manifest: Manifest) -> dict[CID, int]:
    """Block sizes are not in the manifest; estimate them from instance sizes (progress only)."""
    sizes: dict[CID, int] = {}
    for instance in manifest.instances:
        n = len(instance.blocks)
        for cid in instance.blocks:
            sizes.setdefault(cid, max(1, instance.size // n))
    return sizes
