"""Bytes over time: per organisation up and down, and the hub's load, in fixed time bins.

The network reports every stretch of a flow at constant rate; the bytes are
split across the bins that stretch covers, so a peak is not smeared by when
a long transfer happens to end. A time slice of a run only counts what
happens inside its own window, so the slices' series add up to the run's.
"""

from __future__ import annotations

import math

from simulations.engine.network import Flow

HUB = -1


class Meter:
    def __init__(self, orgs: int, horizon: float, bin_s: float, hub_bin_s: float, own_start: float,
                 own_end: float) -> None:
        self.bin = bin_s
        self.hub_bin = hub_bin_s
        self.own_start = own_start
        self.own_end = own_end
        self.nbins = max(1, math.ceil(horizon / bin_s))
        self.hub_nbins = max(1, math.ceil(horizon / hub_bin_s))
        self.up = [[0.0] * self.nbins for _ in range(orgs)]
        self.down = [[0.0] * self.nbins for _ in range(orgs)]
        self.hub_in = [0.0] * self.hub_nbins
        self.hub_out = [0.0] * self.hub_nbins
        self.hub_images = [0.0] * self.hub_nbins  # images into the hub
        self.hub_concurrency = [0] * self.hub_nbins
        self.images = [0.0] * self.hub_nbins  # images arriving at recipients, every design (system load)
        self.hub_active = 0
        self.hub_peak = 0
        self.total_up = [0.0] * orgs
        self.total_down = [0.0] * orgs
        self.image_events: dict[int, int] = {}  # second -> images completed at recipients (per-image events)

    def add(self, flow: Flow, t0: float, t1: float, nbytes: float) -> None:
        lo, hi = self.own_start, self.own_end
        if t1 <= lo or t0 >= hi:
            return
        if t0 < lo or t1 > hi:
            a, b = max(t0, lo), min(t1, hi)
            nbytes *= (b - a) / (t1 - t0)
            t0, t1 = a, b
        src, dst = flow.src, flow.dst
        if src >= 0:
            self.total_up[src] += nbytes
            _spread(self.up[src], self.bin, t0, t1, nbytes)
        if dst >= 0:
            self.total_down[dst] += nbytes
            _spread(self.down[dst], self.bin, t0, t1, nbytes)
            _spread(self.images, self.hub_bin, t0, t1, nbytes * flow.images_per_byte)
        if src == HUB:
            _spread(self.hub_out, self.hub_bin, t0, t1, nbytes)
        elif dst == HUB:
            _spread(self.hub_in, self.hub_bin, t0, t1, nbytes)
            _spread(self.hub_images, self.hub_bin, t0, t1, nbytes * flow.images_per_byte)

    def image_done(self, at: float) -> None:
        if self.own_start <= at < self.own_end:
            second = int(at)
            self.image_events[second] = self.image_events.get(second, 0) + 1

    def hub_flow(self, delta: int, now: float) -> None:
        """A hub transfer started (+1) or ended (-1)."""
        self.hub_active += delta
        if not self.own_start <= now < self.own_end:
            return
        k = min(int(now / self.hub_bin), self.hub_nbins - 1)
        if self.hub_active > self.hub_concurrency[k]:
            self.hub_concurrency[k] = self.hub_active
        self.hub_peak = max(self.hub_peak, self.hub_active)


def _spread(bins: list[float], width: float, t0: float, t1: float, nbytes: float) -> None:
    last = len(bins) - 1
    a, b = t0 / width, t1 / width
    i = int(a)
    if b <= a or int(b) == i or i >= last:
        bins[min(i, last)] += nbytes
        return
    per = nbytes / (b - a)
    added = 0.0
    k = i
    j = min(int(b), last)
    while k <= j:
        part = per * (min(b, k + 1.0) - max(a, float(k)))
        if part > 0:
            bins[k] += part
            added += part
        k += 1
    if nbytes - added > 0:
        bins[last] += nbytes - added
