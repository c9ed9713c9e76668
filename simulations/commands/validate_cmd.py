"""meshsim validate: model vs emulation on a small scenario, delivery-time medians side by side."""

from __future__ import annotations

import argparse
from pathlib import Path

from common.cli.output import EXIT_ERROR, EXIT_OK, emit
from simulations.commands.common import load
from simulations.commands.emulate_cmd import add_shaping_args, say
from simulations.validate import TARGET, validate


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("validate", parents=[common], help="emulate and simulate the same studies; compare medians")
    add_shaping_args(p)
    p.add_argument("--out", type=Path, required=True, help="folder for the emulated/ and modelled/ outputs")
    # argparse %-formats help strings: a literal percent sign is written %%
    p.add_argument("--strict", action="store_true", help=f"exit 1 if the overall median differs by more than "
                                                          f"{TARGET * 100:g}%%")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:8.2f}"


def run(args: argparse.Namespace) -> int:
    scenario = load(args)
    em, rows = validate(scenario, args.out, args.shaping, args.keep, say if not args.json else lambda _: None)
    overall = rows[0].error
    verdict = ("no delivered transfer to compare" if overall is None else
               f"{'within' if abs(overall) <= TARGET else 'OUTSIDE'} the {TARGET:.0%} target ({overall:+.1%})")
    lines = [f"delivery time (s), {em.shaping} emulation vs the model  [{em.reason}]",
             f"{'':44} {'emulated':>8} {'model':>8} {'error':>7}"]
    for r in rows:
        err = "-" if r.error is None else f"{r.error:+.1%}"
        lines.append(f"{r.label:44} {_s(r.emulated)} {_s(r.modelled)} {err:>7}")
    lines.append(f"overall median: {verdict}; outputs in {args.out}/emulated and {args.out}/modelled")
    data = {"shaping": em.shaping, "reason": em.reason, "target": TARGET, "overall_error": overall,
            "rows": [{"label": r.label, "emulated_s": r.emulated, "modelled_s": r.modelled, "error": r.error}
                     for r in rows]}
    emit(data, args.json, "\n".join(lines))
    if args.strict and (overall is None or abs(overall) > TARGET):
        return EXIT_ERROR
    return EXIT_OK
