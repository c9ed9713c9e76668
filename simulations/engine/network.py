"""Flow-level network: links with capacities, flows sharing them max-min fairly, no packets.

A flow crosses a few links (the sender's access uplink, the receiver's
downlink, the hub's ingress or egress) and moves `size` bytes. Whenever a flow
starts, ends or a capacity changes, rates are recomputed by progressive
filling, but only over the *component* of flows coupled to the change through
shared links (incremental updates). Big shared links (the hub's) are *lazy*:
while the flows through one would not saturate it, it constrains nobody and
does not couple its flows, so a national hub does not make every update
global. When it would saturate, it couples its flows and is filled like any
other link; the allocation is the max-min fair one either way.

Each flow's completion is a timer on the shared event queue; a rate change
pushes a new timer and bumps the flow's version, so stale timers are skipped.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from simulations.engine.clock import EventQueue

EPS = 1e-9


class Meter(Protocol):
    def add(self, flow: Flow, t0: float, t1: float, nbytes: float) -> None: ...


class Link:
    __slots__ = ("name", "capacity", "nominal", "flows", "load", "lazy", "saturated")

    def __init__(self, name: str, capacity: float, lazy: bool = False) -> None:
        if not capacity > 0:
            raise ValueError(f"link {name}: capacity must be positive")
        self.name = name
        self.capacity = capacity
        self.nominal = capacity
        self.flows: dict[Flow, None] = {}
        self.load = 0.0  # sum of the rates of its flows (kept for lazy links)
        self.lazy = lazy
        self.saturated = False

    def __repr__(self) -> str:
        return f"Link({self.name}, {self.capacity:g} B/s, {len(self.flows)} flows)"


FlowDone = Callable[["Flow", float], None]
MilestoneHit = Callable[["Flow", int, float], None]


class Flow:
    __slots__ = ("links", "size", "remaining", "rate", "t_last", "version", "cap", "on_done", "data", "active",
                 "milestones", "next_milestone", "on_milestone", "src", "dst", "images_per_byte", "started")

    def __init__(self, links: tuple[Link, ...], size: float, cap: float, on_done: FlowDone, data: Any,
                 src: int, dst: int, images_per_byte: float) -> None:
        self.links = links
        self.size = size
        self.remaining = size
        self.rate = 0.0
        self.t_last = 0.0
        self.started = 0.0
        self.version = 0
        self.cap = cap
        self.on_done = on_done
        self.data = data
        self.active = False
        self.milestones: Sequence[float] = ()
        self.next_milestone = 0
        self.on_milestone: MilestoneHit | None = None
        self.src = src
        self.dst = dst
        self.images_per_byte = images_per_byte

    @property
    def moved(self) -> float:
        return self.size - self.remaining


class Network:
    def __init__(self, queue: EventQueue, meter: Meter | None = None) -> None:
        self.queue = queue
        self.meter = meter
        self.flows_started = 0
        self.recomputations = 0

    # -- flows ------------------------------------------------------------------------
    def start(self, links: Iterable[Link], size: float, on_done: FlowDone, data: Any = None, *,
              cap: float = math.inf, src: int = -1, dst: int = -1, images_per_byte: float = 0.0,
              milestones: Sequence[float] = (), on_milestone: MilestoneHit | None = None) -> Flow:
        """Start moving `size` bytes over `links` now; `on_done(flow, t)` when the last byte is through."""
        now = self.queue.now
        flow = Flow(tuple(links), max(0.0, size), cap, on_done, data, src, dst, images_per_byte)
        flow.t_last = flow.started = now
        flow.active = True
        flow.milestones, flow.on_milestone = milestones, on_milestone
        self.flows_started += 1
        if flow.size <= 0:
            flow.active = False
            self._hit_milestones(flow, now, 0.0)
            self.queue.at(now, self._finish_empty, flow)
            return flow
        alone = True
        for link in flow.links:
            if link.flows and (not link.lazy or link.saturated):
                alone = False
            link.flows[flow] = None
        if alone:
            self._start_alone(flow, now)
        else:
            self._recompute(flow.links, now, extra=flow)
        return flow

    def abort(self, flow: Flow) -> float:
        """Stop a flow (its peer failed); returns the bytes it had moved."""
        if not flow.active:
            return flow.moved
        now = self.queue.now
        self._advance(flow, now)
        self._detach(flow)
        for link in flow.links:
            if link.flows and (not link.lazy or link.saturated):
                self._recompute(flow.links, now)
                break
        return flow.moved

    def set_capacity(self, link: Link, capacity: float) -> None:
        if not capacity > 0:
            raise ValueError("capacity must be positive")
        link.capacity = capacity
        if link.flows:
            link.saturated = link.saturated or link.lazy
            self._recompute((link,), self.queue.now, force=link)

    # -- internals --------------------------------------------------------------------
    def _start_alone(self, flow: Flow, now: float) -> None:
        """Fast path: no other flow shares a constraining link, so the rate is the tightest capacity."""
        rate = flow.cap
        lazy = False
        for link in flow.links:
            if link.lazy:
                lazy = True
            elif link.capacity < rate:
                rate = link.capacity
        if rate == math.inf:
            rate = min(l.capacity for l in flow.links)
        flow.rate = rate
        flow.version = 1
        self.queue.at(now + flow.remaining / rate, self._done, (flow, 1))
        if lazy:
            for link in flow.links:
                if link.lazy:
                    link.load += rate
                    if link.load > link.capacity * (1 + 1e-9):
                        link.saturated = True
                        self._recompute((link,), now, force=link)

    def _finish_empty(self, flow: Flow, now: float) -> None:
        flow.on_done(flow, now)

    def _done(self, arg: tuple[Flow, int], now: float) -> None:
        flow, version = arg
        if version != flow.version or not flow.active:
            return
        self._advance(flow, now)
        flow.remaining = 0.0
        self._detach(flow)
        for link in flow.links:
            if link.flows and (not link.lazy or link.saturated):
                self._recompute(flow.links, now)
                break
        flow.on_done(flow, now)

    def _detach(self, flow: Flow) -> None:
        flow.active = False
        flow.version += 1
        for link in flow.links:
            del link.flows[flow]
            if link.lazy:
                link.load -= flow.rate
                if not link.flows:
                    link.load = 0.0
                    link.saturated = False
        flow.rate = 0.0

    def _advance(self, flow: Flow, now: float) -> None:
        dt = now - flow.t_last
        if dt > 0 and flow.rate > 0:
            moved = min(flow.remaining, flow.rate * dt)
            done_before = flow.size - flow.remaining
            flow.remaining -= moved
            if flow.milestones and flow.next_milestone < len(flow.milestones):
                self._hit_milestones(flow, flow.t_last, done_before)
            if self.meter is not None and moved > 0:
                self.meter.add(flow, flow.t_last, now, moved)
        flow.t_last = now

    def _hit_milestones(self, flow: Flow, t0: float, done_before: float) -> None:
        done = flow.size - flow.remaining
        marks = flow.milestones
        while flow.next_milestone < len(marks) and marks[flow.next_milestone] <= done + EPS * max(1.0, flow.size):
            mark = marks[flow.next_milestone]
            at = t0 + max(0.0, mark - done_before) / flow.rate if flow.rate > 0 else t0
            if flow.on_milestone is not None:
                flow.on_milestone(flow, flow.next_milestone, at)
            flow.next_milestone += 1

    def _component(self, seeds: Iterable[Link], force: Link | None) -> tuple[list[Link], list[Flow], list[Link]]:
        links: list[Link] = []
        flows: list[Flow] = []
        lazy_seen: list[Link] = []
        seen_links: set[int] = set()
        seen_flows: set[int] = set()
        stack = list(seeds)
        while stack:
            link = stack.pop()
            lid = id(link)
            if lid in seen_links:
                continue
            seen_links.add(lid)
            if link.lazy and not link.saturated and link is not force:
                lazy_seen.append(link)
                continue
            links.append(link)
            for flow in link.flows:
                fid = id(flow)
                if fid in seen_flows:
                    continue
                seen_flows.add(fid)
                flows.append(flow)
                for other in flow.links:
                    if id(other) not in seen_links:
                        stack.append(other)
        return links, flows, lazy_seen

    def _recompute(self, seeds: Iterable[Link], now: float, extra: Flow | None = None,
                   force: Link | None = None) -> None:
        self.recomputations += 1
        links, flows, lazy_seen = self._component(seeds, force)
        if extra is not None and extra.active and all(f is not extra for f in flows):
            flows.append(extra)
            for link in extra.links:
                if link.lazy and all(link is not l for l in lazy_seen):
                    lazy_seen.append(link)
        for flow in flows:
            for link in flow.links:
                if link.lazy and not link.saturated and all(link is not l for l in lazy_seen):
                    lazy_seen.append(link)
        rates = _fill(links, flows)
        for flow, rate in zip(flows, rates):
            old = flow.rate
            if abs(rate - old) <= EPS * max(old, 1.0) and flow.version > 0:
                continue
            self._advance(flow, now)
            for link in flow.links:
                if link.lazy:
                    link.load += rate - old
            flow.rate = rate
            flow.version += 1
            if rate > 0:
                self.queue.at(now + flow.remaining / rate, self._done, (flow, flow.version))  # type: ignore[arg-type]
        for link in lazy_seen + [l for l in links if l.lazy]:
            if not link.saturated and link.load > link.capacity * (1 + 1e-9):
                link.saturated = True
                self._recompute((link,), now, force=link)
            elif link.saturated and link.load < link.capacity * (1 - 1e-7):
                link.saturated = False


def _fill(links: list[Link], flows: list[Flow]) -> list[float]:
    """Max-min fair rates of `flows` under the capacities of `links` (and each flow's own cap)."""
    n = len(flows)
    if n == 0:
        return []
    index = {id(l): i for i, l in enumerate(links)}
    remaining = [l.capacity for l in links]
    count = [0] * len(links)
    members: list[list[int]] = [[] for _ in links]
    flow_links: list[list[int]] = []
    for fi, flow in enumerate(flows):
        mine = [index[id(l)] for l in flow.links if id(l) in index]
        flow_links.append(mine)
        for li in mine:
            count[li] += 1
            members[li].append(fi)
    rate = [-1.0] * n
    heap = [(remaining[li] / count[li], li) for li in range(len(links)) if count[li]]
    heapq.heapify(heap)
    capped = sorted((f.cap, fi) for fi, f in enumerate(flows) if f.cap < math.inf)
    ci = 0
    fixed = 0

    def fix(fi: int, r: float) -> None:
        rate[fi] = r
        for li in flow_links[fi]:
            remaining[li] = max(0.0, remaining[li] - r)
            count[li] -= 1
            if count[li]:
                heapq.heappush(heap, (remaining[li] / count[li], li))

    while fixed < n:
        while heap:
            share, li = heap[0]
            if count[li] and abs(share - remaining[li] / count[li]) <= 1e-12 * max(share, 1.0):
                break
            heapq.heappop(heap)
        while ci < len(capped) and rate[capped[ci][1]] >= 0:
            ci += 1
        link_share = heap[0][0] if heap else math.inf
        if ci < len(capped) and capped[ci][0] <= link_share:
            fix(capped[ci][1], capped[ci][0])
            fixed += 1
            continue
        if not heap:
            for fi in range(n):  # unconstrained (only lazy links): run at the smallest link capacity
                if rate[fi] < 0:
                    rate[fi] = min((l.capacity for l in flows[fi].links), default=0.0)
                    fixed += 1
            break
        share, li = heapq.heappop(heap)
        for fi in members[li]:
            if rate[fi] < 0:
                fix(fi, share)
                fixed += 1
        count[li] = 0
    return rate
