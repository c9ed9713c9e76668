"""Derived scenarios: `--set key=value` overrides (sweeps, emulation), written back out as TOML.

Keys are dotted paths into the scenario file, with [i] for arrays of
tables: ``design.kind``, ``hub.egress``, ``groups[0].up``,
``workload.modalities[1].share``. A value is read as a TOML value
(``0.3``, ``true``, ``"1Gbit/s"``, ``[1, 2]``) or, if that fails, as a bare
string (``hub``, ``1Gbit/s``). The result is validated like any scenario.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping

import tomlkit

from protocol.config_reader import parse_value, set_key
from protocol.errors import ConfigError
from simulations.scenario.errors import ScenarioError
from simulations.scenario.model import Scenario
from simulations.scenario.parse import parse_scenario

__all__ = ["apply", "dumps", "parse_assignment", "parse_value", "set_path"]


def parse_assignment(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise ScenarioError(f"override {text!r}: expected KEY=VALUE, e.g. design.kind=hub")
    key, value = text.split("=", 1)
    return key.strip(), parse_value(value.strip())


def set_path(doc: MutableMapping[str, object], key: str, value: object) -> None:
    try:
        set_key(doc, key, value)
    except ConfigError as exc:
        raise ScenarioError(f"override {exc}") from None


def apply(scenario: Scenario, assignments: Iterable[tuple[str, object]]) -> Scenario:
    doc = tomlkit.parse(scenario.source)  # the derived scenario.toml keeps the file's comments
    changed = False
    for key, value in assignments:
        set_path(doc, key, value)
        changed = True
    if not changed:
        return scenario
    return parse_scenario(dumps(doc), f"{scenario.name} with overrides")


def dumps(doc: Mapping[str, object]) -> str:
    """A parsed scenario as TOML text again (tomllib only reads; tomlkit writes)."""
    return tomlkit.dumps(doc)
