"""meshsim check: validate a scenario and say what it describes (nothing is simulated)."""

from __future__ import annotations

import argparse
import math

from common.cli.output import EXIT_OK, emit
from simulations.commands.common import add_scenario_args, load
from simulations.outputs import scenario_hash
from protocol.quantities import format_duration, format_rate


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("check", parents=[common], help="validate a scenario file and summarise it")
    add_scenario_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    s = load(args)
    groups: list[dict[str, object]] = []
    for g in s.groups:
        group: dict[str, object] = {"name": g.name, "kind": g.kind.value, "organisations": g.count,
                                    "up": format_rate(g.up), "down": format_rate(g.down)}
        if g.joins > 0:
            group["joins"] = format_duration(g.joins)
        if math.isfinite(g.leaves):
            group["leaves"] = format_duration(g.leaves)
        if g.overrides:
            group["overrides"] = [o.code for o in g.overrides]
        groups.append(group)
    digest = scenario_hash(s)
    data: dict[str, object] = {"name": s.name, "sha256": digest, "design": s.design.kind.value,
            "organisations": len(s.org_codes), "groups": groups, "studies_per_year": s.workload.studies_per_year,
            "duration": format_duration(s.duration), "replications": s.replications, "seed": s.seed,
            "faults": len(s.faults), "attackers": len(s.attackers), "time_slices": s.engine.time_slices}
    lines = [f"{s.name}: {s.description}" if s.description else s.name,
             f"  design {s.design.kind.value}, {len(s.org_codes)} organisations, "
             f"{s.workload.studies_per_year:,.0f} studies/year, {format_duration(s.duration)} x "
             f"{s.replications} replication(s), seed {s.seed}"]
    for row, grp in zip(groups, s.groups):
        extra = "".join(f", {key} {row[key]}" for key in ("joins", "leaves") if key in row)
        if grp.overrides:
            extra += ", overridden: " + " ".join(o.code for o in grp.overrides)
        lines.append(f"  {row['name']}: {row['organisations']} {row['kind']}, up {row['up']}, down {row['down']}{extra}")
    lines.append(f"  {len(s.faults)} fault(s), {len(s.attackers)} attacker(s); scenario sha256 {digest[:16]}")
    emit(data, args.json, "\n".join(lines))
    return EXIT_OK
