"""Run one replication (or one time slice of it): build the world, replay studies and faults, measure.

A run of duration D split into K slices: slice k reports the studies
arriving in [kD/K, (k+1)D/K). It starts `slice_overlap` earlier (with the
same studies and outages a single run would have, so queues and transfers in
progress at its boundary are rebuilt) and keeps simulating new arrivals for
`slice_overlap` after its window so its own last studies see realistic
competition; then it drains until its own transfers are resolved. Byte and
load series only count what happens inside the slice's own window, so the
slices of a run add up. K is part of the scenario (and of the manifest):
the same scenario, seed and K give the same bytes on any machine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from simulations.engine.attacks import Attacks
from simulations.engine.designs import Design, make_design
from simulations.engine.recorder import Counters, OutageStats, Record
from simulations.engine.state import Study
from simulations.engine.world import Window, World
from simulations.scenario.model import Scenario
from simulations.timeline import Change, Event, Timeline
from simulations.topology import build_topology
from simulations.workload import Studies, WorkloadModel

Progress = Callable[[float], None]


@dataclass
class ReplicationResult:
    """What one replication measured (simulations.results.merge adds its slices up)."""

    replication: int
    counters: Counters
    delivery: dict[tuple[int, int], list[int]]
    first_image: dict[tuple[int, int], list[int]]
    rows: list[Record]
    up: list[list[float]]
    down: list[list[float]]
    total_up: list[float]
    total_down: list[float]
    hub_in: list[float]
    hub_out: list[float]
    hub_images: list[float]
    images: list[float]
    hub_concurrency: list[int]
    hub_peak: int
    image_events: dict[int, int]
    outages: list[OutageStats]
    bans: list[tuple[float, str, str]]
    attack: dict[str, float]
    engine: dict[str, float]
    settings: dict[str, object] = field(default_factory=dict)
    #: delivery-time histograms per recipient organisation and per link class (recorder.LINK_CLASSES index)
    delivery_by_org: dict[int, list[int]] = field(default_factory=dict)
    delivery_by_link: dict[int, list[int]] = field(default_factory=dict)


@dataclass
class SliceResult(ReplicationResult):
    """The same measures for one time slice of a replication."""

    slice_no: int = field(kw_only=True)


def window_of(scenario: Scenario, slice_no: int) -> Window:
    k = scenario.engine.time_slices
    d = scenario.duration
    own_start, own_end = d * slice_no / k, d * (slice_no + 1) / k
    overlap = scenario.engine.slice_overlap if k > 1 else 0.0
    start = max(0.0, own_start - overlap)
    arrivals_end = d if slice_no == k - 1 else min(d, own_end + overlap)
    return Window(start, own_start, own_end, arrivals_end, d + scenario.engine.drain)


def run_slice(scenario: Scenario, replication: int, slice_no: int, progress: Progress | None = None,
              keep_rows: bool = True, trace: Studies | None = None) -> SliceResult:
    """Simulate one slice; `trace` replaces the scenario's generated workload with given studies."""
    topology = build_topology(scenario)
    timeline = Timeline(scenario, topology, replication)
    window = window_of(scenario, slice_no)
    world = World(scenario, topology, timeline, replication, window, keep_rows=keep_rows)
    design = make_design(world)
    attacks = Attacks(world, design)
    _schedule_timeline(world, timeline, design)
    q = world.queue
    heap = q._heap
    rec = world.recorder
    image_bytes = world.image_bytes
    model = WorkloadModel(scenario, topology)
    studies = 0
    span = max(1e-9, window.arrivals_end - window.start)
    if trace is None:
        batches: Iterable[Studies] = model.window(window.start, window.arrivals_end, replication)
    else:
        keep = (trace.time >= window.start) & (trace.time < window.arrivals_end)
        batches = [trace.take(keep)]
    for batch in batches:
        ids, times, senders = batch.id.tolist(), batch.time.tolist(), batch.sender.tolist()
        recips, mods, pris = batch.recipients.tolist(), batch.modality.tolist(), batch.priority.tolist()
        images, nbytes = batch.images.tolist(), batch.nbytes.tolist()
        own_start, own_end = window.own_start, window.own_end
        arrive = design.arrive
        for k in range(len(ids)):
            t = times[k]
            while heap and heap[0][0] <= t:
                q.pop_and_run()
            q.now = t
            m = mods[k]
            s = Study(ids[k], t, senders[k], [r for r in recips[k] if r >= 0], m, pris[k], images[k], nbytes[k],
                      image_bytes[m], own_start <= t < own_end)
            arrive(s, t)
        studies += len(ids)
        if progress is not None and len(ids):
            progress((times[-1] - window.start) / span)
    horizon = window.horizon
    while heap and heap[0][0] < horizon and (rec.own_open > 0 or heap[0][0] < window.arrivals_end):
        q.pop_and_run()
    end = min(horizon, max(q.now, window.arrivals_end))
    rec.finish(end)
    if progress is not None:
        progress(1.0)
    m = world.meter
    return SliceResult(
        replication=replication, slice_no=slice_no, counters=rec.c, delivery=rec.delivery,
        first_image=rec.first_image, rows=rec.rows, up=m.up, down=m.down, total_up=m.total_up,
        total_down=m.total_down, hub_in=m.hub_in, hub_out=m.hub_out, hub_images=m.hub_images, images=m.images,
        hub_concurrency=m.hub_concurrency, hub_peak=m.hub_peak, image_events=m.image_events, outages=rec.outages, bans=rec.bans,
        attack={"corrupt_blocks": rec.corrupt_blocks, "corrupt_bytes": rec.corrupt_bytes,
                "corrupt_accepted": rec.corrupt_accepted, "dropped_requests": rec.dropped_requests,
                "request_timeouts": rec.request_timeouts, "bogus_announced": attacks.bogus_sent,
                "bogus_fetched": rec.bogus_fetched, "bogus_bytes": rec.bogus_bytes, "fallbacks": rec.fallbacks},
        engine={"studies_simulated": studies, "flows": world.net.flows_started,
                "direct_fetches": getattr(getattr(design, "mesh", None), "direct_fetches", 0),
                "rate_recomputations": world.net.recomputations, "timer_compactions": world.net.compactions,
                "end_time": end, **_ha_counts(design)},
        settings=design.settings(), delivery_by_org=rec.delivery_by_org, delivery_by_link=rec.delivery_by_link,
    )


