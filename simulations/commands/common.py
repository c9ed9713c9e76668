"""Helpers shared by meshsim's subcommands: loading scenarios with overrides, progress, run folders."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from common.cli.progress import ProgressBar
from simulations.scenario import Scenario, ScenarioError, load_scenario
from simulations.scenario.overrides import apply, parse_assignment

BUNDLED = Path(__file__).resolve().parent.parent / "scenarios"


def resolve_scenario_path(text: str) -> Path:
    """A path, or the name of a bundled scenario (`five-trusts`, `nhs-england.toml`). An existing file wins
    over a bundled name; a directory never does (a run folder saved as `five-trusts` is not the scenario)."""
    path = Path(text)
    if path.is_file():
        return path
    for candidate in (BUNDLED / text, BUNDLED / f"{text}.toml", BUNDLED / path.name):
        if candidate.is_file():
            return candidate
    if path.is_dir():
        raise ScenarioError(f"{text}: is a directory, not a scenario file")
    raise ScenarioError(f"{text}: no such scenario file (bundled ones: "
                        f"{', '.join(sorted(p.stem for p in BUNDLED.glob('*.toml')))})")


def add_scenario_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenario", help="scenario TOML file, or the name of a bundled one (e.g. five-trusts)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a scenario value, e.g. --set design.kind=hub --set hub.egress=5Gbit/s")


def load(args: argparse.Namespace) -> Scenario:
    scenario = load_scenario(resolve_scenario_path(args.scenario))
    return apply(scenario, [parse_assignment(a) for a in args.overrides])


def progress_hook(label: str, enabled: bool) -> tuple[Callable[[float], None], ProgressBar]:
    bar = ProgressBar(label, enabled=enabled)

    def hook(fraction: float) -> None:
        bar.update(min(1000, int(fraction * 1000)), 1000)

    return hook, bar
