"""meshsim compare: the key metrics of several runs side by side, differences vs the first (paired when the runs
share seeds and streams), and overlaid plots with --out."""

from __future__ import annotations

import argparse
from pathlib import Path

from common.cli.output import EXIT_OK, emit
from simulations.report import compare, comparison_text


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("compare", parents=[common], help="compare runs side by side")
    p.add_argument("runs", type=Path, nargs="+", help="run folders (differences are against the first)")
    p.add_argument("--out", type=Path, default=None, help="also write compare.md and plots into this folder")
    p.add_argument("--ccdf", action="store_true",
                   help="with --out, also plot complementary CDFs on log axes (compare-ccdf.png), for the tails")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    comparison = compare(args.runs, args.out, ccdf=args.ccdf)
    text = comparison_text(comparison)
    if args.out is not None:
        text += f"\n\nplots and compare.md in {args.out}"
    emit(comparison.as_json(), args.json, text)
    return EXIT_OK
