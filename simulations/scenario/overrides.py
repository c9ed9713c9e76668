"""Derived scenarios: `--set key=value` overrides (sweeps, emulation), written back out as TOML.

Keys are dotted paths into the scenario file, with [i] for arrays of
tables: ``design.kind``, ``hub.egress``, ``groups[0].up``,
``workload.modalities[1].share``. A value is read as a TOML value
(``0.3``, ``true``, ``"1Gbit/s"``, ``[1, 2]``) or, if that fails, as a bare
string (``hub``, ``1Gbit/s``). The result is validated like any scenario.
"""

from __future__ import annotations

import copy
import json
import math
import re
import tomllib
from collections.abc import Iterable

from simulations.scenario.errors import ScenarioError
from simulations.scenario.model import Scenario
from simulations.scenario.parse import parse_scenario

_PART = re.compile(r"^([A-Za-z_][A-Za-z0-9_-]*)(?:\[(\d+)\])?$")


def parse_value(text: str) -> object:
    try:
        return tomllib.loads("v = " + text)["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_assignment(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise ScenarioError(f"override {text!r}: expected KEY=VALUE, e.g. design.kind=hub")
    key, value = text.split("=", 1)
    return key.strip(), parse_value(value.strip())


def set_path(doc: dict[str, object], key: str, value: object) -> None:
    parts = key.split(".")
    node: object = doc
    for i, part in enumerate(parts):
        m = _PART.match(part)
        if m is None:
            raise ScenarioError(f"override {key!r}: {part!r} is not a key")
        name, index = m.group(1), m.group(2)
        last = i == len(parts) - 1
        if not isinstance(node, dict):
            raise ScenarioError(f"override {key!r}: {'.'.join(parts[:i])} is not a table")
        if index is not None:
            seq = node.get(name)
            if not isinstance(seq, list) or not int(index) < len(seq):
                raise ScenarioError(f"override {key!r}: {name}[{index}] does not exist")
            if last:
                seq[int(index)] = value
                return
            node = seq[int(index)]
        elif last:
            node[name] = value
        else:
            node = node.setdefault(name, {})


def apply(scenario: Scenario, assignments: Iterable[tuple[str, object]]) -> Scenario:
    doc = copy.deepcopy(tomllib.loads(scenario.source))
    changed = False
    for key, value in assignments:
        set_path(doc, key, value)
        changed = True
    if not changed:
        return scenario
    return parse_scenario(dumps(doc), f"{scenario.name} with overrides")


# -- a small TOML writer (tomllib only reads) ------------------------------------------------

def _key(k: str) -> str:
    return k if re.match(r"^[A-Za-z0-9_-]+$", k) else json.dumps(k)


def _value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(str(k))} = {_value(x)}" for k, x in v.items()) + " }"
    raise ScenarioError(f"cannot write {type(v).__name__} to TOML")


def _is_tables(v: object) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def _emit(table: dict[str, object], path: list[str], lines: list[str], header: str | None) -> None:
    if header is not None:
        lines.append("")
        lines.append(header)
    for k, v in table.items():
        if not isinstance(v, dict) and not _is_tables(v):
            lines.append(f"{_key(k)} = {_value(v)}")
    for k, v in table.items():
        if isinstance(v, dict):
            sub = path + [_key(k)]
            _emit(v, sub, lines, "[" + ".".join(sub) + "]")
        elif _is_tables(v):
            sub = path + [_key(k)]
            assert isinstance(v, list)
            for item in v:
                _emit(item, sub, lines, "[[" + ".".join(sub) + "]]")


def dumps(doc: dict[str, object]) -> str:
    lines: list[str] = []
    _emit(doc, [], lines, None)
    return "\n".join(lines).lstrip("\n") + "\n"
