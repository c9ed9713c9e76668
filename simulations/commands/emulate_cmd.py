"""meshsim emulate: the scenario's first studies through real meshnode processes, outputs like `run`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.cli.output import EXIT_OK, emit
from simulations.commands.common import add_scenario_args, load
from simulations.emulation.replay import emulate
from simulations.summary import lookup


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("emulate", parents=[common], help="replay a scenario's studies through real nodes")
    add_shaping_args(p)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def add_shaping_args(p: argparse.ArgumentParser) -> None:
    add_scenario_args(p)
    p.add_argument("--shaping", choices=["auto", "netns", "limiter"], default="auto",
                   help="netns: namespaces + tc tbf (root); limiter: the node's upload limiter; auto: netns if possible")
    p.add_argument("--keep", action="store_true", help="keep the nodes' folders and logs")


def say(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def run(args: argparse.Namespace) -> int:
    scenario = load(args)
    em = emulate(scenario, args.out, args.shaping, args.keep, say=say if not args.json else lambda _: None)
    delivered = sum(1 for m in em.measured if m.delivered is not None)
    data = {"out": str(args.out), "shaping": em.shaping, "reason": em.reason, "transfers": len(em.measured),
            "delivered": delivered, "wall_s": round(em.wall_seconds, 1)}
    from simulations.report import read_run_file

    summary = read_run_file(args.out / "summary.json")
    reps = summary["replications"]
    assert isinstance(reps, list)
    p50 = lookup(reps[0], ("delivery_time_s", "all", "p50"))
    emit(data, args.json, f"emulated {delivered}/{len(em.measured)} transfers delivered ({em.shaping}: {em.reason}); "
                          f"delivery p50 {p50 if p50 is None else round(p50, 2)} s; outputs in {args.out}")
    return EXIT_OK
