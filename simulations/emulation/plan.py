"""What an emulation replays: the scenario's first studies, re-timed, sized for real synthetic DICOM.

The same workload stream `meshsim run` draws (replication 0), cut to the
first `[emulation] studies` studies; arrivals are compressed to one every
`min_gap` seconds (a real day would take a day), images per study capped at
`max_images`, and each image generated at the modality's size (CT-like
16-bit slices; plain-film-like images above 2 MB). The emulated scenario
(`emulated_scenario`) is the one the model must be given to predict the
emulation: the same organisations with links scaled by `bandwidth_scale`,
no latency (none is emulated), the node's own 1 MiB blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from simulations.scenario.errors import ScenarioError
from simulations.scenario.model import DesignKind, Scenario
from simulations.scenario.overrides import REMOVE, apply
from simulations.topology import build_topology
from simulations.workload import PRIORITIES, Studies, WorkloadModel

TCP_GOODPUT = 1448 / 1514  # TCP payload per full Ethernet frame (timestamps on): what tbf's rate leaves for data


@dataclass(frozen=True)
class PlannedStudy:
    index: int
    at: float  # seconds after the replay starts
    sender: str
    recipients: tuple[str, ...]
    priority: str
    modality: str
    images: int
    kind: str  # meshnode generate --kind
    rows: int
    columns: int


def plan(scenario: Scenario) -> list[PlannedStudy]:
    if scenario.design.kind is not DesignKind.MESH:
        raise ScenarioError(f"design.kind: emulation runs real meshnode processes, i.e. the mesh; "
                            f"{scenario.design.kind.value!r} can only be simulated (meshsim run)")
    topology = build_topology(scenario)
    model = WorkloadModel(scenario, topology)
    e = scenario.emulation
    out: list[PlannedStudy] = []
    for batch in model.window(0.0, scenario.duration, 0):
        for k in range(len(batch)):
            if len(out) == e.studies:
                return out
            m = scenario.workload.modalities[int(batch.modality[k])]
            kind = "dx" if m.image_bytes > 2e6 else "ct"
            side = max(64, min(4096, int(math.sqrt(m.image_bytes / 2) // 16 * 16)))
            recips = tuple(topology.orgs[int(r)].code for r in batch.recipients[k] if r >= 0)
            out.append(PlannedStudy(len(out), len(out) * e.min_gap, topology.orgs[int(batch.sender[k])].code, recips,
                                    PRIORITIES[int(batch.priority[k])].value, m.name,
                                    int(min(e.max_images, batch.images[k])), kind, side, side))
    if not out:
        raise ScenarioError("workload: the scenario draws no studies to emulate")
    return out


def trace(scenario: Scenario, planned: list[PlannedStudy], arrivals: list[float], sizes: list[float]) -> Studies:
    """The replayed studies as a workload trace for the model: when they were shared, their real sizes."""
    index = build_topology(scenario).index
    modalities = [m.name for m in scenario.workload.modalities]
    width = max(len(p.recipients) for p in planned)
    recips = np.full((len(planned), width), -1, np.int32)
    for i, p in enumerate(planned):
        recips[i, :len(p.recipients)] = [index[c] for c in p.recipients]
    return Studies(np.arange(len(planned), dtype=np.int64), np.array(arrivals, dtype=float),
                   np.array([index[p.sender] for p in planned], dtype=np.int32), recips,
                   np.array([modalities.index(p.modality) for p in planned], dtype=np.int8),
                   np.array([[q.value for q in PRIORITIES].index(p.priority) for p in planned], dtype=np.int8),
                   np.array([p.images for p in planned], dtype=np.int32), np.array(sizes, dtype=float))


def emulated_scenario(scenario: Scenario, mode: str, span: float) -> Scenario:
    """The scenario as emulated: scaled links (goodput), no latency, real 1 MiB blocks, a trace's span; no faults,
    attackers or organisations behind NAT ([relay]: the emulated nodes reach each other directly); no per-organisation
    overrides or joins/leaves (every real node runs throughout, at its group's rates); one node per organisation
    ([ha])."""
    e = scenario.emulation
    values: list[tuple[str, object]] = [
        ("design.granularity", "1MiB"), ("scenario.duration", f"{max(60.0, span):.3f}s"), ("scenario.warmup", "0s"),
        ("scenario.replications", 1), ("engine.time_slices", 1), ("engine.drain", f"{e.timeout:.0f}s"),
        ("output.records", "csv"), ("output.record_fraction", 1.0), ("output.timeseries_bin", "10s"),
        ("output.hub_bin", "1s"), ("faults", []), ("attackers", []), ("relay", {}),  # real nodes: no relay (yet)
        ("ha", {}),  # one real node per organisation (without faults, [ha]'s nodes would only add sibling copies)
    ]
    goodput = TCP_GOODPUT if mode == "netns" else 1.0
    for i, g in enumerate(scenario.groups):
        up = g.up * e.bandwidth_scale * goodput
        down = g.down * e.bandwidth_scale * goodput if mode == "netns" else 1e12
        values += [(f"groups[{i}].up", f"{up:.3f}B/s"), (f"groups[{i}].down", f"{down:.3f}B/s"),
                   (f"groups[{i}].latency", "0.0001s"), (f"groups[{i}].bandwidth_spread", 0.0),
                   (f"groups[{i}].availability", {}),
                   # real nodes run throughout, at their group's rates (the trace already left out studies of
                   # organisations that were not members at the time)
                   (f"groups[{i}].overrides", []), (f"groups[{i}].joins", REMOVE), (f"groups[{i}].leaves", REMOVE)]
    return apply(scenario, values)
