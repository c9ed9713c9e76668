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

__all__ = ["REMOVE", "apply", "dumps", "parse_assignment", "parse_value", "remove_path", "set_path"]


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


class _Remove:
    def __repr__(self) -> str:
        return "REMOVE"


#: A value for `apply` that takes the key out of the scenario (it reverts to its default), e.g. a group's `joins`.
REMOVE: object = _Remove()


def remove_path(doc: MutableMapping[str, object], key: str) -> None:
    """Take a dotted key (``groups[0].joins``) out of a parsed scenario; absent already: nothing to do."""
    parent, _, name = key.rpartition(".")
    if not parent:
        doc.pop(name, None)
        return
    node: object = doc
    for part in parent.split("."):
        base, _, index = part.partition("[")
        if not isinstance(node, MutableMapping) or base not in node:
            return
        node = node[base]
        if index:
            i = int(index.rstrip("]"))
            if not isinstance(node, list) or not i < len(node):
                raise ScenarioError(f"override {key!r}: {part} does not exist")
            node = node[i]
    if isinstance(node, MutableMapping):
        node.pop(name, None)


def apply(scenario: Scenario, assignments: Iterable[tuple[str, object]]) -> Scenario:
    doc = tomlkit.parse(scenario.source)  # the derived scenario.toml keeps the file's comments
    changed = False
    for key, value in assignments:
        if value is REMOVE:
            remove_path(doc, key)
        else:
            set_path(doc, key, value)
        changed = True
    if not changed:
        return scenario
    return parse_scenario(dumps(doc), f"{scenario.name} with overrides")


def dumps(doc: Mapping[str, object]) -> str:
    """A parsed scenario as TOML text again (tomllib only reads; tomlkit writes)."""
    return tomlkit.dumps(doc)
