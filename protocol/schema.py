"""Strict readers that turn decoded CBOR maps into typed values at the edge.

Each wire document is a CBOR map with a fixed set of fields. A `Fields`
reader takes fields one at a time with their type and limits, then
`finish()` refuses any field nobody asked for. Every problem is a
SchemaError or LimitError naming the document and the field.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

from protocol.cbor import CborKey, CborValue
from protocol.errors import LimitError, SchemaError

_CONTROL_CHARACTERS = re.compile("[\x00-\x08\x0a-\x1f]")  # C0 controls except tab

T = TypeVar("T")

# A DICOM UID: dot-separated numeric components, at most 64 characters (PS3.5 9.1).
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
_ORG_RE = re.compile(r"^[A-Z0-9][A-Z0-9-]{1,15}$")

MAX_TIME = 2**40  # seconds since the epoch: year ~36,800; keeps arithmetic in 64 bits


def require_map(value: CborValue, what: str) -> dict[CborKey, CborValue]:
    if not isinstance(value, dict):
        raise SchemaError(f"{what}: expected a map, got {_type_name(value)}")
    return value


def _type_name(value: CborValue) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    return {int: "integer", bytes: "bytes", str: "text", list: "array", dict: "map"}.get(
        type(value), type(value).__name__
    )


def check_uid(value: str, what: str) -> str:
    if len(value) > 64 or not _UID_RE.fullmatch(value):
        raise SchemaError(f"{what}: not a valid DICOM UID")
    return value


def check_org_code(value: str, what: str) -> str:
    if not _ORG_RE.fullmatch(value):
        raise SchemaError(
            f"{what}: organisation code must be 2-16 characters of A-Z, 0-9 and '-' (got {value!r})"
        )
    return value


class Fields:
    """Reads the fields of one map, then insists nothing else was there."""

    def __init__(self, value: CborValue, what: str) -> None:
        self._map = require_map(value, what)
        self._what = what
        self._seen: set[CborKey] = set()

    def _get(self, key: str) -> CborValue:
        if key not in self._map:
            raise SchemaError(f"{self._what}: missing field {key!r}")
        self._seen.add(key)
        return self._map[key]

    def _wrong(self, key: str, expected: str, value: CborValue) -> SchemaError:
        return SchemaError(f"{self._what}.{key}: expected {expected}, got {_type_name(value)}")

    def integer(self, key: str, lo: int = 0, hi: int = 2**63 - 1) -> int:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._wrong(key, "integer", value)
        if not lo <= value <= hi:
            raise LimitError(f"{self._what}.{key}: {value} outside {lo}..{hi}")
        return value

    def time(self, key: str) -> int:
        return self.integer(key, 0, MAX_TIME)

    def boolean(self, key: str) -> bool:
        value = self._get(key)
        if not isinstance(value, bool):
            raise self._wrong(key, "bool", value)
        return value

    def text(self, key: str, max_len: int, *, min_len: int = 0) -> str:
        value = self._get(key)
        if not isinstance(value, str):
            raise self._wrong(key, "text", value)
        if len(value) > max_len:
            raise LimitError(f"{self._what}.{key}: {len(value)} characters, limit {max_len}")
        if len(value) < min_len:
            raise SchemaError(f"{self._what}.{key}: shorter than {min_len} characters")
        if _CONTROL_CHARACTERS.search(value):
            raise SchemaError(f"{self._what}.{key}: control characters not allowed")
        return value

    def optional_text(self, key: str, max_len: int, check: Callable[[str, str], str]) -> str:
        """A text field that is absent when empty (deterministic form: an empty value is never written, so
        one present and empty is refused); `check(value, what)` judges its characters."""
        if key not in self._map:
            return ""
        value = self._get(key)
        if not isinstance(value, str):
            raise self._wrong(key, "text", value)
        if len(value) > max_len:
            raise LimitError(f"{self._what}.{key}: {len(value)} characters, limit {max_len}")
        if not value:
            raise SchemaError(f"{self._what}.{key}: present but empty (an empty field is left out)")
        return check(value, f"{self._what}.{key}")

    def choice(self, key: str, allowed: frozenset[str]) -> str:
        value = self.text(key, 64)
        if value not in allowed:
            raise SchemaError(f"{self._what}.{key}: {value!r} not one of {sorted(allowed)}")
        return value

    def blob(self, key: str, *, size: int | None = None, max_len: int = 1 << 20) -> bytes:
        value = self._get(key)
        if not isinstance(value, bytes):
            raise self._wrong(key, "bytes", value)
        if size is not None and len(value) != size:
            raise SchemaError(f"{self._what}.{key}: expected {size} bytes, got {len(value)}")
        if len(value) > max_len:
            raise LimitError(f"{self._what}.{key}: {len(value)} bytes, limit {max_len}")
        return value

    def optional_blob(self, key: str, *, size: int) -> bytes | None:
        value = self._get(key)
        if value is None:
            return None
        if not isinstance(value, bytes) or len(value) != size:
            raise SchemaError(f"{self._what}.{key}: expected null or {size} bytes")
        return value

    def map(self, key: str) -> dict[CborKey, CborValue]:
        return require_map(self._get(key), f"{self._what}.{key}")

    def raw(self, key: str) -> CborValue:
        return self._get(key)

    def array(
        self,
        key: str,
        item: Callable[[CborValue, str], T],
        *,
        max_items: int,
        min_items: int = 0,
        sorted_unique: bool = False,
    ) -> tuple[T, ...]:
        value = self._get(key)
        if not isinstance(value, list):
            raise self._wrong(key, "array", value)
        if len(value) > max_items:
            raise LimitError(f"{self._what}.{key}: {len(value)} items, limit {max_items}")
        if len(value) < min_items:
            raise SchemaError(f"{self._what}.{key}: fewer than {min_items} items")
        out = tuple(item(v, f"{self._what}.{key}[{i}]") for i, v in enumerate(value))
        if sorted_unique and list(value) != sorted(set(value), key=_sort_key):
            raise SchemaError(f"{self._what}.{key}: must be sorted and without duplicates")
        return out

    def finish(self) -> None:
        extra = [k for k in self._map if k not in self._seen]
        if extra:
            raise SchemaError(f"{self._what}: unknown field(s) {sorted(map(str, extra))}")


def _sort_key(value: CborValue) -> str | bytes | int:
    if isinstance(value, (str, bytes, int)):
        return value
    raise SchemaError("only text, bytes or integers can form a sorted set")


def text_item(max_len: int) -> Callable[[CborValue, str], str]:
    def read(value: CborValue, what: str) -> str:
        if not isinstance(value, str):
            raise SchemaError(f"{what}: expected text, got {_type_name(value)}")
        if len(value) > max_len:
            raise LimitError(f"{what}: {len(value)} characters, limit {max_len}")
        return value

    return read


def bytes_item(size: int) -> Callable[[CborValue, str], bytes]:
    def read(value: CborValue, what: str) -> bytes:
        if not isinstance(value, bytes) or len(value) != size:
            raise SchemaError(f"{what}: expected {size} bytes")
        return value

    return read


def org_item(value: CborValue, what: str) -> str:
    return check_org_code(text_item(16)(value, what), what)
