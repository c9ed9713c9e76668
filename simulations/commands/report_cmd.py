"""meshsim report: a Markdown or HTML report of one run, with CDF, box and time-series plots."""

from __future__ import annotations

import argparse
from pathlib import Path

from common.cli.output import EXIT_OK, emit
from simulations.report import report


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("report", parents=[common], help="write a report (plots and tables) for a run folder")
    p.add_argument("run", type=Path, help="a folder written by `meshsim run` or `meshsim emulate`")
    p.add_argument("--format", choices=["md", "html"], default="md")
    p.add_argument("--out", type=Path, default=None, help="report file (default: RUN/report.md or .html)")
    p.add_argument("--ccdf", action="store_true",
                   help="also plot complementary CDFs on log axes (report-ccdf.png), to read the tails")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path = report(args.run, args.format, args.out, ccdf=args.ccdf)
    emit({"report": str(path)}, args.json, f"report written to {path} (plots alongside it in {args.run})")
    return EXIT_OK
