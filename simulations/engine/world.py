"""The simulated world of one run (or time slice): clock, network, organisations' state, faults.

Designs (mesh, hub, hybrid) act on it; the timeline and the attackers change
it. Nothing here reads a wall clock; every random draw comes from a named
stream.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.cid import CID
from simulations import rng
from simulations.engine.clock import EventQueue
from simulations.engine.meter import HUB, Meter
from simulations.engine.network import Link, Network
from simulations.engine.recorder import Recorder
from simulations.scenario.model import Scenario
from simulations.timeline import Partition, Timeline
from simulations.topology import Topology


class OrgState:
    __slots__ = ("index", "code", "up_link", "down_link", "latency", "online", "revoked", "left", "corrupt", "drop")

    def __init__(self, index: int, code: str, up: Link, down: Link, latency: float) -> None:
        self.index = index
        self.code = code
        self.up_link = up
        self.down_link = down
        self.latency = latency
        self.online = True
        self.revoked = False  # its certificate is revoked and every node has the new roster
        self.left = False  # revoked because it left (or has not joined yet): failures say "left"
        self.corrupt = 0.0  # probability that a block it serves is corrupt (attacker)
        self.drop = 0.0  # probability that it never answers a block request (attacker)


@dataclass(frozen=True)
class Window:
    """The stretch of simulated time a run (or slice) covers, and the part of it that it reports."""

    start: float  # simulation starts here (earlier than own_start by the slice overlap)
    own_start: float  # studies arriving in [own_start, own_end) are reported by this slice
    own_end: float
    arrivals_end: float  # no new studies after this
    horizon: float  # hard stop: duration + drain


class World:
    def __init__(self, scenario: Scenario, topology: Topology, timeline: Timeline, replication: int,
                 window: Window, *, keep_rows: bool) -> None:
        self.scenario = scenario
        self.topology = topology
        self.timeline = timeline
        self.replication = replication
        self.window = window
        self.queue = EventQueue(window.start)
        out = scenario.output
        self.meter = Meter(len(topology.orgs), window.horizon, out.timeseries_bin, out.hub_bin, window.own_start,
                           window.own_end if window.own_end < scenario.duration else window.horizon)
        self.net = Network(self.queue, self.meter, min(out.hub_bin, out.timeseries_bin))
        self.orgs = [OrgState(o.index, o.code, Link(f"{o.code}.up", o.up), Link(f"{o.code}.down", o.down),
                              o.latency) for o in topology.orgs]
        self.code_index = {o.code: o.index for o in self.orgs}
        hub = scenario.hub
        self.hub_in = Link("hub.in", hub.ingress, lazy=True)
        self.hub_out = Link("hub.out", hub.egress, lazy=True)
        self.hub_latency = hub.latency
        self.hub_online = True
        self.hub_code = hub.code
        self.partitions: list[Partition] = []
        # organisations behind NAT and the relay they are reached through (scenario [relay])
        relay = scenario.relay
        self.behind_nat = [o.code in relay.behind for o in self.orgs]
        self.relay_in = Link("relay.in", relay.bandwidth, lazy=True)
        self.relay_out = Link("relay.out", relay.bandwidth, lazy=True)
        self.relay_latency = relay.latency
        fair = [[min(a.up, b.down) for b in topology.orgs] for a in topology.orgs]
        self.recorder = Recorder(len(scenario.workload.modalities), scenario.warmup, out.record_fraction,
                                 keep_rows, timeline.outages(), fair)
        self.attack_rng = rng.stream(scenario.seed, "attackers", 0, replication=replication)
        self.image_bytes = [m.image_bytes for m in scenario.workload.modalities]

    # -- reachability -------------------------------------------------------------------
    def rtt(self, a: int, b: int) -> float:
        """Round trip between two organisations (HUB = -1 for the hub)."""
        la = self.hub_latency if a == HUB else self.orgs[a].latency
        lb = self.hub_latency if b == HUB else self.orgs[b].latency
        if self.relayed(a, b):
            return 2.0 * (la + lb + 2.0 * self.relay_latency)  # via the relay and back to the core, each way
        return 2.0 * (la + lb)

    def relayed(self, a: int, b: int) -> bool:
        """Whether the path between two organisations goes through the relay (either is behind NAT; the hub
        is public, and so are paths to it)."""
        return a >= 0 and b >= 0 and (self.behind_nat[a] or self.behind_nat[b])

    def one_way(self, a: int, b: int) -> float:
        return self.rtt(a, b) / 2.0

    def alive(self, org: int) -> bool:
        if org == HUB:
            return self.hub_online
        o = self.orgs[org]
        return o.online and not o.revoked

    def reachable(self, a: int, b: int) -> bool:
        """Both ends up (and not revoked) and no partition between them."""
        orgs = self.orgs
        if a >= 0:
            o = orgs[a]
            if not o.online or o.revoked:
                return False
        elif not self.hub_online:
            return False
        if b >= 0:
            o = orgs[b]
            if not o.online or o.revoked:
                return False
        elif not self.hub_online:
            return False
        if not self.partitions:
            return True
        for p in self.partitions:
            if _separates(p, a, b):
                return False
        return True

    @staticmethod
    def corrupted(cid: CID) -> bytes:
        """What a corrupting holder sends for block `cid`: bytes other than the block's. The engine models
        blocks by size, not content, so these stand in for them; the receiving node's check
        (protocol.exchange_messages.verify_block, the node's own) judges them like any other bytes."""
        return b"corrupted " + cid.to_bytes()

    def corrupts(self, org: int) -> bool:
        p = self.orgs[org].corrupt if org >= 0 else 0.0
        return p > 0 and (p >= 1.0 or float(self.attack_rng.random()) < p)

    def drops(self, org: int) -> bool:
        p = self.orgs[org].drop if org >= 0 else 0.0
        return p > 0 and (p >= 1.0 or float(self.attack_rng.random()) < p)

    def links(self, src: int, dst: int) -> tuple[Link, ...]:
        if src == HUB:
            return (self.hub_out, self.orgs[dst].down_link)
        if dst == HUB:
            return (self.orgs[src].up_link, self.hub_in)
        if self.relayed(src, dst):
            return (self.orgs[src].up_link, self.relay_in, self.relay_out, self.orgs[dst].down_link)
        return (self.orgs[src].up_link, self.orgs[dst].down_link)


def _separates(p: Partition, a: int, b: int) -> bool:
    if a < 0 or b < 0:
        return False
    if p.others is None:
        return (a in p.side) != (b in p.side)
    return (a in p.side and b in p.others) or (b in p.side and a in p.others)
