"""meshsim compare: the key metrics of several runs side by side (and overlaid plots with --out)."""

from __future__ import annotations

import argparse
from pathlib import Path

from common.cli.output import EXIT_OK, emit
from simulations import sensitivity
from simulations.commands.emulate_cmd import say
from simulations.report import compare


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("compare", parents=[common], help="compare runs side by side")
    p.add_argument("runs", type=Path, nargs="+", help="run folders")
    p.add_argument("--out", type=Path, default=None, help="also write compare.md and plots into this folder")
    p.add_argument("--json", action="store_true")
    sensitivity.add_args(p)  # the hub sensitivity sweep (STUDY, issue 18)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    header, rows = compare(args.runs, args.out)
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in [header] + rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    sens = sensitivity.from_args(args, args.runs, say)  # hub/hybrid runs only (STUDY, issue 18)
    lines += ["\n" + sensitivity.text(s) for s in sens]
    if args.out is not None:
        sensitivity.append_to(args.out / "compare.md", sens)
        lines.append(f"\nplots and compare.md in {args.out}")
    emit({"header": header, "rows": rows, "sensitivity": [sensitivity.as_json(s) for s in sens]}, args.json,
         "\n".join(lines))
    return EXIT_OK
