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

Each flow's completion is a timer on the shared event queue. A rate change
that makes a flow finish earlier pushes a new timer (and bumps the flow's
version, so the old one is skipped); one that makes it finish later keeps
the old timer, which on firing finds the flow unfinished and re-arms it. When
skipped timers pile up (a saturated hub link changes thousands of rates per
event), the queue is compacted.
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
    __slots__ = ("name", "capacity", "nominal", "flows", "load", "lazy", "saturated", "stamp", "index")

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
        self.stamp = 0  # marks of the current rate computation (see Network._component)
        self.index = -1

    def __repr__(self) -> str:
        return f"Link({self.name}, {self.capacity:g} B/s, {len(self.flows)} flows)"


FlowDone = Callable[["Flow", float], None]
MilestoneHit = Callable[["Flow", int, float], None]


class Flow:
    __slots__ = ("links", "size", "remaining", "rate", "t_last", "version", "cap", "on_done", "data", "active",
                 "milestones", "next_milestone", "on_milestone", "src", "dst", "images_per_byte", "started", "timer_at",
                 "m_t0", "m_bytes", "m_next", "stamp", "wake_marks")

    def __init__(self, links: tuple[Link, ...], size: float, cap: float, on_done: FlowDone, data: Any,
                 src: int, dst: int, images_per_byte: float) -> None:
        self.links = links
        self.size = size
        self.remaining = size
        self.rate = 0.0
        self.t_last = 0.0
        self.started = 0.0
        self.version = 0
        self.timer_at = math.inf  # when its live completion timer fires
        self.m_t0 = 0.0  # start of the stretch not yet reported to the meter, and its bytes
        self.m_bytes = 0.0
        self.m_next = 0.0  # the meter's next bin boundary after m_t0
        self.stamp = 0
        self.wake_marks = False  # milestones get timers of their own (else they are noticed when passed)
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
    def __init__(self, queue: EventQueue, meter: Meter | None = None, meter_bin: float = 60.0) -> None:
        self.queue = queue
        self.meter = meter
        self.meter_bin = meter_bin  # bytes reach the meter once per bin crossed (or at the end of a flow)
        self.flows_started = 0
        self.recomputations = 0
        self.stale_timers = 0
        self.compactions = 0
        self.compact_after = 50_000  # skipped timers tolerated before the queue is compacted

    # -- flows ------------------------------------------------------------------------
    def start(self, links: Iterable[Link], size: float, on_done: FlowDone, data: Any = None, *,
              cap: float = math.inf, src: int = -1, dst: int = -1, images_per_byte: float = 0.0,
              milestones: Sequence[float] = (), on_milestone: MilestoneHit | None = None,
              wake_on_milestones: bool = False) -> Flow:
        """Start moving `size` bytes over `links` now; `on_done(flow, t)` when the last byte is through."""
        now = self.queue.now
        flow = Flow(tuple(links), max(0.0, size), cap, on_done, data, src, dst, images_per_byte)
        flow.t_last = flow.started = flow.m_t0 = now
        flow.m_next = (math.floor(now / self.meter_bin) + 1) * self.meter_bin
        flow.active = True
        flow.milestones, flow.on_milestone = milestones, on_milestone
        flow.wake_marks = wake_on_milestones and bool(milestones)
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
        flow.timer_at = self._next_time(flow, now)
        self.queue.at(flow.timer_at, self._done, (flow, 1))
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
        if flow.remaining > _tolerance(flow, now) and flow.rate > 0:
            self._arm(flow, now, stale=False)  # a milestone, or it slowed down since this timer was set
            return
        if flow.next_milestone < len(flow.milestones):
            flow.remaining = 0.0
            self._hit_milestones(flow, flow.t_last, flow.size)
        flow.remaining = 0.0
        self._detach(flow)
        for link in flow.links:
            if link.flows and (not link.lazy or link.saturated):
                self._recompute(flow.links, now)
                break
        flow.on_done(flow, now)

    def _next_time(self, flow: Flow, now: float) -> float:
        """When the flow next needs attention: its end, or its next milestone if milestones wake it."""
        t = now + flow.remaining / flow.rate
        if flow.wake_marks and flow.next_milestone < len(flow.milestones):
            gap = flow.milestones[flow.next_milestone] - (flow.size - flow.remaining)
            t = min(t, now + max(0.0, gap) / flow.rate)
        return t

    def _arm(self, flow: Flow, now: float, stale: bool) -> None:
        flow.version += 1
        flow.timer_at = self._next_time(flow, now)
        self.queue.at(flow.timer_at, self._done, (flow, flow.version))
        if stale:
            self.stale_timers += 1
            if self.stale_timers > self.compact_after and self.stale_timers * 2 > len(self.queue):
                self.queue.compact(self._is_stale)
                self.stale_timers = 0
                self.compactions += 1

    def _is_stale(self, callback: object, arg: object) -> bool:
        if callback != self._done or not isinstance(arg, tuple):
            return False
        flow, version = arg
        return bool(version != flow.version or not flow.active)

    def _detach(self, flow: Flow) -> None:
        self._flush(flow, flow.t_last)
        flow.active = False
        flow.version += 1
        flow.timer_at = math.inf
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
                flow.m_bytes += moved
                if now >= flow.m_next:
                    self._flush(flow, now)
        flow.t_last = now

    def _flush(self, flow: Flow, now: float) -> None:
        """Report the bytes moved since m_t0, spread evenly over that stretch (within a bin, or across one)."""
        if self.meter is not None and flow.m_bytes > 0:
            self.meter.add(flow, flow.m_t0, now, flow.m_bytes)
        flow.m_t0 = now
        flow.m_bytes = 0.0
        flow.m_next = (math.floor(now / self.meter_bin) + 1) * self.meter_bin

    def _hit_milestones(self, flow: Flow, t0: float, done_before: float) -> None:
        done = flow.size - flow.remaining
        marks = flow.milestones
        tol = _tolerance(flow, flow.t_last)
        while flow.next_milestone < len(marks) and marks[flow.next_milestone] <= done + tol:
            mark = marks[flow.next_milestone]
            at = t0 + max(0.0, mark - done_before) / flow.rate if flow.rate > 0 else t0
            if flow.on_milestone is not None:
                flow.on_milestone(flow, flow.next_milestone, at)
            flow.next_milestone += 1

    def _component(self, seeds: Iterable[Link], force: Link | None) -> tuple[list[Link], list[Flow], list[Link]]:
        """Links and flows coupled to `seeds` (lazy, unsaturated links do not couple), marked with a fresh stamp."""
        global _STAMP
        _STAMP += 1
        stamp = _STAMP
        links: list[Link] = []
        flows: list[Flow] = []
        lazy_seen: list[Link] = []
        stack = list(seeds)
        while stack:
            link = stack.pop()
            if link.stamp == stamp:
                continue
            link.stamp = stamp
            if link.lazy and not link.saturated and link is not force:
                link.index = -1
                lazy_seen.append(link)
                continue
            link.index = len(links)
            links.append(link)
            for flow in link.flows:
                if flow.stamp == stamp:
                    continue
                flow.stamp = stamp
                flows.append(flow)
                for other in flow.links:
                    if other.stamp != stamp:
                        stack.append(other)
        return links, flows, lazy_seen

    def _recompute(self, seeds: Iterable[Link], now: float, extra: Flow | None = None,
                   force: Link | None = None) -> None:
        self.recomputations += 1
        links, flows, lazy_seen = self._component(seeds, force)
        stamp = _STAMP
        if extra is not None and extra.active and extra.stamp != stamp:
            extra.stamp = stamp
            flows.append(extra)
        for flow in flows:
            for link in flow.links:
                if link.stamp != stamp:  # a lazy link reached only through the extra flow
                    link.stamp = stamp
                    link.index = -1
                    lazy_seen.append(link)
        rates = _fill(links, flows, stamp)
        for flow, rate in zip(flows, rates):
            old = flow.rate
            if abs(rate - old) <= EPS * max(old, 1.0) and flow.version > 0:
                continue
            self._advance(flow, now)
            for link in flow.links:
                if link.lazy:
                    link.load += rate - old
            flow.rate = rate
            if rate > 0 and self._next_time(flow, now) < flow.timer_at - EPS:
                self._arm(flow, now, stale=flow.timer_at < math.inf)
        for link in lazy_seen + [l for l in links if l.lazy]:
            if not link.saturated and link.load > link.capacity * (1 + 1e-9):
                link.saturated = True
                self._recompute((link,), now, force=link)
            elif link.saturated and link.load < link.capacity * (1 - 1e-7):
                link.saturated = False


