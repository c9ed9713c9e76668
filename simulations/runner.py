"""Running a scenario: replications x time slices as separate processes on every core, then outputs.

Each (replication, slice) is one task with its own seed streams; tasks run
in a process pool (`jobs` workers, default: every core) and their results
are merged in (replication, slice) order, so the outputs do not depend on
which worker finished first.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue as queue_mod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulations import outputs
from simulations.engine.slice import SliceResult, run_slice
from simulations.results import ReplicationResult, merge
from simulations.scenario.errors import ScenarioError
from simulations.scenario.model import Scenario
from simulations.topology import Topology, build_topology
from simulations.workload import Studies

log = logging.getLogger(__name__)

ProgressHook = Callable[[float], None]
_progress_queue: Any = None


@dataclass
class RunOutcome:
    out_dir: Path
    summary: dict[str, object]
    replications: list[ReplicationResult]
    data: outputs.RunData | None = None


def default_jobs() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def _init_worker(q: Any) -> None:
    global _progress_queue
    _progress_queue = q


def _task(scenario: Scenario, replication: int, slice_no: int, index: int, keep_rows: bool,
          trace: Studies | None) -> SliceResult:
    last = [0.0]

    def report(fraction: float) -> None:
        if _progress_queue is not None and (fraction - last[0] >= 0.01 or fraction >= 1.0):
            last[0] = fraction
            _progress_queue.put((index, fraction))

    return run_slice(scenario, replication, slice_no, report, keep_rows=keep_rows, trace=trace)


def simulate(scenario: Scenario, replications: list[int], jobs: int, progress: ProgressHook | None = None,
             keep_rows: bool = True, trace: Studies | None = None) -> list[ReplicationResult]:
    """Run the given replications (every time slice of each) and merge each replication's slices."""
    k = scenario.engine.time_slices
    tasks = [(rep, sl) for rep in replications for sl in range(k)]
    fractions = [0.0] * len(tasks)
    results: dict[tuple[int, int], SliceResult] = {}

    def update(index: int, fraction: float) -> None:
        fractions[index] = fraction
        if progress is not None:
            progress(sum(fractions) / len(fractions))

    if jobs <= 1 or len(tasks) == 1:
        for i, (rep, sl) in enumerate(tasks):
            def hook(f: float, i: int = i) -> None:
                update(i, f)
            results[(rep, sl)] = run_slice(scenario, rep, sl, hook, keep_rows=keep_rows, trace=trace)
    else:
        ctx = multiprocessing.get_context("fork")
        q = ctx.Queue()
        with ctx.Pool(min(jobs, len(tasks)), initializer=_init_worker, initargs=(q,)) as pool:
            pending = {i: pool.apply_async(_task, (scenario, rep, sl, i, keep_rows, trace)) for i, (rep, sl) in enumerate(tasks)}
            while pending:
                try:
                    index, fraction = q.get(timeout=0.2)
                    update(index, fraction)
                except queue_mod.Empty:
                    pass
                for i in [i for i, res in pending.items() if res.ready()]:
                    results[tasks[i]] = pending.pop(i).get()
                    update(i, 1.0)
    return [merge([results[(rep, sl)] for sl in range(k)]) for rep in replications]


def compute(scenario: Scenario, *, jobs: int | None = None, progress: ProgressHook | None = None,
            replications: list[int] | None = None, trace: Studies | None = None,
            out_dir: Path | None = None) -> outputs.RunData:
    """Run the scenario and build every output: in memory (out_dir None; simulations.api), or into out_dir."""
    reps = list(range(scenario.replications)) if replications is None else replications
    for rep in reps:
        if not 0 <= rep < scenario.replications:
            raise ScenarioError(f"replication {rep} is outside 0..{scenario.replications - 1}")
    topology = build_topology(scenario)
    keep_rows = scenario.output.records != "none"
    results = simulate(scenario, reps, jobs or default_jobs(), progress, keep_rows, trace)
    return outputs.build(scenario, topology, results, out_dir)


def run(scenario: Scenario, out_dir: Path, *, jobs: int | None = None, progress: ProgressHook | None = None,
        replications: list[int] | None = None, trace: Studies | None = None) -> RunOutcome:
    for rep in replications or []:
        if not 0 <= rep < scenario.replications:
            raise ScenarioError(f"replication {rep} is outside 0..{scenario.replications - 1}")
    out_dir.mkdir(parents=True, exist_ok=True)
    data = compute(scenario, jobs=jobs, progress=progress, replications=replications, trace=trace, out_dir=out_dir)
    return RunOutcome(out_dir, data.summary, data.results, data)


def write_outputs(out_dir: Path, scenario: Scenario, topology: Topology,
                  results: list[ReplicationResult]) -> dict[str, object]:
    return outputs.build(scenario, topology, results, out_dir).summary
