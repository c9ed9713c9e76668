"""The mesh as a whole: shares, requests as flows, completions, faults; optionally the hub as fallback.

See simulations/engine/mesh.py for one node's part. In the hybrid design
every study is also uploaded to the hub (simulations/engine/hub.py), and a
fetch that makes no progress for `fallback_after` seconds adds the hub as a
holder (the hub announces on the sender's behalf if the sender never could).
"""

from __future__ import annotations

import dataclasses
import itertools

from protocol.cid import CID
from protocol.discovery import DiscoverySchedule
from protocol.exchange_messages import verify_block
from protocol.fetch import FetchScheduler, Request
from protocol.fetch_schedulers import FetchSchedulers
from protocol.fetch_settings import FetchSettings
from protocol.lifecycle import ManifestEvent, Side, advance
from simulations.engine import wire_sizes
from simulations.engine.hub import HubService
from simulations.engine.mesh import Fetch, MeshNode, RequestState
from simulations.engine.meter import HUB
from simulations.engine.network import Flow
from simulations.engine.org_nodes import OrgNodes
from simulations.engine.state import Status, Study, Transfer
from simulations.engine.world import World

TIMEOUT_MARGIN = 1e-6
FIRST_IMAGE = -1  # a request milestone that is not a block end: the first image's bytes are in


def scaled(node: FetchSettings, scale: float) -> FetchSettings:
    """The node's settings for scheduler blocks of `scale` node blocks each: block counts divided (at least a
    window of 2 and a request of 1), the request timeout stretched for the longer blocks."""
    window_initial = max(2, round(node.window_initial / scale))
    request_max_blocks = max(1, min(64, round(node.request_max_blocks / scale)))
    return dataclasses.replace(
        node, window_min=min(node.window_min, window_initial), window_initial=window_initial,
        window_max=max(window_initial, round(node.window_max / scale)), request_max_blocks=request_max_blocks,
        min_request_blocks=max(1, min(request_max_blocks, round(node.min_request_blocks / scale))),
        relayed_window_max=max(1, round(node.relayed_window_max / scale)),
        request_timeout=node.request_timeout * max(1.0, scale))


