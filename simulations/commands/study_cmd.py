"""meshsim study: hub vs mesh vs hybrid with common random numbers, the hub sensitivity sweep, one report."""

from __future__ import annotations

import argparse
from pathlib import Path

from common.cli.output import EXIT_OK, emit
from simulations import sensitivity, study
from simulations.commands.common import add_scenario_args, load, progress_hook
from simulations.commands.emulate_cmd import say


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("study", parents=[common],
                       help="hub vs mesh vs hybrid in one command: paired intervals, costs, hub sensitivity, report")
    add_scenario_args(p)
    p.add_argument("--out", type=Path, required=True, help="folder for one run per design and report.md")
    p.add_argument("--designs", default="hub,mesh,hybrid", help="comma-separated designs (default hub,mesh,hybrid)")
    p.add_argument("--duration", default=None, metavar="DURATION",
                   help="simulated time of each run (default: the scenario's), e.g. 28d")
    p.add_argument("--replications", type=int, default=None, metavar="N",
                   help="replications per design (default: the scenario's)")
    p.add_argument("--jobs", type=sensitivity.jobs_arg, default=None, help="worker processes (default: every core)")
    sensitivity.add_args(p, jobs=False)  # the study has its own --jobs
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    base = load(args)
    designs = study.parse_designs(args.designs)
    length = None if args.no_sensitivity else sensitivity.parse_duration(args.sensitivity_duration)
    hook, _ = progress_hook(f"study of {base.name}", enabled=not args.no_progress and not args.json)
    quiet = args.json or args.no_progress
    path = study.study(base, args.out, designs, duration=args.duration, replications=args.replications,
                       jobs=args.jobs, sensitivity_duration=length, say=None if quiet else say, progress=hook)
    emit({"report": str(path), "results": str(args.out / study.RESULTS)}, args.json,
         f"study report written to {path} (runs, plots and {study.RESULTS} alongside it)")
    return EXIT_OK
