"""The fault timeline: when each organisation's node and the hub are down, links degraded, orgs partitioned.

Random failures (exponential times between failures and to repair, from the
`faults` stream, one sub-stream per organisation), scheduled outages (weekly
or daily maintenance windows) and the scenario's explicit faults are merged
into one list of intervals per target, computed for the whole run, so every
time slice of a run sees the same outages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from simulations import rng
from simulations.scenario.model import Availability, FaultKind, Scenario
from simulations.topology import Topology

DAY = 86400.0
WEEK = 7 * DAY


class Change(str, Enum):
    NODE_DOWN = "node-down"
    NODE_UP = "node-up"
    HUB_DOWN = "hub-down"
    HUB_UP = "hub-up"
    DEGRADE = "degrade"  # payload: (target, direction, factor)
    RESTORE = "restore"
    PARTITION = "partition"  # payload: partition number
    HEAL = "heal"
    LEFT = "left"  # the organisation is not a member (before it joins: from the start; after it leaves)
    JOINED = "joined"
    MEMBER_DOWN = "member-down"  # one node of an [ha] organisation (Event.node); the org is down only when all are
    MEMBER_UP = "member-up"


@dataclass(frozen=True)
class Interval:
    start: float
    end: float
    cause: str


@dataclass(frozen=True)
class Degradation:
    start: float
    end: float
    target: int  # organisation index, -1 for the hub
    direction: str  # up | down | both
    factor: float


@dataclass(frozen=True)
class Partition:
    start: float
    end: float
    side: frozenset[int]
    others: frozenset[int] | None  # None: everyone not in side


@dataclass(frozen=True)
class Event:
    time: float
    change: Change
    target: int  # organisation index (-1: hub); partition / degradation number for those changes
    node: int = 0  # MEMBER_DOWN / MEMBER_UP: which node of the organisation


class Timeline:
    def __init__(self, scenario: Scenario, topology: Topology, replication: int) -> None:
        self.horizon = scenario.duration + scenario.engine.drain
        n = len(topology.orgs)
        self.node_down: list[list[Interval]] = []
        #: [ha] organisations: when each of its nodes is down (node_down: when all of them are). Node 0 draws from
        #: the organisation's own sub-stream, as a single node does; node k from the sub-stream (org, k).
        self.members: dict[int, list[list[Interval]]] = {}
        ha = scenario.ha
        for org in topology.orgs:
            g = rng.stream(scenario.seed, "faults", org.index, replication=replication)
            self.node_down.append(_availability(org.availability, self.horizon, g))
            if ha.nodes_of(org.code) > 1:
                self.members[org.index] = [self.node_down[-1]] + [
                    _availability(org.availability, self.horizon,
                                  rng.stream(scenario.seed, "faults", org.index, k, replication=replication))
                    for k in range(1, ha.nodes_of(org.code))]
        g = rng.stream(scenario.seed, "faults", n, replication=replication)
        self.hub_down = _availability(scenario.hub.availability, self.horizon, g)
        self.degradations: list[Degradation] = []
        self.partitions: list[Partition] = []
        extra: dict[int, list[Interval]] = {}
        for f in scenario.faults:
            end = f.start + f.duration
            if f.kind is FaultKind.NODE_FAILURE:
                for name in f.targets:
                    for i in topology.members(scenario, name):
                        if i in self.members:
                            for k, ivs in enumerate(self.members[i]):
                                if f.node is None or f.node == k:
                                    self.members[i][k] = _merge(ivs + [Interval(f.start, end, "fault")])
                        else:
                            extra.setdefault(i, []).append(Interval(f.start, end, "fault"))
            elif f.kind is FaultKind.HUB_OUTAGE:
                self.hub_down = _merge(self.hub_down + [Interval(f.start, end, "fault")])
            elif f.kind is FaultKind.LINK_DEGRADATION:
                for name in f.targets:
                    ids = [-1] if name in ("hub", scenario.hub.code) else topology.members(scenario, name)
                    for i in ids:
                        self.degradations.append(Degradation(f.start, end, i, f.direction, f.factor))
            elif f.kind is FaultKind.PARTITION:
                side = frozenset(i for name in f.targets for i in topology.members(scenario, name))
                others = (frozenset(i for name in f.others for i in topology.members(scenario, name))
                          if f.others else None)
                self.partitions.append(Partition(f.start, end, side, others))
        for i, intervals in extra.items():
            self.node_down[i] = _merge(self.node_down[i] + intervals)
        for i, nodes in self.members.items():
            self.node_down[i] = _all_down(nodes)
        # when each organisation is not a member: [0, joins) and [leaves, end of run); not outages
        self.absent: list[list[Interval]] = [
            ([Interval(0.0, org.joins, "not joined")] if org.joins > 0 else [])
            + ([Interval(org.leaves, math.inf, "left")] if math.isfinite(org.leaves) else [])
            for org in topology.orgs]

    def events(self, start: float, end: float) -> list[Event]:
        """Every change in [start, end), plus the state already in force at `start`, in time order."""
        out: list[Event] = []

        def add(t0: float, t1: float, on: Change, off: Change, target: int) -> None:
            if t1 <= start or t0 >= end:
                return
            out.append(Event(max(t0, start), on, target))
            if t1 < end:
                out.append(Event(t1, off, target))

        for org, intervals in enumerate(self.node_down):
            for iv in intervals:
                add(iv.start, iv.end, Change.NODE_DOWN, Change.NODE_UP, org)
        for org, nodes in self.members.items():
            for k, intervals in enumerate(nodes):
                for iv in intervals:
                    if iv.end > start and iv.start < end:
                        out.append(Event(max(iv.start, start), Change.MEMBER_DOWN, org, k))
                        if iv.end < end:
                            out.append(Event(iv.end, Change.MEMBER_UP, org, k))
        for iv in self.hub_down:
            add(iv.start, iv.end, Change.HUB_DOWN, Change.HUB_UP, -1)
        for k, d in enumerate(self.degradations):
            add(d.start, d.end, Change.DEGRADE, Change.RESTORE, k)
        for k, p in enumerate(self.partitions):
            add(p.start, p.end, Change.PARTITION, Change.HEAL, k)
        for org, intervals in enumerate(self.absent):
            for iv in intervals:
                add(iv.start, iv.end, Change.LEFT, Change.JOINED, org)
        order = {c: i for i, c in enumerate(Change)}
        out.sort(key=lambda e: (e.time, order[e.change], e.target, e.node))
        return out

    def outages(self) -> list[tuple[str, int, Interval]]:
        """Every node and hub outage: (what, organisation index or -1, interval)."""
        out = [("node", org, iv) for org, ivs in enumerate(self.node_down) for iv in ivs]
        out += [("hub", -1, iv) for iv in self.hub_down]
        return out


def _availability(a: Availability, horizon: float, g: object) -> list[Interval]:
    import numpy as np

    assert isinstance(g, np.random.Generator)
    out: list[Interval] = []
    if a.mtbf is not None:
        t = 0.0
        while True:
            t += float(g.exponential(a.mtbf))
            if t >= horizon:
                break
            repair = float(g.exponential(a.mttr))
            out.append(Interval(t, t + repair, "random"))
            t += repair
    for s in a.scheduled:
        period = DAY if s.day is None else WEEK
        first = s.start if s.day is None else s.day * DAY + s.start
        t = first
        while t < horizon:
            out.append(Interval(t, t + s.duration, "scheduled"))
            t += period
    return _merge(out)


def _all_down(nodes: list[list[Interval]]) -> list[Interval]:
    """When every node of an organisation is down at once (the intersection of their outages)."""
    common = nodes[0]
    for other in nodes[1:]:
        out: list[Interval] = []
        i = j = 0
        while i < len(common) and j < len(other):
            a, b = common[i], other[j]
            lo, hi = max(a.start, b.start), min(a.end, b.end)
            if lo < hi:
                out.append(Interval(lo, hi, a.cause if a.cause == b.cause else "mixed"))
            if a.end < b.end:
                i += 1
            else:
                j += 1
        common = out
    return common


def _merge(intervals: list[Interval]) -> list[Interval]:
    out: list[Interval] = []
    for iv in sorted(intervals, key=lambda i: (i.start, i.end)):
        if out and iv.start <= out[-1].end:
            last = out[-1]
            if iv.end > last.end:
                out[-1] = Interval(last.start, iv.end, last.cause if last.cause == iv.cause else "mixed")
        else:
            out.append(iv)
    return out
