"""The mesh design: every organisation's node announces, and recipients fetch blocks from any holder.

Each simulated node holds the node's own state machines from protocol/:
a `FetchScheduler` per sender org, as the node runs them
(protocol.fetch_schedulers: which block to ask which holder for,
priorities, AIMD windows, timeouts, bans), an `Outbox` (announce retries),
and each study's manifest lifecycle (protocol.lifecycle).
The engine only moves time and bytes: a scheduler `Request` becomes a
network flow from the holder to the requester after one round trip; as
each of its blocks arrives whole it is reported with `block_received` (a
corrupting attacker's blocks fail their hash check) and the scheduler is
asked for the next requests, as meshnode/node/fetcher.py does after each
commit round of its block sink.

Holders are discovered when the node's discovery loop asks for them: each
node runs the node's own `DiscoverySchedule` (protocol.discovery, with the
node's FetchSettings), keyed by the manifests it fetches: a manifest is asked
about when its fetch starts (or resumes after a restart), then after the
discovery interval, twice that, ... up to discovery_interval_max; at once
again when the scheduler reports a `BlockStalled` for it (`hurry`), and every
manifest at once when the node's roster drops a peer (`hurry_all`, as
meshnode/node/runtime.py calls fetcher.peer_lost). A holder that fails is
`peer_lost` in the scheduler (as the node's fetcher does on a failed dial or
stream) without hurrying. The engine keeps one timer per node, at the
schedule's `next_at()`, and asks about everything `take_due` returns.

What a holder holds: the announcer holds everything; other recipients of the
same study become holders of the blocks they have verified. As in the node,
nothing tells a recipient that a fellow recipient verified a block, that a
holder came back up, or that a partition healed: it learns each at that
manifest's next due discovery round (so late in a long fetch, up to
discovery_interval_max later). The hybrid design's hub is no holder the node
knows: a fetch that falls back to it, or learns the hub now stores its study,
asks at once (`hurry`), the hybrid design's own rule.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from protocol.access import Share, decide, servable
from protocol.cid import CID
from protocol.discovery import DiscoverySchedule
from protocol.errors import LocalProtocolError
from protocol.fetch_order import rotated, start_offset
from protocol.fetch import BlockStalled, BlockWanted, FetchScheduler, ManifestCompleted, PeerBanned, Request
from protocol.fetch_schedulers import FetchSchedulers
from protocol.lifecycle import ManifestEvent, ManifestState, Side, advance
from protocol.manifest import Priority
from protocol.outbox import DeliveryKey, DeliveryKind
from simulations import rng
from simulations.engine import wire_sizes
from simulations.engine.meter import HUB
from simulations.engine.network import Flow
from simulations.engine.outboxes import OutboxDriver
from simulations.engine.state import Status, Study, Transfer

if TYPE_CHECKING:
    from simulations.engine.mesh_design import Mesh
    from simulations.engine.world import World

log = logging.getLogger(__name__)

PRIORITY_BY_RANK = (Priority.STAT, Priority.URGENT, Priority.ROUTINE)


class Fetch:
    __slots__ = ("transfer", "study", "node", "done", "told", "last_progress", "hub_added",
                 "order", "first_blocks", "fallback_armed", "direct", "direct_request", "direct_at", "round_bytes")

    def __init__(self, transfer: Transfer, node: MeshNode, order: list[int], first_blocks: int) -> None:
        self.transfer = transfer
        self.study = transfer.study
        self.node = node
        self.done: list[bool] = [False] * len(self.study.cids)
        self.told: dict[int, int] = {}  # holder org -> blocks of study.held[org] reported (sender: -1 = all)
        self.last_progress = 0.0
        self.hub_added = False
        self.order = order
        self.first_blocks = first_blocks
        self.fallback_armed = False
        self.direct = False  # running without the scheduler knowing (see MeshNode.start_fetch)
        self.direct_request: RequestState | None = None
        self.direct_at = 0.0
        #: control bytes of one discovery round (an availability exchange with each recipient org)
        s = self.study
        self.round_bytes = len(s.recipients) * wire_sizes.have_exchange(s.images, s.image_bytes)


class RequestState:
    __slots__ = ("node", "sender", "request", "peer", "fetch", "sizes", "flow", "received", "marks")

    def __init__(self, node: MeshNode, sender: str, request: Request, peer: int, fetch: Fetch | None) -> None:
        self.node = node
        self.sender = sender  # the sender org whose scheduler issued the request
        self.request = request
        self.peer = peer
        self.fetch = fetch
        self.sizes: list[float] = []
        self.flow: Flow | None = None
        self.received = 0.0  # bytes of this request's blocks that have arrived whole
        self.marks: list[int] = []  # per flow milestone: the block (index into request.cids) it ends


def study_share(world: World, s: Study) -> Share:
    """A study's manifest as protocol.access sees it (cached on the study; live for the whole run: the
    model has no recall, and failures end a transfer rather than the manifest)."""
    share = s.access
    if share is None:
        share = s.access = Share(world.orgs[s.sender].code, frozenset(world.orgs[r].code for r in s.recipients),
                                 ManifestState.FETCHING, 2**62)
    return share


class MeshNode:
    def __init__(self, mesh: Mesh, org: int) -> None:
        self.mesh = mesh
        self.org = org
        self.code = mesh.world.orgs[org].code
        #: what protocol.fetch_order hashes for this node's place within its org's share: the node's peer ID;
        #: one node per org here, named by its code unless a caller names it (the node-vs-sim test does)
        self.name = self.code
        self.scheds: FetchSchedulers = mesh.new_schedulers()
        #: the schedulers that may have work (not idle when last pumped), and each sender's place in the
        #: order the node created its schedulers (pump visits them in that order, as it would all of them)
        self.busy: dict[str, FetchScheduler] = {}
        self.rank: dict[str, int] = {}
        self.fetches: dict[CID, Fetch] = {}
        #: (sender org, scheduler peer) -> active fetches of that sender's manifests the peer is registered for
        self.refs: dict[tuple[str, str], int] = {}
        self.inbound: dict[Flow, RequestState] = {}
        self.deferred: list[Study] = []  # shares that arrived while the node was down
        # the node's delivery policy (or the scenario's change of it); jitter drawn from this org's own stream
        world = mesh.world
        draws = rng.stream(world.scenario.seed, "deliveries", org, replication=world.replication)
        self.outbox = OutboxDriver(world.queue, self._attempt_announce, self._announce_gave_up,
                                   policy=world.scenario.design.delivery, uniform=lambda: float(draws.random()))
        self.pending: dict[DeliveryKey, Transfer] = {}
        self.direct: Fetch | None = None
        #: when each fetched manifest's holders are asked next: the node's schedule (protocol.discovery)
        self.discovery: DiscoverySchedule[CID] = mesh.new_discovery()
        self._wake_at = math.inf  # the discovery timer queued (one per node), and its token
        self._wake_token = 0

    # -- announcing (sender side) ---------------------------------------------------------
    def announce(self, t: Transfer, now: float) -> None:
        """Announce to one recipient org; failed attempts are retried by the node's Outbox."""
        s = t.study
        assert s.manifest_id is not None
        world = self.mesh.world
        if self.mesh.ha is not None and self.mesh.ha.hold_announce(t):
            return  # its [ha] signer is down: announced when it is back (org_nodes)
        if world.reachable(self.org, t.recipient):
            # A first attempt that succeeds: Outbox.add, due, succeeded, remove leave it as it was.
            t.attempts += 1
            t.control += wire_sizes.manifest_bytes(s.images, s.image_bytes)
            world.queue.after(world.one_way(self.org, t.recipient), self.mesh.announced, t)
            return
        key = DeliveryKey(DeliveryKind.ANNOUNCE, s.manifest_id, world.orgs[t.recipient].code)
        self.pending[key] = t
        self.outbox.outbox.add(key, now)
        self.outbox.run_due(now)

    def _attempt_announce(self, key: DeliveryKey, now: float) -> None:
        t = self.pending.get(key)
        world = self.mesh.world
        if t is None or t.resolved:
            self.outbox.forget(key)
            self.pending.pop(key, None)
            return
        if self.mesh.ha is not None and self.mesh.ha.hold_announce(t):
            self.outbox.forget(key)  # its [ha] signer is down: announced when it is back (org_nodes)
            del self.pending[key]
            return
        t.attempts += 1
        t.control += wire_sizes.manifest_bytes(t.study.images, t.study.image_bytes)
        r = world.orgs[t.recipient]
        if r.left:  # the study waited at a down sender while its recipient left: one cause, one reason
            self.outbox.forget(key)
            del self.pending[key]
            self.mesh._fail(t, now, "recipient left")
            return
        if r.revoked:
            self.outbox.failed(key, now, "wrong-organisation: recipient's certificate is revoked", permanent=True)
            return
        if not world.reachable(self.org, t.recipient):
            self.outbox.failed(key, now, "unavailable: no reachable node of " + r.code)
            return
        self.outbox.succeeded(key, now)
        del self.pending[key]
        world.queue.after(world.one_way(self.org, t.recipient), self.mesh.announced, t)

    def _announce_gave_up(self, key: DeliveryKey, now: float, error: str) -> None:
        t = self.pending.pop(key, None)
        if t is not None:
            self.mesh.world.recorder.resolve(t, Status.FAILED, now, "announce: " + error.split(":")[0])

    # -- fetching (recipient side) --------------------------------------------------------
    def sched(self, sender: str) -> FetchScheduler:
        """The scheduler of this sender org's manifests (the node's rule: protocol.fetch_schedulers); every
        call through here may give it work, so it is pumped until it is idle again."""
        sched = self.busy.get(sender)
        if sched is None:
            sched = self.busy[sender] = self.scheds.for_sender(sender)
            if sender not in self.rank:
                self.rank[sender] = len(self.rank)
        return sched

    def sched_to_ask(self, sender: str) -> FetchScheduler:
        """The same scheduler (created as sched() creates it, in the same order), for a caller that only asks it
        about a peer and may drop that peer (peer_lost): neither can give an idle scheduler work, so it is not
        marked busy."""
        sched = self.busy.get(sender)
        if sched is None:
            sched = self.scheds.for_sender(sender)
            if sender not in self.rank:
                self.rank[sender] = len(self.rank)
        return sched

    def sender_of(self, s: Study) -> str:
        return self.mesh.world.orgs[s.sender].code

    def start_fetch(self, t: Transfer, now: float) -> None:
        s = t.study
        assert s.manifest_id is not None
        if s.manifest_id in self.fetches:
            return
        t.state = advance(Side.RECIPIENT, t.state, ManifestEvent.FETCH_STARTED)
        n = len(s.cids)
        if n == 1:
            order, first = [0], 1
        else:
            first = s.per_image or min(n, max(1, math.ceil(s.image_bytes / s.sizes[0])))
            # the node's order (protocol.fetch_order): the k-th of n recipient orgs starts k/n of the way
            # through the rest (one node per org here, named by its org code)
            rest = list(range(first, n))
            codes = [self.mesh.world.orgs[r].code for r in s.recipients]
            order = rotated(list(range(first)), rest, start_offset(codes, self.code, self.name, len(rest)))
        f = Fetch(t, self, order, first)
        f.last_progress = now
        t.fetch_started = now
        mesh = self.mesh
        if self.direct is not None:
            self.materialise()
        idle = not self.fetches
        self.fetches[s.manifest_id] = f
        mesh.register_holder(s.sender, f)
        self.discovery.add(s.manifest_id, now)  # the node asks its holders when the fetch starts
        self.arm_discovery(now)
        if idle and mesh.can_go_direct(self, f):
            # The scheduler is empty and forgets idle peers, so for one study from one holder it would
            # issue exactly one request for all its blocks: issue it ourselves and tell the scheduler
            # only if something else happens before it ends (materialise), which then replays it.
            f.direct, f.direct_at = True, now
            self.direct = f
            request = Request(self.mesh.world.orgs[s.sender].code, s.manifest_id, s.cids)  # order is [0]
            mesh.issue(self, self.sender_of(s), request, now)
            return
        self._add_to_scheduler(f, now)
        self._tell(f, s.sender)
        mesh.arm_fallback(f)
        self.pump(now)

    def materialise(self) -> None:
        """Tell the scheduler about the fetch running directly, as if it had issued its request."""
        f = self.direct
        if f is None:
            return
        self.direct = None
        f.direct = False
        s = f.study
        assert s.manifest_id is not None and f.direct_request is not None
        at = f.direct_at
        self._add_to_scheduler(f, at)
        name = self.sender_of(s)
        sched = self.sched(name)
        sched.peer_available(name, s.manifest_id, list(s.cids), relayed=self.mesh.world.relayed(s.sender, self.org))
        self.refs[(name, name)] = self.refs.get((name, name), 0) + 1
        f.told[s.sender] = len(s.cids)
        requests = sched.next_requests(at)
        expected = f.direct_request.request
        if requests != [expected]:
            raise LocalProtocolError(f"scheduler replay issued {requests!r}, not {expected!r}")

    def _add_to_scheduler(self, f: Fetch, now: float) -> None:
        s = f.study
        assert s.manifest_id is not None
        wanted = [BlockWanted(s.cids[i], int(s.sizes[i])) for i in f.order]
        have = frozenset(s.cids[i] for i, d in enumerate(f.done) if d)
        self.sched(self.sender_of(s)).add_manifest(s.manifest_id, wanted, PRIORITY_BY_RANK[s.priority], have, now)

    def _tell(self, f: Fetch, holder: int) -> bool:
        """Report what `holder` has of f's study to the scheduler (if it may be asked now); True if it was news."""
        world = self.mesh.world
        s = f.study
        assert s.manifest_id is not None
        if holder == self.org or not world.reachable(holder, self.org):
            return False
        ha = self.mesh.ha
        if ha is not None and not ha.serves(holder, s):
            return False  # only a node of holder that is down holds it whole (simulations/engine/org_nodes.py)
        if holder == HUB:
            if not (s.hub_stored and f.hub_added):
                return False
            told, blocks = f.told.get(HUB, 0), list(range(len(s.cids)))
        else:
            # the node's own rule (protocol.access): a holder answers only a recipient of the manifest, with
            # the blocks it may serve under it: all of them at the sender, at a fellow recipient those it
            # fetched under this manifest (s.held: verified blocks of this study, from its sender or recipients)
            share = study_share(world, s)
            if not decide(share, world.orgs[self.org].code, 0).allowed:
                return False
            if servable(share, world.orgs[holder].code, obtained=False):
                told, blocks = f.told.get(holder, 0), list(range(len(s.cids)))
            else:
                told, blocks = f.told.get(holder, 0), s.held.get(holder, [])
        if told >= len(blocks):
            return False
        name = world.hub_code if holder == HUB else world.orgs[holder].code
        sender = self.sender_of(s)
        if told == 0:
            self.refs[(sender, name)] = self.refs.get((sender, name), 0) + 1
        # the path too, as the node's fetcher tells its scheduler (common.p2p.paths): a relayed holder is slower
        self.sched(sender).peer_available(name, s.manifest_id, [s.cids[i] for i in blocks[told:]],
                                          relayed=world.relayed(holder, self.org))
        f.told[holder] = len(blocks)
        return True

    # -- discovery: when the node asks holders what they hold (protocol.discovery) ----------
    def arm_discovery(self, at: float | None = None) -> None:
        """Queue this node's one discovery timer at the schedule's next_at() (if earlier than the queued one);
        `at`: a manifest was just made due then (add, hurry), so next_at() is no later (not scanned for)."""
        if at is None:
            at = self.discovery.next_at()
        if at is None or at >= self._wake_at:
            return
        self._wake_at = at
        self._wake_token += 1
        self.mesh.world.queue.at(at, self._discovery_due, self._wake_token)

    def hurry(self, manifest_id: CID | None, now: float) -> None:
        """The answer may have changed for this manifest: ask at once (the schedule's hurry)."""
        if manifest_id is not None and manifest_id in self.discovery:
            self.discovery.hurry(manifest_id, now)
            self.arm_discovery(now)

    def hurry_all(self, now: float) -> None:
        """A peer was dropped (the node's fetcher.peer_lost): every manifest is asked about at once."""
        if len(self.discovery):
            self.discovery.hurry_all(now)
            self.arm_discovery(now)

    def _discovery_due(self, token: int, now: float) -> None:
        if token != self._wake_token:
            return  # superseded by an earlier timer, which has run
        self._wake_at = math.inf
        if not self.mesh.world.alive(self.org):
            return  # a node that is down has no fetcher (come_up builds a new schedule and timer)
        fetches = self.fetches
        asked = False
        for manifest_id in self.discovery.take_due(now):
            f = fetches.get(manifest_id)
            if f is not None and self._ask_holders(f):
                asked = True
        if asked:
            self.pump(now)
        self.arm_discovery()

    def _ask_holders(self, f: Fetch) -> bool:
        """One manifest's discovery round, without the pump; True if a holder was news to the scheduler (a round
        that tells it nothing new cannot change its next requests: no pump)."""
        s = f.study
        f.transfer.control += f.round_bytes
        if f.direct:
            # The fetch running directly asks its only holder (the announcer, which holds everything) for
            # everything already: the answer tells the scheduler nothing, so it stays direct.
            return False
        told, n = f.told, len(s.cids)
        news = told.get(s.sender, 0) < n and self._tell(f, s.sender)
        for holder in s.held:
            if told.get(holder, 0) < n and self._tell(f, holder):
                news = True
        if f.hub_added and self._tell(f, HUB):
            news = True
        return news

    def pump(self, now: float) -> None:
        """What meshnode's fetcher loop does on every wake: issue next requests, handle events."""
        busy = self.busy
        if not busy:
            return
        # Only schedulers that may have work: an idle one (FetchScheduler.idle) issues nothing and changes
        # nothing, so skipping it is exact; the others in the order the node iterates them (creation).
        if len(busy) == 1:
            todo = list(busy.items())
        else:
            rank = self.rank
            todo = sorted(busy.items(), key=lambda item: rank[item[0]])
        mesh = self.mesh
        for sender, sched in todo:
            for request in sched.next_requests(now):
                mesh.issue(self, sender, request, now)
            events = sched.events()
            if events:
                self._events(sender, sched, events, now)
        for sender, sched in todo:
            if sched.idle() and busy.get(sender) is sched:
                del busy[sender]

    def _events(self, sender: str, sched: FetchScheduler, events: Sequence[object], now: float) -> None:
        mesh = self.mesh
        for ev in events:
            if isinstance(ev, ManifestCompleted):
                f = self.fetches.pop(ev.manifest_id, None)
                if f is None:
                    continue
                sched.remove_manifest(ev.manifest_id)
                self.discovery.remove(ev.manifest_id)
                self._release_refs(f, now)
                mesh.completed(f, now)
            elif isinstance(ev, PeerBanned):  # banned from this sender's manifests (its scheduler's)
                mesh.world.recorder.bans.append((now, ev.peer, self.code))
                holder = mesh.index_of(ev.peer)
                for f in self.fetches.values():
                    if self.sender_of(f.study) == sender:
                        f.told.pop(holder, None)
                self.refs.pop((sender, ev.peer), None)
            elif isinstance(ev, BlockStalled):  # the node hurries this manifest's discovery
                f = self.fetches.get(ev.manifest_id)
                if f is not None:
                    self.hurry(ev.manifest_id, now)
                    mesh.arm_fallback(f)
        for request in sched.next_requests(now):
            mesh.issue(self, sender, request, now)

    def _release_refs(self, f: Fetch, now: float) -> None:
        sender = self.sender_of(f.study)
        sched = self.sched(sender)
        for holder in f.told:
            key = (sender, self.mesh.name_of(holder))
            left = self.refs.get(key, 0) - 1
            if left > 0:
                self.refs[key] = left
                continue
            self.refs.pop(key, None)
            if sched.in_flight_count(key[1]) == 0:
                sched.peer_lost(key[1], now)  # nothing left to ask it for: forget it (see docs)
        f.told.clear()

    def lost_peer(self, holder: int, now: float) -> None:
        name = self.mesh.name_of(holder)
        self.scheds.peer_lost(name, now)
        for key in [k for k in self.refs if k[1] == name]:
            del self.refs[key]
        for f in self.fetches.values():
            f.told.pop(holder, None)

    # -- the node goes down and comes back ------------------------------------------------
    def go_down(self, now: float) -> None:
        if self.direct is not None:
            self.direct.direct = False
            self.direct = None
        for flow, st in list(self.inbound.items()):
            self.mesh.abort_request(st, flow)
        self.inbound.clear()
        self.outbox.go_down()
        self.refs.clear()
        for f in self.fetches.values():
            f.told.clear()
        # the node's fetcher (and its schedule) stops; the queued timer finds nothing due
        self.discovery = self.mesh.new_discovery()
        self._wake_at = math.inf
        self._wake_token += 1

    def come_up(self, now: float) -> None:
        """A restarted node resumes every unfinished fetch from the blocks verified on disk."""
        self.scheds = self.mesh.new_schedulers()
        self.busy, self.rank = {}, {}
        self.discovery = self.mesh.new_discovery()
        for manifest_id, f in self.fetches.items():
            f.transfer.state = advance(Side.RECIPIENT, f.transfer.state, ManifestEvent.FETCH_STARTED)  # resumed
            self._add_to_scheduler(f, now)
            f.last_progress = now
            self.discovery.add(manifest_id, now)  # the restarted fetcher starts it again: asked at once
        self.arm_discovery()
        self.outbox.come_up(now)
        deferred, self.deferred = self.deferred, []
        for s in deferred:
            self.mesh.share(s, now)
