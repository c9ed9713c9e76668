"""The trio driver of protocol.fetch.FetchScheduler: ask peers, verify, store, complete.

Blocks received in one response are staged as they arrive, made durable
together (one filesystem sync per response), recorded in one database hop,
and only then reported to the scheduler. A block whose hash does not match
its CID is never stored: the scheduler bans the peer and asks elsewhere.
After a restart, `resume` re-adds unfinished manifests with the blocks
already on disk, so nothing verified is fetched again.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable

import trio
from libp2p.peer.id import ID

from meshnode.node.context import NodeContext
from meshnode.node.receiver import block_order
from meshnode.node.sessions import Sessions
from meshnode.node.wire import Wire
from meshnode.p2p.dial import is_connected
from meshnode.storage.audit import AuditEvent, EventCode, Outcome
from meshnode.storage.blockstore import StagedBlock
from meshnode.storage.metadata import MetadataStore
from protocol.cid import CID
from protocol.document import Signed
from protocol.errors import MeshError
from protocol.exchange_messages import BlockAbsent, BlockData, BlockRequest, Refused, held_blocks
from protocol.fetch import BlockStalled, BlockWanted, FetchScheduler, ManifestCompleted, PeerBanned, Request
from protocol.manifest import Manifest

log = logging.getLogger(__name__)

DISCOVERY_INTERVAL = 0.5
TICK = 0.5
ESTIMATED_BLOCK = 1 << 20

CompletionHook = Callable[[Signed[Manifest]], Awaitable[None]]


class Fetcher:
    def __init__(self, ctx: NodeContext, wire: Wire, sessions: Sessions, on_complete: CompletionHook) -> None:
        self.ctx = ctx
        self.wire = wire
        self.sessions = sessions
        self.on_complete = on_complete
        self.scheduler = FetchScheduler(window_initial=32, window_max=128, request_max_blocks=4,
                                        request_timeout=float(ctx.config.request_timeout))
        self.active: dict[CID, Signed[Manifest]] = {}
        self._orders: dict[CID, list[CID]] = {}
        self._sizes: dict[CID, int] = {}
        self._started: dict[CID, float] = {}
        self._first_missing: dict[CID, set[CID]] = {}
        #: seconds from the start of fetching to the first instance being complete on disk
        self.first_usable: dict[CID, float] = {}

    # -- adding work ------------------------------------------------------------------
    async def start(self, signed: Signed[Manifest], holder: str | None = None) -> None:
        """Fetch everything of this manifest not verified on disk yet; `holder` has it all (the announcer)."""
        manifest_id = signed.cid
        if manifest_id in self.active:
            return
        manifest = signed.document
        order = block_order(manifest)
        wanted = fetch_order(manifest, order, self.ctx.peer_id)
        sizes = _block_sizes(manifest)
        have = await self.ctx.db.run(lambda s: s.present_blocks(order))
        self.active[manifest_id] = signed
        self._orders[manifest_id] = order
        self._started[manifest_id] = self.ctx.clock()
        self._first_missing[manifest_id] = set(manifest.instances[0].blocks) - set(have)
        self._sizes.update(sizes)
        self.scheduler.add_manifest(manifest_id, [BlockWanted(c, sizes.get(c, ESTIMATED_BLOCK)) for c in wanted],
                                    manifest.priority, have, self.ctx.clock())
        if holder is not None:
            self.scheduler.peer_available(holder, manifest_id, order)
        await self.ctx.db.run(lambda s: s.set_manifest_state(manifest_id, "fetching"))
        log.info("fetching %s manifest %s: %d of %d blocks already on disk", manifest.priority.value, manifest_id,
                 len(have), len(order))
        self.ctx.wake()

    def stop(self, manifest_id: CID) -> None:
        """Recall or cancel: stop fetching (blocks in flight are ignored when they arrive)."""
        if self.active.pop(manifest_id, None) is not None:
            self.scheduler.remove_manifest(manifest_id)
            self._orders.pop(manifest_id, None)

    def started_at(self, manifest_id: CID) -> float | None:
        """When fetching this manifest started (this run of the node), for transfer-duration metrics."""
        return self._started.get(manifest_id)

    def peer_lost(self, peer_id: str) -> None:
        self.scheduler.peer_lost(peer_id, self.ctx.clock())

    # -- the loops ---------------------------------------------------------------------
    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._discover_loop)
            while True:
                changed = self.ctx.changed
                for request in self.scheduler.next_requests(self.ctx.clock()):
                    nursery.start_soon(self._request, request)
                for event in self.scheduler.events():
                    await self._event(nursery, event)
                with trio.move_on_after(TICK):
                    await changed.wait()

    async def _event(self, nursery: trio.Nursery, event: object) -> None:
        if isinstance(event, ManifestCompleted):
            signed = self.active.get(event.manifest_id)
            if signed is not None:
                await self._save_progress(event.manifest_id, "verifying")
                self.stop(event.manifest_id)
                nursery.start_soon(self.on_complete, signed)
        elif isinstance(event, PeerBanned):
            log.warning("peer %s banned from fetching: %s", event.peer, event.reason)
            await self.ctx.audit(AuditEvent(EventCode.SECURITY_ALERT, "peer-banned", Outcome.SERIOUS_FAILURE,
                                            actor=event.peer, detail=event.reason[:300]))
        elif isinstance(event, BlockStalled):
            log.info("manifest %s: block %s has no known holder; looking for one", event.manifest_id, event.cid)

    async def _discover_loop(self) -> None:
        while True:
            for manifest_id, signed in list(self.active.items()):
                await self._discover(manifest_id, signed.document)
            await trio.sleep(DISCOVERY_INTERVAL)

    async def _discover(self, manifest_id: CID, manifest: Manifest) -> None:
        """Ask the sender's org and every recipient org which blocks they hold (multi-source)."""
        orgs = {manifest.sender_org, *manifest.recipients}
        for org in sorted(orgs):
            try:
                peers = await self.sessions.org_peers(org)
            except MeshError as exc:
                log.info("cannot resolve %s: %s", org, exc)
                continue
            for peer in peers:
                if manifest_id not in self.active:
                    return
                try:
                    await self.sessions.ensure(peer)
                    bitmap = await self.wire.have(peer.peer_id, manifest_id)
                    order = self._orders.get(manifest_id)
                    if order is None:  # completed or recalled meanwhile
                        return
                    held = held_blocks(order, bitmap)
                except MeshError as exc:
                    log.info("no availability from %s: %s", peer.peer_id, exc)
                    continue
                log.debug("%s (%s) holds %d block(s) of %s", peer.peer_id, peer.org_code, len(held), manifest_id)
                if held:
                    self.scheduler.peer_available(peer.peer_id, manifest_id, held)
                    self.ctx.wake()

    async def _request(self, request: Request) -> None:
        good: list[tuple[CID, bytes]] = []
        received: list[tuple[CID, int]] = []
        verdicts: list[tuple[CID, bool]] = []
        absent: list[CID] = []
        answered: set[CID] = set()
        try:
            if not is_connected(self.wire.host, ID.from_base58(request.peer)):
                try:
                    await self.sessions.ensure_peer_id(request.peer)
                except MeshError as exc:
                    # Unreachable: forget what it holds until discovery finds it again (no retry storm).
                    log.info("holder %s unreachable: %s", request.peer, exc)
                    self.scheduler.peer_lost(request.peer, self.ctx.clock())
                    self.ctx.wake()
                    return
            async for frame in self.wire.fetch_blocks(request.peer, BlockRequest(request.manifest_id, request.cids)):
                if isinstance(frame, BlockData):
                    answered.add(frame.cid)
                    if frame.cid.matches(frame.data):
                        good.append((frame.cid, frame.data))
                        received.append((frame.cid, len(frame.data)))
                        verdicts.append((frame.cid, True))
                    else:
                        verdicts.append((frame.cid, False))
                        await self.ctx.audit(AuditEvent(
                            EventCode.SECURITY_ALERT, "corrupt-block", Outcome.SERIOUS_FAILURE, actor=request.peer,
                            manifest_id=str(request.manifest_id), detail=f"block {frame.cid} failed its hash check"))
                elif isinstance(frame, BlockAbsent):
                    answered.add(frame.cid)
                    absent.append(frame.cid)
                elif isinstance(frame, Refused):
                    answered.update(request.cids)
                    absent.extend(request.cids)
        except MeshError as exc:
            log.info("block request to %s failed: %s", request.peer, exc)
        finally:
            with trio.CancelScope(shield=True):
                await self._settle(request, good, received, verdicts, absent, answered)

    async def _settle(self, request: Request, good: list[tuple[CID, bytes]], received: list[tuple[CID, int]],
                      verdicts: list[tuple[CID, bool]], absent: list[CID], answered: set[CID]) -> None:
        now = self.ctx.clock()
        if received:
            try:
                await trio.to_thread.run_sync(self._store, good)
                ms = int(now * 1000)
                await self.ctx.db.run(lambda s: s.record_blocks(received, ms))
                self.ctx.count_received(request.peer, received)  # metrics hook
            except MeshError as exc:
                log.error("cannot store received blocks: %s", exc)
                self.scheduler.request_failed(request.peer, list(request.cids), now)
                self.ctx.wake()
                return
        for cid, ok in verdicts:
            self.scheduler.block_received(request.peer, cid, ok, now)
        self._note_first_instance({cid for cid, ok in verdicts if ok}, now)
        for cid in absent:
            self.scheduler.block_absent(request.peer, cid, now)
        unanswered = [c for c in request.cids if c not in answered]
        if unanswered:
            self.scheduler.request_failed(request.peer, unanswered, now)
        if request.manifest_id in self.active:
            await self._save_progress(request.manifest_id, "fetching")
        self.ctx.wake()

    def _note_first_instance(self, arrived: set[CID], now: float) -> None:
        for mid, missing in list(self._first_missing.items()):
            missing -= arrived
            if not missing:
                del self._first_missing[mid]
                self.first_usable[mid] = now - self._started.get(mid, now)
                log.info("manifest %s: first instance usable after %.0f ms", mid, 1000 * self.first_usable[mid])

    def _store(self, good: list[tuple[CID, bytes]]) -> None:
        """Stage every verified block of one response and make them durable together (one thread hop)."""
        blocks = self.ctx.storage.blocks
        staged: list[StagedBlock] = []
        try:
            for cid, data in good:
                item = blocks.stage(data, cid)
                if item is not None:
                    staged.append(item)
        except BaseException:
            blocks.discard_staged(staged)
            raise
        blocks.commit_staged(staged)

    async def _save_progress(self, manifest_id: CID, state: str) -> None:
        progress = self.scheduler.progress(manifest_id) if manifest_id in self.active else None
        served = self.scheduler.served_by(manifest_id) if manifest_id in self.active else {}
        ms = int(self.ctx.clock() * 1000)

        def save(store: MetadataStore) -> None:
            previous = store.transfer(manifest_id)
            done = progress.blocks_done if progress else (previous[1] if previous else 0)
            done_bytes = progress.bytes_done if progress else (previous[2] if previous else 0)
            store.set_transfer(manifest_id, state, done, done_bytes, ms)
            if served:
                merged = store.served_by(manifest_id)
                for peer, n in served.items():
                    merged[peer] = max(merged.get(peer, 0), n)
                store.set_served_by(manifest_id, merged)

        await self.ctx.db.run(save)


def fetch_order(manifest: Manifest, order: list[CID], peer_id: str) -> list[CID]:
    """The first instance's blocks first (it is usable soonest), then the rest from a point that
    depends on this node, so recipients fetching together fetch different parts and serve each other."""
    first = [c for c in manifest.instances[0].blocks]
    rest = [c for c in order if c not in set(first)]
    if not rest:
        return order
    offset = int.from_bytes(hashlib.sha256(peer_id.encode()).digest()[:4], "big") % len(rest)
    return list(dict.fromkeys(first + rest[offset:] + rest[:offset]))


def _block_sizes(manifest: Manifest) -> dict[CID, int]:
    """Block sizes are not in the manifest; estimate them from instance sizes (progress only)."""
    sizes: dict[CID, int] = {}
    for instance in manifest.instances:
        n = len(instance.blocks)
        for cid in instance.blocks:
            sizes.setdefault(cid, max(1, instance.size // n))
    return sizes
