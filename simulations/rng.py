"""Named random streams split from one master seed.

Each stream (topology, workload, faults, attackers, engine, deliveries) is its own
numpy SeedSequence child, keyed by (replication, stream, sub-keys...), so
changing how much one stream draws (a new fault, a longer run) never shifts
the numbers another stream draws. Workload streams are further keyed by day
and fault streams by organisation, so a simulation split in time slices
draws exactly the same studies and outages as one that is not.
"""

from __future__ import annotations

import numpy as np

STREAMS = {"topology": 1, "workload": 2, "faults": 3, "attackers": 4, "engine": 5, "deliveries": 6}


def stream(seed: int, name: str, *keys: int, replication: int = 0) -> np.random.Generator:
    """The generator of stream `name` (with sub-keys) for this master seed and replication."""
    if name not in STREAMS:
        raise KeyError(f"unknown random stream {name!r}")
    sequence = np.random.SeedSequence(entropy=seed, spawn_key=(replication, STREAMS[name], *keys))
    return np.random.Generator(np.random.PCG64(sequence))


def describe(seed: int, replication: int) -> dict[str, object]:
    """What the run manifest records about the seeds: enough to re-draw every stream."""
    return {
        "master_seed": seed,
        "replication": replication,
        "streams": {name: {"spawn_key": [replication, code], "sub_keys": _SUB_KEYS[name]}
                    for name, code in STREAMS.items()},
        "bit_generator": "PCG64",
    }


_SUB_KEYS = {"topology": "none (shared by every replication: spawn_key [0, 1])", "workload": "day number",
             "faults": "organisation index (hub: number of organisations)", "attackers": "attacker index",
             "engine": "none", "deliveries": "organisation index (the jitter of its nodes' delivery retries)"}
