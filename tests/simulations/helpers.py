"""Small scenarios and hand-written workloads for the simulator's tests."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from simulations.scenario import Scenario, parse_scenario
from simulations.workload import Studies

TRIO = """
[scenario]
name = "trio"
duration = "{duration}"
seed = {seed}
replications = {replications}

[design]
kind = "{design}"
granularity = "{granularity}"

[[groups]]
name = "senders"
kind = "acute-trust"
codes = ["AAA"]
up = "{a_up}"
down = "1Gbit/s"
latency = "{latency}"

[[groups]]
name = "fast"
kind = "acute-trust"
codes = ["BBB"]
up = "1Gbit/s"
down = "{b_down}"
latency = "{latency}"
weight = 0

[[groups]]
name = "slow"
kind = "teleradiology"
codes = ["CCC"]
up = "1Gbit/s"
down = "{c_down}"
latency = "{latency}"
weight = 0

[hub]
ingress = "{hub_rate}"
egress = "{hub_rate}"
latency = "{hub_latency}"
processing_delay = "{processing}"

[workload]
studies_per_year = {per_year}
[workload.priority]
urgent = 1.0
[[workload.modalities]]
name = "CT"
share = 1.0
image_size = "0.5MB"
images = {{ median = 200, sigma = 0, min = 1, max = 5000 }}

[[workload.referrals]]
from = "AAA"
to = "fast"

{extra}
"""

TRIO_DEFAULTS: dict[str, object] = {
    "duration": "1h", "seed": 7, "replications": 1, "design": "mesh", "granularity": "1MiB", "a_up": "1Gbit/s",
    "b_down": "1Gbit/s", "c_down": "100Mbit/s", "latency": "5ms", "hub_rate": "10Gbit/s", "hub_latency": "2ms",
    "processing": "0s", "per_year": 0, "extra": "",
}


def trio(**values: object) -> Scenario:
    """AAA sends; BBB (fast downlink) and CCC (slow downlink) receive. Workloads come from `studies` traces."""
    params = {**TRIO_DEFAULTS, **values}
    return parse_scenario(TRIO.format(**params), "trio")


A, B, C = 0, 1, 2


def studies(rows: Sequence[tuple[float, int, Sequence[int], float]], priority: int = 1,
            image_bytes: float = 0.5e6) -> Studies:
    """A trace: (time, sender index, recipient indices, bytes) per study, all CT at `priority`."""
    width = max(len(r[2]) for r in rows)
    recips = np.full((len(rows), width), -1, np.int32)
    for i, r in enumerate(rows):
        recips[i, :len(r[2])] = r[2]
    nbytes = np.array([r[3] for r in rows], dtype=float)
    return Studies(np.arange(len(rows), dtype=np.int64), np.array([r[0] for r in rows], dtype=float),
                   np.array([r[1] for r in rows], dtype=np.int32), recips, np.zeros(len(rows), np.int8),
                   np.full(len(rows), priority, np.int8), np.maximum(1, np.rint(nbytes / image_bytes)).astype(np.int32),
                   nbytes)
