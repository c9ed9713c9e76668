"""Typed, strict access to one TOML table: every key read is checked, every key not read is an error.

Errors name the dotted path of the key (``workload.referrals[3].to``) and the problem.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

from simulations.scenario import units
from simulations.scenario.errors import ScenarioError

T = TypeVar("T")
_MISSING = object()


class Table:
    def __init__(self, value: object, path: str) -> None:
        if not isinstance(value, dict):
            raise ScenarioError(f"{path or 'scenario'}: expected a table, got {type(value).__name__}")
        self.values: dict[str, object] = {str(k): v for k, v in value.items()}
        self.path = path
        self._seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def has(self, name: str) -> bool:
        return name in self.values

    def raw(self, name: str, default: object = _MISSING) -> object:
        self._seen.add(name)
        if name in self.values:
            return self.values[name]
        if default is _MISSING:
            raise ScenarioError(f"{self.key(name)}: required key is missing")
        return default

    def _get(self, name: str, default: object, convert: Callable[[object, str], T]) -> T:
        self._seen.add(name)
        if name not in self.values:
            if default is _MISSING:
                raise ScenarioError(f"{self.key(name)}: required key is missing")
            return default  # type: ignore[return-value]  # the caller's default, of the caller's type
        return convert(self.values[name], self.key(name))

    def text(self, name: str, default: object = _MISSING, choices: tuple[str, ...] | None = None) -> str:
        def convert(value: object, key: str) -> str:
            if not isinstance(value, str):
                raise ScenarioError(f"{key}: expected a string, got {type(value).__name__}")
            if choices is not None and value not in choices:
                raise ScenarioError(f"{key}: {value!r} is not one of {', '.join(choices)}")
            return value
        return self._get(name, default, convert)

    def integer(self, name: str, default: object = _MISSING, lo: int = 0, hi: int = 2**62) -> int:
        def convert(value: object, key: str) -> int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ScenarioError(f"{key}: expected an integer, got {type(value).__name__}")
            if not lo <= value <= hi:
                raise ScenarioError(f"{key}: {value} is outside {lo}..{hi}")
            return value
        return self._get(name, default, convert)

    def number(self, name: str, default: object = _MISSING, lo: float = 0.0, hi: float = math.inf) -> float:
        def convert(value: object, key: str) -> float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ScenarioError(f"{key}: expected a number, got {type(value).__name__}")
            if not math.isfinite(value) or not lo <= value <= hi:
                raise ScenarioError(f"{key}: {value} is outside {lo:g}..{hi:g}")
            return float(value)
        return self._get(name, default, convert)

    def boolean(self, name: str, default: object = _MISSING) -> bool:
        def convert(value: object, key: str) -> bool:
            if not isinstance(value, bool):
                raise ScenarioError(f"{key}: expected true or false, got {type(value).__name__}")
            return value
        return self._get(name, default, convert)

    def size(self, name: str, default: object = _MISSING) -> float:
        return self._get(name, default, units.size)

    def rate(self, name: str, default: object = _MISSING) -> float:
        return self._get(name, default, units.rate)

    def duration(self, name: str, default: object = _MISSING) -> float:
        return self._get(name, default, units.duration)

    def numbers(self, name: str, length: int, default: object = _MISSING) -> tuple[float, ...]:
        def convert(value: object, key: str) -> tuple[float, ...]:
            if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, (int, float))
                                                  for v in value):
                raise ScenarioError(f"{key}: expected a list of {length} numbers")
            if len(value) != length:
                raise ScenarioError(f"{key}: expected {length} numbers, got {len(value)}")
            if any(not math.isfinite(v) or v < 0 for v in value):
                raise ScenarioError(f"{key}: values must be finite and not negative")
            if sum(value) <= 0:
                raise ScenarioError(f"{key}: at least one value must be positive")
            return tuple(float(v) for v in value)
        return self._get(name, default, convert)

    def names(self, name: str, default: object = _MISSING) -> tuple[str, ...]:
        """A string or a list of strings."""
        def convert(value: object, key: str) -> tuple[str, ...]:
            if isinstance(value, str):
                return (value,)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ScenarioError(f"{key}: expected a name or a list of names")
            return tuple(str(v) for v in value)
        return self._get(name, default, convert)

    def table(self, name: str, required: bool = False) -> Table:
        value = self.raw(name, _MISSING if required else {})
        return Table(value, self.key(name))

    def tables(self, name: str) -> list[Table]:
        value = self.raw(name, [])
        if not isinstance(value, list):
            raise ScenarioError(f"{self.key(name)}: expected an array of tables ([[{self.key(name)}]])")
        return [Table(v, f"{self.key(name)}[{i}]") for i, v in enumerate(value)]

    def finish(self) -> None:
        unknown = sorted(set(self.values) - self._seen)
        if unknown:
            raise ScenarioError(f"{self.key(unknown[0])}: unknown key"
                                + (f" (also unknown: {', '.join(unknown[1:])})" if unknown[1:] else ""))