def _fill(links: list[Link], flows: list[Flow], stamp: int) -> list[float]:
    """Max-min fair rates of `flows` under the capacities of `links` (and each flow's own cap).

    Progressive filling: repeatedly the link with the smallest fair share (remaining capacity over
    unfixed flows) fixes its flows at that share. Links must carry `stamp` and their `index` in `links`;
    lazy links outside `links` have index -1 and constrain nothing.
    """
    n = len(flows)
    if n == 0:
        return []
    nl = len(links)
    remaining = [l.capacity for l in links]
    count = [0] * nl
    members: list[list[int]] = [[] for _ in range(nl)]
    flow_links: list[list[int]] = []
    for fi, flow in enumerate(flows):
        mine = [l.index for l in flow.links if l.stamp == stamp and l.index >= 0]
        flow_links.append(mine)
        for li in mine:
            count[li] += 1
            members[li].append(fi)
    rate = [-1.0] * n
    heap = [(remaining[li] / count[li], li) for li in range(nl) if count[li]]
    heapq.heapify(heap)
    capped = sorted((f.cap, fi) for fi, f in enumerate(flows) if f.cap < math.inf)
    ci = 0
    fixed = 0
    dirty: dict[int, None] = {}
    while fixed < n:
        for li in dirty:  # shares that changed since the last pick: one fresh heap entry each
            if count[li]:
                heapq.heappush(heap, (remaining[li] / count[li], li))
        dirty.clear()
        while heap:
            share, li = heap[0]
            if count[li] and abs(share - remaining[li] / count[li]) <= 1e-12 * max(share, 1.0):
                break
            heapq.heappop(heap)
        while ci < len(capped) and rate[capped[ci][1]] >= 0:
            ci += 1
        link_share = heap[0][0] if heap else math.inf
        if ci < len(capped) and capped[ci][0] <= link_share:
            chosen, r = [capped[ci][1]], capped[ci][0]
            bottleneck = -1
        elif heap:
            r, bottleneck = heapq.heappop(heap)
            chosen = [fi for fi in members[bottleneck] if rate[fi] < 0]
            count[bottleneck] = 0
        else:
            for fi in range(n):  # unconstrained (only lazy links): run at the smallest link capacity
                if rate[fi] < 0:
                    rate[fi] = min((l.capacity for l in flows[fi].links), default=0.0)
                    fixed += 1
            break
        for fi in chosen:
            rate[fi] = r
            fixed += 1
            for li in flow_links[fi]:
                if li == bottleneck:
                    continue
                remaining[li] = max(0.0, remaining[li] - r)
                count[li] -= 1
                dirty[li] = None
    return rate


_STAMP = 0


def _tolerance(flow: Flow, now: float) -> float:
    """Bytes too few to matter: rounding, or less than the flow moves within the clock's resolution now."""
    return EPS * max(1.0, flow.size) + flow.rate * 1e-12 * max(1.0, now)
