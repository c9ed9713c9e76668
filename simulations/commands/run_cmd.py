"""meshsim run: simulate a scenario; per-transfer records, time series, summary and manifest in --out."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.cli.output import EXIT_OK, emit
from simulations.commands.common import add_scenario_args, load, progress_hook
from simulations.runner import default_jobs, run as run_scenario
from simulations.summary import lookup


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("run", parents=[common], help="simulate a scenario")
    add_scenario_args(p)
    p.add_argument("--out", type=Path, required=True, help="folder for the outputs (created)")
    p.add_argument("--jobs", type=int, default=None, help=f"worker processes (default: every core, {default_jobs()})")
    p.add_argument("--replication", type=int, action="append", default=None, metavar="K",
                   help="run only replication K (repeatable); for spreading a sweep over a batch scheduler")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    scenario = load(args)
    hook, _ = progress_hook(f"{scenario.name} ({scenario.design.kind.value})",
                            enabled=not args.no_progress and not args.json)
    outcome = run_scenario(scenario, args.out, jobs=args.jobs, progress=hook, replications=args.replication)
    reps = outcome.summary["replications"]
    assert isinstance(reps, list)
    lines = [f"{scenario.name}: {scenario.design.kind.value}, {len(reps)} replication(s), outputs in {args.out}"]
    for r in reps:
        p50 = lookup(r, ("delivery_time_s", "all", "p50"))
        p95 = lookup(r, ("delivery_time_s", "all", "p95"))
        stat95 = lookup(r, ("delivery_time_s", "by_priority", "stat", "p95"))
        lines.append(f"  r{r['replication']}: {r['delivered']}/{r['transfers']} delivered, {r['failed']} failed, "
                     f"{r['in_flight']} in flight; delivery p50 {_s(p50)}, p95 {_s(p95)}, stat p95 {_s(stat95)}")
    emit(outcome.summary, args.json, "\n".join(lines))
    sys.stdout.flush()
    return EXIT_OK


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f} s"