class Mesh:
    def __init__(self, world: World, hub: HubService | None = None) -> None:
        self.world = world
        self.hub = hub
        d = world.scenario.design
        scale = d.granularity / wire_sizes.REAL_BLOCK
        self.scale = scale
        self.settings = scaled(d.fetch, scale)
        self.request_timeout = self.settings.request_timeout
        self.fallback_after = d.fallback_after
        self.verify_rate = d.verify_rate
        self.direct_enabled = world.scenario.engine.idle_fast_path
        self.direct_fetches = 0
        self.nodes = [MeshNode(self, o.index) for o in world.orgs]
        self.serving: list[dict[Flow, RequestState]] = [{} for _ in world.orgs]  # flows each org is serving
        self.hub_serving: dict[Flow, RequestState] = {}
        self.can_serve: list[dict[Fetch, None]] = [{} for _ in world.orgs]  # fetches elsewhere an org holds for
        if hub is not None:
            hub.on_stored.append(self._hub_stored)
        #: several nodes per organisation (scenario [ha]): None without
        self.ha = OrgNodes(self) if world.timeline.members else None

    def scheduler_settings(self) -> dict[str, float | int | None]:
        """The settings every scheduler runs with (scaled to the granularity), for the run's manifest."""
        out = dataclasses.asdict(self.settings)
        del out["discovery_interval"]  # reported on its own
        return out

    def new_discovery(self) -> DiscoverySchedule[CID]:
        """A node's discovery schedule, built from the settings as meshnode/node/fetcher.py builds its own."""
        s = self.settings
        return DiscoverySchedule(s.discovery_interval, max(s.discovery_interval, s.discovery_interval_max))

    def new_schedulers(self) -> FetchSchedulers:
        """A node's schedulers, one per sender org, as the node runs them (protocol.fetch_schedulers)."""
        return FetchSchedulers(self.settings)

    def can_go_direct(self, node: MeshNode, f: Fetch) -> bool:
        """An idle node, one study from one ordinary holder it has no state about, in one request."""
        if not self.direct_enabled or self.hub is not None:
            return False
        s = f.study
        if len(s.recipients) != 1 or len(s.cids) != 1:
            return False
        world = self.world
        sender = world.orgs[s.sender]
        if sender.corrupt > 0 or sender.drop > 0 or not world.reachable(s.sender, node.org) or node.inbound:
            return False
        if self.ha is not None and not self.ha.serves(s.sender, s):
            return False
        sched = node.scheds.get(sender.code)
        return sched is None or (sched.window(sender.code) is None and sched.strikes(sender.code) == 0
                                 and not sched.in_flight())

    def name_of(self, holder: int) -> str:
        return self.world.hub_code if holder == HUB else self.world.orgs[holder].code

    def index_of(self, name: str) -> int:
        return HUB if name == self.world.hub_code else self.world.code_index[name]

    # -- studies ----------------------------------------------------------------------------
    def arrive(self, s: Study, now: float) -> None:
        """A study for these recipients reaches the sender's node (from its PACS)."""
        s.transfers = [Transfer(s, r) for r in s.recipients]
        self.world.recorder.open(s.transfers)
        self.share(s, now)

    def share(self, s: Study, now: float) -> None:
        """The sender's PACS hands the study to its node, which signs and announces the manifest."""
        world = self.world
        if not world.orgs[s.sender].online:
            self.nodes[s.sender].deferred.append(s)
            return
        s.shared_at = now
        # at the node's block size, the node's own blocks (per instance: header, then 1 MiB pixel chunks): the
        # scheduler counts blocks, not bytes, so its first request covers what the node's covers
        s.split(world.scenario.design.granularity, node_blocks=self.scale == 1.0)
        if world.orgs[s.sender].revoked:
            for t in s.transfers:
                self._fail(t, now, "sender revoked")
            return
        s.state = advance(Side.SENDER, None, ManifestEvent.SIGNED)
        if self.ha is not None:
            self.ha.signed_by(s, now)
        node = self.nodes[s.sender]
        for t in s.transfers:
            node.announce(t, now)
        if self.hub is not None and not s.bogus:
            self.hub.upload(s, now)

    def announced(self, t: Transfer, now: float) -> None:
        """The announce reached the recipient (it verifies and records the manifest, then fetches)."""
        world = self.world
        if t.resolved:
            return
        if not world.orgs[t.recipient].online:
            self.nodes[t.study.sender].announce(t, now)  # no Ack: the sender retries
            return
        if t.state is not None:
            return  # recorded already (the node acknowledges a repeated announcement and does nothing else)
        t.state = advance(Side.RECIPIENT, None, ManifestEvent.ACCEPTED)
        if t.announced_at < 0:
            t.announced_at = now
        if self.ha is not None and self.ha.defer_fetch(t, now):
            return  # the org's node ranked first to fetch it is down: a sibling takes over (org_nodes)
        self.nodes[t.recipient].start_fetch(t, now)

    def completed(self, f: Fetch, now: float) -> None:
        t = f.transfer
        s = f.study
        can_serve = self.can_serve
        can_serve[s.sender].pop(f, None)
        for holder in s.held:  # fellow recipients (org indices, never the hub)
            if holder >= 0:
                can_serve[holder].pop(f, None)
        if self.ha is not None:
            self.ha.fetched(f, now)
        done = now + (s.nbytes / self.verify_rate if self.verify_rate > 0 else 0.0)
        t.control += wire_sizes.RECEIPT + wire_sizes.block_traffic(s.nbytes, s.images, s.image_bytes,
                                                                   self.world.scenario.design.fetch.request_max_blocks)
        if done > now:
            self.world.queue.at(done, self._verified, t)
        else:
            self._verified(t, now)

    def _verified(self, t: Transfer, now: float) -> None:
        t.state = advance(Side.RECIPIENT, t.state, ManifestEvent.VERIFIED)
        # the receipt's bytes were counted at completion; its delivery is not modelled (it arrives)
        t.state = advance(Side.RECIPIENT, t.state, ManifestEvent.RECEIPT_DELIVERED)
        self.world.recorder.resolve(t, Status.DELIVERED, now)

    def _fail(self, t: Transfer, now: float, reason: str) -> None:
        self.world.recorder.resolve(t, Status.FAILED, now, reason)

    # -- holders ----------------------------------------------------------------------------
    def register_holder(self, holder: int, f: Fetch) -> None:
        if holder >= 0:
            self.can_serve[holder][f] = None

    def block_verified(self, f: Fetch, block: int, now: float) -> None:
        """f's node now holds this block: the other recipients learn it at their next discovery round (the
        node's schedule: nothing tells them sooner)."""
        s = f.study
        org = f.node.org
        held = s.held.get(org)
        if held is None:
            held = s.held[org] = []
        held.append(block)
        f.last_progress = now
        if len(s.transfers) > 1:
            for other in s.transfers:
                if other.recipient == org or other.resolved:
                    continue
                g = self.nodes[other.recipient].fetches.get(s.manifest_id) if s.manifest_id else None
                if g is not None:
                    self.can_serve[org][g] = None

    # -- requests as flows --------------------------------------------------------------------
    def issue(self, node: MeshNode, sender: str, request: Request, now: float) -> None:
        """`request`, from the scheduler of `sender`'s manifests at `node`, becomes a flow after a round trip."""
        world = self.world
        peer = self.index_of(request.peer)
        f = node.fetches.get(request.manifest_id)
        st = RequestState(node, sender, request, peer, f)
        if f is not None and f.direct:
            f.direct_request = st
            self.direct_fetches += 1
        if not world.reachable(peer, node.org) or (self.ha is not None and f is not None
                                                    and not self.ha.serves(peer, f.study)):
            # The dial fails: forget what it holds until discovery finds it again.
            node.sched(sender).request_failed(request.peer, list(request.cids), now)
            node.lost_peer(peer, now)
            world.queue.at(now, self._pump, node)
            return
        if world.drops(peer):
            world.recorder.dropped_requests += 1
            world.queue.at(now + self.request_timeout + TIMEOUT_MARGIN, self._expire, (node, sender, request))
            return
        world.queue.after(world.rtt(peer, node.org), self._activate, st)

    def _pump(self, node: MeshNode, now: float) -> None:
        if self.world.orgs[node.org].online:
            node.pump(now)

    def _expire(self, arg: tuple[MeshNode, str, Request], now: float) -> None:
        node, sender, request = arg
        if not self.world.orgs[node.org].online:
            return
        before = node.sched(sender).in_flight_count(request.peer)
        node.pump(now)
        if node.sched(sender).in_flight_count(request.peer) < before:
            self.world.recorder.request_timeouts += 1
        inflight = node.sched(sender).in_flight()
        if any(inflight.get(c) == request.peer for c in request.cids):
            self.world.queue.at(now + self.request_timeout + TIMEOUT_MARGIN, self._expire, arg)

    def _activate(self, st: RequestState, now: float) -> None:
        world = self.world
        node = st.node
        if not world.orgs[node.org].online:
            return
        if self.ha is not None and st.fetch is not None and self.ha.stopped(st.fetch):
            return  # asked by an [ha] node that failed during the round trip (its fetch is stopped)
        if not world.reachable(st.peer, node.org):
            node.sched(st.sender).request_failed(st.request.peer, list(st.request.cids), now)
            node.lost_peer(st.peer, now)
            node.pump(now)
            return
        fetch = st.fetch
        study = fetch.study if fetch is not None else None
        cids = st.request.cids
        if study is None:
            sizes = [0.0] * len(cids)
        elif len(cids) == len(study.cids) == 1:
            sizes = [study.sizes[0]]
        else:
            sizes = [study.sizes[int.from_bytes(cid.digest[9:13], "big")] for cid in cids]
        st.sizes = sizes
        ipb = study.images / study.nbytes if study is not None and study.nbytes > 0 else 0.0
        if len(sizes) == 1:
            total = sizes[0]
            marks = [total]
            st.marks = [0]
        else:
            total = sum(sizes)
            marks = list(itertools.accumulate(sizes))
            st.marks = list(range(len(cids)))
        if (fetch is not None and study is not None and self.scale > 1 and fetch.transfer.first_image_at < 0
                and int.from_bytes(cids[0].digest[9:13], "big") == 0 and study.image_bytes < sizes[0]):
            # An aggregated block stands for many of the node's 1 MiB blocks, each verified on arrival: the
            # first image is usable once its own bytes are in, not when the whole aggregated block is.
            marks.insert(0, study.image_bytes)
            st.marks.insert(0, FIRST_IMAGE)
        # Each block is reported to the scheduler as it arrives (the node reports blocks per commit round).
        flow = world.net.start(world.links(st.peer, node.org), total, self._request_done, st, src=st.peer,
                               dst=node.org, images_per_byte=ipb, milestones=marks, on_milestone=self._block_arrived,
                               wake_on_milestones=len(cids) > 1)
        st.flow = flow
        node.inbound[flow] = st
        if st.peer == HUB:
            self.hub_serving[flow] = st
            world.meter.hub_flow(+1, now)
        else:
            self.serving[st.peer][flow] = st

    def _detach(self, st: RequestState, flow: Flow) -> None:
        st.node.inbound.pop(flow, None)
        if st.peer == HUB:
            if self.hub_serving.pop(flow, None) is not None:
                self.world.meter.hub_flow(-1, self.world.queue.now)
        else:
            self.serving[st.peer].pop(flow, None)

    def _block_arrived(self, flow: Flow, mark: int, at: float) -> None:
        """Block k of a request has arrived whole: check it, tell the scheduler, ask for more."""
        st: RequestState = flow.data
        k = st.marks[mark]
        if k == FIRST_IMAGE:
            if st.fetch is not None and st.fetch.transfer.first_image_at < 0:
                st.fetch.transfer.first_image_at = at
            return
        node = st.node
        world = self.world
        cids = st.request.cids
        cid, size = cids[k], st.sizes[k]
        st.received += size
        fetch = st.fetch if st.fetch is not None and node.fetches.get(st.request.manifest_id) is st.fetch else None
        corrupt = world.corrupts(st.peer)
        # the node's check of a received block, on the bytes the holder sent (an honest holder's are the block)
        ok = not corrupt or verify_block(cid, world.corrupted(cid))
        if corrupt and ok:
            world.recorder.corrupt_accepted += 1  # taken for the block: counted as delivered from here on
        if fetch is not None and fetch.direct:
            if ok:
                self._direct_done(fetch, st, at)
                return
            node.materialise()
        t = fetch.transfer if fetch is not None else None
        if not ok:
            world.recorder.corrupt_blocks += 1
            world.recorder.corrupt_bytes += size
            if t is not None:
                t.wasted += size
        newly = node.sched(st.sender).block_received(st.request.peer, cid, ok, at)
        if ok and t is not None and fetch is not None:
            if newly:
                b = int.from_bytes(cid.digest[9:13], "big")
                if st.peer == t.study.sender:
                    t.from_sender += size
                elif st.peer == HUB:
                    t.from_hub += size
                else:
                    t.from_peers += size
                self._images_complete(fetch, b, at)
                self.block_verified(fetch, b, at)
            else:
                t.duplicate += size
        if k < len(cids) - 1:
            node.pump(at)

    def _images_complete(self, f: Fetch, b: int, at: float) -> None:
        """Block b is verified: the first image (and, with per-image events, each image) it completes."""
        f.done[b] = True
        s = f.study
        t = f.transfer
        if t.first_image_at < 0 and b < f.first_blocks and all(f.done[:f.first_blocks]):
            t.first_image_at = at
        if self.world.scenario.engine.per_image_events and s.per_image:
            per = s.per_image
            k = b // per
            if all(f.done[k * per:(k + 1) * per]):
                self.world.meter.image_done(at)
        elif self.world.scenario.engine.per_image_events and s.image_bytes > 0:
            bs = s.sizes[0]
            first = int(b * bs // s.image_bytes)
            last = min(s.images - 1, int(((b + 1) * bs - 1e-6) // s.image_bytes))
            for k in range(first, last + 1):
                lo, hi = int(k * s.image_bytes // bs), int(((k + 1) * s.image_bytes - 1e-6) // bs)
                if all(f.done[lo:min(hi, len(f.done) - 1) + 1]):
                    self.world.meter.image_done(at)

    def _request_done(self, flow: Flow, now: float) -> None:
        """Every block of the request has arrived (and was reported): forget an idle peer, ask for more."""
        st: RequestState = flow.data
        self._detach(st, flow)
        node = st.node
        sched = node.sched_to_ask(st.sender)  # a direct fetch's sender's scheduler stays idle: nothing to pump
        peer = st.request.peer
        if (st.sender, peer) not in node.refs and sched.in_flight_count(peer) == 0 and sched.window(peer) is not None:
            sched.peer_lost(peer, now)
        node.pump(now)

    def _direct_done(self, f: Fetch, st: RequestState, now: float) -> None:
        t = f.transfer
        node = f.node
        t.from_sender += st.sizes[0]
        self._images_complete(f, 0, now)
        self.block_verified(f, 0, now)
        assert t.study.manifest_id is not None
        del node.fetches[t.study.manifest_id]
        node.discovery.remove(t.study.manifest_id)
        node.direct = None
        f.direct = False
        self.completed(f, now)

    def abort_request(self, st: RequestState, flow: Flow) -> None:
        """The flow is cut (a failure at either end): its bytes are lost and its blocks requeued."""
        if st.fetch is not None and st.fetch.direct:
            st.node.materialise()
        moved = self.world.net.abort(flow)
        self._detach(st, flow)
        if st.fetch is not None:
            st.fetch.transfer.wasted += max(0.0, moved - st.received)

    # -- faults -----------------------------------------------------------------------------
    def node_down(self, org: int, now: float) -> None:
        world = self.world
        world.orgs[org].online = False
        self._cut_serving(org, now)
        self.nodes[org].go_down(now)

    def _cut_serving(self, org: int, now: float) -> None:
        requesters: dict[MeshNode, None] = {}
        for flow, st in list(self.serving[org].items()):
            self.abort_request(st, flow)
            st.node.sched(st.sender).request_failed(st.request.peer, list(st.request.cids), now)
            requesters[st.node] = None
        for node in requesters:
            node.lost_peer(org, now)
            node.pump(now)

    def node_up(self, org: int, now: float) -> None:
        world = self.world
        world.orgs[org].online = True
        if world.orgs[org].revoked:
            return
        self.nodes[org].come_up(now)
        # the fetches it can serve learn it is back at their next discovery round (as the node does)

    def partition_changed(self, now: float, healed: bool) -> None:
        """Cut every flow the partition separates; after a heal, each fetch finds the holders it can reach
        again at its next discovery round (nothing tells the node sooner)."""
        world = self.world
        if not healed:
            for org in range(len(world.orgs)):
                for flow, st in list(self.serving[org].items()):
                    if not world.reachable(org, st.node.org):
                        self.abort_request(st, flow)
                        st.node.sched(st.sender).request_failed(st.request.peer, list(st.request.cids), now)
                        st.node.lost_peer(org, now)
                        st.node.pump(now)

    def left(self, org: int, now: float) -> None:
        """org leaves the exchange (or has not joined yet): cut off as by a revocation, every transfer it is the
        recipient of and every announce of its own not yet delivered fails ("recipient left" / "sender left"),
        and so do other nodes' announces to it still waiting in their Outboxes. Fetches elsewhere of studies it
        sent continue from the other holders (co-recipients, the hub in hybrid), as after a revocation."""
        self.world.orgs[org].left = True
        self.revoked(org, now, "left")
        for node in self.nodes:
            for key, t in list(node.pending.items()):
                if t.recipient == org:
                    node.outbox.forget(key)
                    del node.pending[key]
                    self._fail(t, now, "recipient left")

    def joined(self, org: int, now: float) -> None:
        """org becomes a member: its node starts (unless a failure holds it down now)."""
        o = self.world.orgs[org]
        o.revoked = False
        o.left = False
        if o.online:
            self.nodes[org].come_up(now)

    def revoked(self, org: int, now: float, why: str = "revoked") -> None:
        """Every node has the roster that revokes org: it is cut off, and nothing it signs is accepted."""
        world = self.world
        world.orgs[org].revoked = True
        self._cut_serving(org, now)
        for other in self.nodes:  # each node's roster drops it: the node's fetcher.peer_lost hurries them all
            if other.org != org and world.alive(other.org):
                other.hurry_all(now)
        node = self.nodes[org]
        for f in list(node.fetches.values()):
            self._fail(f.transfer, now, "recipient " + why)
        node.go_down(now)
        node.fetches.clear()
        for key, t in list(node.pending.items()):
            node.outbox.forget(key)
            self._fail(t, now, "sender " + why)
        node.pending.clear()
        if why == "left":  # studies its PACS handed over while it was down will never be shared
            for s in node.deferred:
                for t in s.transfers:
                    self._fail(t, now, "sender left")
            node.deferred.clear()

    # -- hybrid: the hub as fallback --------------------------------------------------------
    def arm_fallback(self, f: Fetch) -> None:
        if self.hub is None or f.fallback_armed or f.hub_added:
            return
        f.fallback_armed = True
        self.world.queue.after(self.fallback_after, self._fallback_check, f)

    def _fallback_check(self, f: Fetch, now: float) -> None:
        f.fallback_armed = False
        node = f.node
        mid = f.study.manifest_id
        if mid is None or node.fetches.get(mid) is not f or f.hub_added:  # (not: a sibling's since a takeover)
            return
        if now - f.last_progress >= self.fallback_after - 1e-9:
            f.hub_added = True
            self.world.recorder.fallbacks += 1
            if self.world.alive(node.org):
                node.hurry(f.study.manifest_id, now)
        else:
            self.arm_fallback(f)

    def _hub_stored(self, s: Study, now: float) -> None:
        """The hub holds the whole study: fetches already falling back can use it, and stuck announces go out."""
        for t in s.transfers:
            if t.resolved:
                continue
            f = self.nodes[t.recipient].fetches.get(s.manifest_id) if s.manifest_id else None
            if f is not None and f.hub_added:
                f.node.hurry(s.manifest_id, now)
            elif f is None and t.announced_at < 0 and self.hub is not None:
                self.hub.relay_announce(t, now, self.fallback_after)

    def hub_announced(self, t: Transfer, now: float) -> None:
        """The hub delivered the announce on the sender's behalf: fetch, from the hub at once."""
        if t.resolved or not self.world.orgs[t.recipient].online:
            return
        node = self.nodes[t.recipient]
        if t.study.manifest_id in node.fetches or t.state is not None:
            return
        t.state = advance(Side.RECIPIENT, None, ManifestEvent.ACCEPTED)
        t.announced_at = now
        node.start_fetch(t, now)
        f = node.fetches.get(t.study.manifest_id) if t.study.manifest_id else None
        if f is not None and not f.hub_added:
            f.hub_added = True
            self.world.recorder.fallbacks += 1
            node.hurry(t.study.manifest_id, now)

    def hub_down(self, now: float) -> None:
        for flow, st in list(self.hub_serving.items()):
            self.abort_request(st, flow)
            st.node.sched(st.sender).request_failed(st.request.peer, list(st.request.cids), now)
            st.node.lost_peer(HUB, now)
            st.node.pump(now)

    def hub_up(self, now: float) -> None:
        """The hub is back: fetches falling back to it find it at their next discovery round."""
