"""meshsim compare: the key metrics of several runs side by side, differences vs the first (paired when the runs
share seeds and streams), and overlaid plots with --out."""

from __future__ import annotations

import argparse
from pathlib import Path

from common.cli.output import EXIT_OK, emit
from simulations import sensitivity
from simulations.commands.emulate_cmd import say
from simulations.report import compare, comparison_text


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("compare", parents=[common], help="compare runs side by side")
    p.add_argument("runs", type=Path, nargs="+", help="run folders (differences are against the first)")
    p.add_argument("--out", type=Path, default=None, help="also write compare.md and plots into this folder")
    p.add_argument("--ccdf", action="store_true",
                   help="with --out, also plot complementary CDFs on log axes (compare-ccdf.png), for the tails")
    p.add_argument("--json", action="store_true")
    sensitivity.add_args(p)  # the hub sensitivity sweep (STUDY, issue 18)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    comparison = compare(args.runs, args.out, ccdf=args.ccdf)
    text = comparison_text(comparison)
    sens = sensitivity.from_args(args, args.runs, say)  # hub/hybrid runs only (STUDY, issue 18)
    text += "".join("\n\n" + sensitivity.text(s) for s in sens)
    if args.out is not None:
        sensitivity.append_to(args.out / "compare.md", sens)
        text += f"\n\nplots and compare.md in {args.out}"
    emit({**comparison.as_json(), "sensitivity": [sensitivity.as_json(s) for s in sens]}, args.json, text)
    return EXIT_OK
