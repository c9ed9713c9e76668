"""meshsim validate: model vs emulation with real nodes, per case (medians and p90), or on the scenario's workload."""

from __future__ import annotations

import argparse
from pathlib import Path

from common.cli.output import EXIT_ERROR, EXIT_OK, emit
from simulations.commands.common import load
from simulations.commands.emulate_cmd import add_shaping_args, say
from simulations.scenario.model import Scenario
from simulations.validate import BOUNDS, P90_MIN_N, TARGET, Comparison, validate, validate_cases


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("validate", parents=[common],
                       help="emulate and simulate the same studies per case; compare medians and p90")
    add_shaping_args(p)
    p.add_argument("--out", type=Path, required=True, help="folder for the emulated/ and modelled/ outputs")
    p.add_argument("--workload", action="store_true",
                   help="instead of the cases, the scenario's first [emulation] studies (single transfers as drawn)")
    # argparse %-formats help strings: a literal percent sign is written %%
    p.add_argument("--strict", action="store_true",
                   help=f"exit 1 if a case's error is outside its documented bound (--workload: the overall median "
                        f"beyond {TARGET * 100:g}%%)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:8.2f}"


def _err(c: Comparison | None) -> str:
    return "-" if c is None or c.error is None else f"{c.error:+.1%}"


def _row(c: Comparison) -> dict[str, object]:
    return {"label": c.label, "emulated_s": c.emulated, "modelled_s": c.modelled, "error": c.error}


def run(args: argparse.Namespace) -> int:
    scenario = load(args)
    if args.workload:
        return _workload(args, scenario)
    em, results = validate_cases(scenario, args.out, args.shaping, args.keep, say if not args.json else lambda _: None)
    lines = [f"delivery time (s), {em.shaping} emulation vs the model, per case  [{em.reason}]",
             f"{'':44} {'emulated':>8} {'model':>8} {'error':>7}"]
    for r in results:
        lines.append(f"case {r.name}: {r.title} (n = {len(r.transfers)})" + (f"; {r.note}" if r.note else ""))
        if r.bound is not None:
            lines.append(f"  bound: {r.bound.text()}")
        if r.name != "all":
            for t in r.transfers:
                error = t.modelled / t.emulated - 1.0 if t.emulated > 0 else None
                peers = ("" if t.peers_emulated is None or t.peers_modelled is None else
                         f"  from peers {t.peers_emulated:.0%} / {t.peers_modelled:.0%}")
                lines.append(f"  {t.label:42} {_s(t.emulated)} {_s(t.modelled)} "
                             f"{'-' if error is None else f'{error:+.1%}':>7}{peers}")
        for c in (r.median, r.p90):
            if c is not None:
                lines.append(f"  {c.label:42} {_s(c.emulated)} {_s(c.modelled)} {_err(c):>7}")
    failed = [r.name for r in results if not r.within]
    lines.append("every case within the bounds" if not failed else f"OUTSIDE the bounds: {', '.join(failed)}")
    lines.append(f"outputs in {args.out}/emulated and {args.out}/modelled/<case>")
    data = {"shaping": em.shaping, "reason": em.reason, "p90_min_n": P90_MIN_N, "wall_s": round(em.wall_seconds, 1), "within": not failed,
            "cases": [{"case": r.name, "title": r.title, "note": r.note, "n": len(r.transfers), "within": r.within,
                       "bound": None if r.bound is None else {"median": list(r.bound.median), "gap": r.bound.gap,
                                                              "p90": None if r.bound.p90 is None else list(r.bound.p90)},
                       "median": _row(r.median), "p90": None if r.p90 is None else _row(r.p90),
                       "transfers": [{"label": t.label, "emulated_s": t.emulated, "modelled_s": t.modelled,
                                      "from_peers_emulated": t.peers_emulated,
                                      "from_peers_modelled": t.peers_modelled}
                                     for t in r.transfers]} for r in results]}
    emit(data, args.json, "\n".join(lines))
    return EXIT_ERROR if args.strict and failed else EXIT_OK


def _workload(args: argparse.Namespace, scenario: Scenario) -> int:
    em, rows = validate(scenario, args.out, args.shaping, args.keep, say if not args.json else lambda _: None)
    overall = rows[0].error
    verdict = ("no delivered transfer to compare" if overall is None else
               f"{'within' if abs(overall) <= TARGET else 'OUTSIDE'} the {TARGET:.0%} target ({overall:+.1%})")
    lines = [f"delivery time (s), {em.shaping} emulation vs the model  [{em.reason}]",
             f"{'':44} {'emulated':>8} {'model':>8} {'error':>7}"]
    for r in rows:
        lines.append(f"{r.label:44} {_s(r.emulated)} {_s(r.modelled)} {_err(r):>7}")
    lines.append(f"overall median: {verdict}; outputs in {args.out}/emulated and {args.out}/modelled")
    data = {"shaping": em.shaping, "reason": em.reason, "target": TARGET, "overall_error": overall,
            "rows": [_row(r) for r in rows]}
    emit(data, args.json, "\n".join(lines))
    if args.strict and (overall is None or abs(overall) > TARGET):
        return EXIT_ERROR
    return EXIT_OK
