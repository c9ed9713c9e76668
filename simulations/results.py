"""Merging time slices into one replication's result (sums, maxima, concatenations in slice order)."""

from __future__ import annotations

from typing import Any

from simulations.engine.recorder import Counters, OutageStats, Record
from simulations.engine.slice import ReplicationResult, SliceResult

__all__ = ["ReplicationResult", "merge"]


def _add_lists(a: list[float], b: list[float]) -> list[float]:
    return [x + y for x, y in zip(a, b)]


def _add_hists(a: dict[Any, list[int]], b: dict[Any, list[int]]) -> None:
    for key, hist in b.items():
        mine = a.get(key)
        a[key] = list(hist) if mine is None else [x + y for x, y in zip(mine, hist)]


def merge(slices: list[SliceResult]) -> ReplicationResult:
    slices = sorted(slices, key=lambda s: s.slice_no)
    first = slices[0]
    c = Counters()
    delivery: dict[tuple[int, int], list[int]] = {}
    first_image: dict[tuple[int, int], list[int]] = {}
    by_org: dict[int, list[int]] = {}
    by_link: dict[int, list[int]] = {}
    rows: list[Record] = []
    up = [list(x) for x in first.up]
    down = [list(x) for x in first.down]
    total_up, total_down = list(first.total_up), list(first.total_down)
    hub_in, hub_out, hub_images = list(first.hub_in), list(first.hub_out), list(first.hub_images)
    images = list(first.images)
    hub_conc = list(first.hub_concurrency)
    outages = [OutageStats(o.what, o.org, o.start, o.end, o.cause) for o in first.outages]
    bans: list[tuple[float, str, str]] = []
    image_events: dict[int, int] = {}
    attack: dict[str, float] = {}
    engine: dict[str, float] = {}
    for i, s in enumerate(slices):
        for name in ("transfers", "delivered", "failed", "in_flight", "warmup_excluded", "jain_n"):
            setattr(c, name, getattr(c, name) + getattr(s.counters, name))
        for name in ("bytes_delivered", "bytes_received", "wasted", "duplicate", "control", "from_sender",
                     "from_peers", "from_hub", "jain_sum", "jain_sq"):
            setattr(c, name, getattr(c, name) + getattr(s.counters, name))
        for reason, n in s.counters.reasons.items():
            c.reasons[reason] = c.reasons.get(reason, 0) + n
        _add_hists(delivery, s.delivery)
        _add_hists(first_image, s.first_image)
        _add_hists(by_org, s.delivery_by_org)
        _add_hists(by_link, s.delivery_by_link)
        rows.extend(s.rows)
        if i:
            up = [_add_lists(a, b) for a, b in zip(up, s.up)]
            down = [_add_lists(a, b) for a, b in zip(down, s.down)]
            total_up, total_down = _add_lists(total_up, s.total_up), _add_lists(total_down, s.total_down)
            hub_in, hub_out = _add_lists(hub_in, s.hub_in), _add_lists(hub_out, s.hub_out)
            hub_images = _add_lists(hub_images, s.hub_images)
            images = _add_lists(images, s.images)
            hub_conc = [max(a, b) for a, b in zip(hub_conc, s.hub_concurrency)]
        for mine, theirs in zip(outages, s.outages):
            mine.affected += theirs.affected
            mine.delivered += theirs.delivered
            mine.failed += theirs.failed
            mine.last_delivered = max(mine.last_delivered, theirs.last_delivered)
        bans.extend(s.bans)
        for second, n in s.image_events.items():
            image_events[second] = image_events.get(second, 0) + n
        for k, v in s.attack.items():
            attack[k] = attack.get(k, 0) + v
        for k, v in s.engine.items():
            engine[k] = max(engine.get(k, 0), v) if k == "end_time" else engine.get(k, 0) + v
    return ReplicationResult(first.replication, c, dict(sorted(delivery.items())), dict(sorted(first_image.items())),
                             rows, up, down, total_up, total_down, hub_in, hub_out, hub_images, images, hub_conc,
                             max(s.hub_peak for s in slices), dict(sorted(image_events.items())), outages, bans, attack, engine, first.settings,
                             delivery_by_org=dict(sorted(by_org.items())), delivery_by_link=dict(sorted(by_link.items())))
