"""meshsim check: validate a scenario and say what it describes (nothing is simulated)."""

from __future__ import annotations

import argparse

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
    groups = [{"name": g.name, "kind": g.kind.value, "organisations": g.count, "up": format_rate(g.up),
               "down": format_rate(g.down)} for g in s.groups]
    digest = scenario_hash(s)
    data: dict[str, object] = {"name": s.name, "sha256": digest, "design": s.design.kind.value,
            "organisations": len(s.org_codes), "groups": groups, "studies_per_year": s.workload.studies_per_year,
            "duration": format_duration(s.duration), "replications": s.replications, "seed": s.seed,
            "faults": len(s.faults), "attackers": len(s.attackers), "time_slices": s.engine.time_slices}
    lines = [f"{s.name}: {s.description}" if s.description else s.name,
             f"  design {s.design.kind.value}, {len(s.org_codes)} organisations, "
             f"{s.workload.studies_per_year:,.0f} studies/year, {format_duration(s.duration)} x "
             f"{s.replications} replication(s), seed {s.seed}"]
    lines += [f"  {g['name']}: {g['organisations']} {g['kind']}, up {g['up']}, down {g['down']}" for g in groups]
    lines.append(f"  {len(s.faults)} fault(s), {len(s.attackers)} attacker(s); scenario sha256 {digest[:16]}")
    emit(data, args.json, "\n".join(lines))
    return EXIT_OK
