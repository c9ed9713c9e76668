"""meshsim sweep: run a scenario over a grid of parameter values on Dask (or emit the commands for a cluster)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from common.cli.output import EXIT_OK, emit
from common.cli.progress import ProgressBar
from simulations import sweep
from simulations.sensitivity import jobs_arg
from simulations.commands.common import add_scenario_args, load
from simulations.summary import KEY_METRICS


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("sweep", parents=[common], help="one run per combination of --vary values (on Dask)")
    add_scenario_args(p)
    p.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="values to sweep, e.g. --vary design.kind=hub,mesh,hybrid (repeat for a grid)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--jobs", type=jobs_arg, default=None,
                   help="worker processes of the local cluster (default: every core); with --jobqueue, the most "
                        "batch jobs to start")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="run on the Dask scheduler at ADDRESS (e.g. tcp://10.0.0.5:8786) instead of a local "
                            "cluster; its workers need this package")
    where.add_argument("--jobqueue", choices=sorted(sweep.JOBQUEUE_COMMANDS), default=None,
                       help="start Dask workers as Slurm/PBS jobs (dask-jobqueue), one per task at most")
    p.add_argument("--scheduler-timeout", type=seconds_arg, default=sweep.DEFAULT_SCHEDULER_TIMEOUT, metavar="SECONDS",
                   help="give up on --scheduler after this long (default %(default)g s)")
    p.add_argument("--jobqueue-option", action="append", default=[], metavar="KEY=VALUE",
                   help="passed to dask_jobqueue.SLURMCluster/PBSCluster, e.g. cores=1 memory=4GB "
                        "walltime=02:00:00 queue=short (repeat)")
    p.add_argument("--emit-commands", type=Path, default=None, metavar="FILE",
                   help="do not run: write one `meshsim run` command per point and replication to FILE ('-': stdout)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)
    c = sub.add_parser("collect", parents=[common], help="gather a sweep's cluster runs into sweep.csv")
    c.add_argument("out", type=Path)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=run_collect)


def seconds_arg(text: str) -> float:
    """An argparse type for --scheduler-timeout: a finite number of seconds above 0 (nan, inf and negative
    values would remove or break the bound the option exists for)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds above 0, got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    base = load(args)
    vary = sweep.parse_vary(args.vary)
    options = tuple(sweep.parse_option(o) for o in args.jobqueue_option)
    spec = sweep.ClusterSpec(jobs=args.jobs, scheduler=args.scheduler, scheduler_timeout=args.scheduler_timeout,
                             jobqueue=args.jobqueue, jobqueue_options=options)
    if args.emit_commands is not None:
        pts = sweep.prepare(base, vary, args.out)
        lines = sweep.commands(pts, args.out)
        sweep.write_commands(lines, None if str(args.emit_commands) == "-" else args.emit_commands)
        if str(args.emit_commands) != "-":
            emit({"points": len(pts), "commands": len(lines)}, args.json,
                 f"{len(pts)} point(s), {len(lines)} command(s) written to {args.emit_commands}; "
                 f"afterwards: meshsim collect {args.out}")
        return EXIT_OK
    pts = sweep.points(base, vary)
    total = sweep.runs(pts)
    bar = ProgressBar(f"sweep: {total} run(s) of {len(pts)} point(s)", enabled=not args.no_progress and not args.json)
    with sweep.client_for(spec, total) as client:  # an unreachable cluster fails here, before anything is written
        pts = sweep.prepare(base, vary, args.out)
        sweep.run_all(pts, args.out, client, lambda f: bar.update(round(f * total), total),
                      stall=None if args.jobqueue is not None else args.scheduler_timeout)
    return _table(args, sweep.collect(args.out))


def run_collect(args: argparse.Namespace) -> int:
    return _table(args, sweep.collect(args.out))


def _table(args: argparse.Namespace, table: list[list[str]]) -> int:
    varied = len(table[0]) - len(KEY_METRICS)  # the point name and the varied keys (and note) come first
    keep = [i for i in range(len(table[0])) if i < varied or any(r[i] for r in table[1:])]
    rows = [[r[i] for i in keep] for r in table]
    widths = [max(len(r[i]) for r in rows) for i in range(len(keep))]
    text = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)
    emit({"header": table[0], "rows": table[1:]}, args.json, text + f"\n(also in {args.out / 'sweep.csv'})")
    return EXIT_OK