def _ha_counts(design: Design) -> dict[str, float]:
    """[ha] runs only (others' outputs stay as they were): sibling takeovers, and bytes of sibling copies made."""
    ha = getattr(getattr(design, "mesh", None), "ha", None)
    if ha is None:
        return {}
    return {"ha_takeovers": ha.takeovers, "ha_copy_bytes": ha.copy_bytes}


def _schedule_timeline(world: World, timeline: Timeline, design: Design) -> None:
    q = world.queue
    for ev in timeline.events(world.window.start, world.window.horizon):
        q.at(ev.time, _apply, (world, timeline, design, ev))


def _apply(arg: tuple[World, Timeline, Design, Event], now: float) -> None:
    world, timeline, design, ev = arg
    c = ev.change
    if c is Change.NODE_DOWN:
        design.node_down(ev.target, now)
    elif c is Change.NODE_UP:
        design.node_up(ev.target, now)
    elif c is Change.HUB_DOWN:
        world.hub_online = False
        design.hub_down(now)
    elif c is Change.HUB_UP:
        world.hub_online = True
        design.hub_up(now)
    elif c in (Change.DEGRADE, Change.RESTORE):
        d = timeline.degradations[ev.target]
        factor = d.factor if c is Change.DEGRADE else 1.0
        if d.target < 0:
            links = [world.hub_in, world.hub_out]
        else:
            o = world.orgs[d.target]
            links = {"up": [o.up_link], "down": [o.down_link]}.get(d.direction, [o.up_link, o.down_link])
        for link in links:
            world.net.set_capacity(link, link.nominal * factor)
    elif c in (Change.MEMBER_DOWN, Change.MEMBER_UP):
        ha = getattr(getattr(design, "mesh", None), "ha", None)
        if ha is not None:  # one node of an [ha] organisation (simulations/engine/org_nodes.py)
            ha.member(ev.target, ev.node, c is Change.MEMBER_UP, now)
    elif c is Change.PARTITION:
        world.partitions.append(timeline.partitions[ev.target])
        design.partition_changed(now, healed=False)
    elif c is Change.LEFT:
        design.left(ev.target, now)
    elif c is Change.JOINED:
        design.joined(ev.target, now)
    elif c is Change.HEAL:
        p = timeline.partitions[ev.target]
        world.partitions = [x for x in world.partitions if x is not p]
        design.partition_changed(now, healed=True)


__all__ = ["SliceResult", "Study", "run_slice", "window_of"]
