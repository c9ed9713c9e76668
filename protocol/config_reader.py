"""The one reader of dicom-mesh's TOML files: strict, typed access to a table, with errors naming the key.

Every configuration file the project reads goes through here: node.toml (meshnode.config and the
sections it delegates: [http] and [[webhook]], the gateway's, [audit_repository]), the directory's
directory.toml and meshsim's scenarios. Reading the file is the caller's job (this module is pure:
text or bytes in, values or a ConfigError out):

    config = read(path.read_bytes(), str(path), build)   # build(root: Table) -> your frozen dataclass

Inside `build`, each key is read with its type, range and default (`t.integer("port", 104, 1, 65535)`),
sub-tables with `t.table(...)` / `t.tables(...)`, and `t.finish()` refuses every key that was not read.
Errors are ``<file>: <dotted key>: <problem>``, e.g. ``node.toml: limits.max_streams_per_peer: 0 is
outside 1..4096`` or ``node.toml: route[1].bogus: unknown key (known: called_ae, name, ...)``.
Defaults are stated once, on the dataclass the file becomes (`defaults(NodeConfig)`), not here.
Quantities with units ("64MiB", "1Gbit/s", "30s", "02:00") come from protocol.quantities.

Why not msgspec or pydantic (measured with msgspec 0.23): `msgspec.convert` onto the frozen dataclasses
the project passes around (NodeConfig, GatewayConfig, HttpConfig, Scenario, ...) silently ignores unknown
keys (`forbid_unknown_fields` exists only on msgspec Structs), and a float field accepts NaN. Using Structs
would mean a second set of classes beside those dataclasses (their field names differ from the keys:
`trust.clock_skew_seconds` is `NodeConfig.clock_skew`) or rewriting every consumer in the node, the
gateway and the simulator, and the checks that make up most of each reader stay hand-written anyway:
organisation codes, multiaddrs, peer IDs, AE titles, quantities with units, checks between keys, files
named by a key. What a library would bring (types, ranges, unknown keys, key paths in errors) is this
one class.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import tomllib
from collections.abc import Callable, Mapping, MutableMapping
from typing import TypeVar

from protocol import quantities
from protocol.errors import ConfigError, MeshError

T = TypeVar("T")

#: A configuration file larger than this is refused before it is parsed (node.toml is ~6 KiB).
MAX_CONFIG_BYTES = 1 << 20
#: The longest list or array of tables one key may hold.
MAX_ITEMS = 10_000


#: The most parts a dotted key may have (``a.b.c`` has 3). tomllib's memory grows with the square of it:
#: a 200 KB line ``a.a.a. ... = 1`` needs tens of GB.
MAX_KEY_PARTS = 32
#: Strings and comments (an unclosed one runs to the end of its line or the file: a linear scan, never a
#: backtracking one), then what separates one dotted key from the next.
_STRINGS_AND_COMMENTS = re.compile(r'''"""[\s\S]*?(?:"""|\Z)|\'\'\'[\s\S]*?(?:\'\'\'|\Z)|"(?:[^"\\\n]|\\.)*"?|'[^'\n]*'?|#[^\n]*''')
_KEY_SEPARATORS = re.compile(r"[,=\[\]{}\n]")


def _check_dotted_keys(text: str, source: str) -> None:
    """Refuse a dotted key of more than MAX_KEY_PARTS parts before tomllib sees it.

    Strings and comments are set aside; what is left between `,`, `=`, brackets, braces and line ends
    holds at most one key (or one number, whose dot is one), so its dots count that key's parts.
    """
    for run in _KEY_SEPARATORS.split(_STRINGS_AND_COMMENTS.sub('""', text)):
        if run.count(".") >= MAX_KEY_PARTS:
            raise ConfigError(f"{source}: a dotted key of more than {MAX_KEY_PARTS} parts ({run.strip()[:40]}...)")


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


#: The default of a required key.
MISSING: object = _Missing()


def describe(value: object) -> str:
    """What a wrong value is, for an error message: its TOML type and (shortened) text."""
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(value))
    if kind is None:
        kind = "a table" if isinstance(value, dict) else "a list" if isinstance(value, list) else type(value).__name__
    if isinstance(value, (dict, list)):
        return kind
    text = repr(value) if not isinstance(value, bool) else ("true" if value else "false")
    return f"{kind} ({text[:40]}{'...' if len(text) > 40 else ''})"


def parse_toml(data: bytes | str, source: str) -> dict[str, object]:
    """The TOML document in `data` (at most MAX_CONFIG_BYTES), or a ConfigError naming `source`."""
    size = len(data) if isinstance(data, bytes) else len(data.encode("utf-8", "surrogatepass"))
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source}: {size} bytes, more than the {MAX_CONFIG_BYTES} a configuration file may hold")
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    _check_dotted_keys(data, source)
    try:
        return tomllib.loads(data)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses once per nested array or inline table: `a = [[[[...`
        raise ConfigError(f"{source}: not valid TOML: values nested too deeply") from None


def read(data: bytes | str, source: str, build: Callable[[Table], T],
         error: type[ConfigError] = ConfigError) -> T:
    """Parse `data` and hand its root table to `build`; every error is raised as `error`, naming `source`.

    A MeshError other than ConfigError raised by `build` (a domain check given the key, such as
    ``check_org_code(value, key)``) is reported the same way.
    """
    try:
        doc = parse_toml(data, source)
    except ConfigError as exc:
        raise error(str(exc)) from None
    try:
        return build(Table(doc, ""))
    except MeshError as exc:  # ConfigError, or a domain check (check_org_code(value, key)) naming the key
        raise error(f"{source}: {exc}") from None


def defaults(cls: type[object]) -> dict[str, object]:
    """The defaults of a dataclass's fields, by field name: where a reader gets each default from."""
    out: dict[str, object] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]  # a dataclass type, checked at run time
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def parse_value(text: str) -> object:
    """A value written on a command line: a TOML value (``0.3``, ``true``, ``"x"``, ``[1, 2]``), else the text."""
    try:
        return tomllib.loads("v = " + text)["v"]
    except (tomllib.TOMLDecodeError, RecursionError):
        return text


#: What a TOML basic string may not hold raw: the quote, the backslash, control characters but tab, DEL.
_TOML_ESCAPE = re.compile(r'["\\\x00-\x08\x0a-\x1f\x7f]')


def format_value(value: object) -> str:
    """A value as TOML text, for a command line (`parse_value` reads it back): ``"x"``, ``30``, ``true``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"{value!r} cannot be written to a configuration file")
        return repr(value)
    if isinstance(value, str):
        return '"' + _TOML_ESCAPE.sub(lambda m: f"\\u{ord(m.group()):04x}", value) + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    raise ConfigError(f"cannot write {type(value).__name__} as a TOML value")


def assignments(values: Mapping[str, object]) -> list[str]:
    """``KEY=VALUE`` arguments for `meshnode config set` from {dotted key: value}."""
    return [f"{key}={format_value(value)}" for key, value in values.items()]


_PART = re.compile(r"^([A-Za-z_][A-Za-z0-9_-]*)(?:\[(\d+)\])?$")


def set_key(doc: MutableMapping[str, object], key: str, value: object, *, create: bool = True) -> None:
    """Set a dotted key (``trust.roster_refresh_seconds``, ``groups[0].up``) in a parsed TOML document.

    Works on plain dicts (tomllib) and on tomlkit documents (which keep comments). Missing tables are
    created when `create`; an index must name an existing entry of an array of tables.
    """
    parts = key.split(".")
    node: object = doc
    for i, part in enumerate(parts):
        m = _PART.match(part)
        if m is None:
            raise ConfigError(f"{key!r}: {part!r} is not a key")
        name, index = m.group(1), m.group(2)
        last = i == len(parts) - 1
        if not isinstance(node, MutableMapping):
            raise ConfigError(f"{key!r}: {'.'.join(parts[:i])} is not a table")
        if index is not None:
            seq = node.get(name)
            if not isinstance(seq, list) or not int(index) < len(seq):
                raise ConfigError(f"{key!r}: {name}[{index}] does not exist")
            if last:
                seq[int(index)] = value
                return
            node = seq[int(index)]
        elif last:
            node[name] = value
        elif name in node:
            node = node[name]
        elif create:
            node[name] = {}
            node = node[name]
        else:
            raise ConfigError(f"{key!r}: there is no table {'.'.join(parts[:i + 1])}")


def did_you_mean(name: str, known: set[str] | frozenset[str]) -> str:
    """``"; did you mean window_max?"`` for a misspelt key: the closest known key (difflib's ratio of at
    least 0.6, ties broken alphabetically), or ``""`` when none is close."""
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


class Table:
    """One TOML table: every key read is type-checked, every key not read is refused by `finish()`.

    `path` is the table's dotted key (``""`` for the root); errors name ``path.key``.
    """

    def __init__(self, value: object, path: str) -> None:
        if not isinstance(value, dict):
            raise ConfigError(f"{path or 'the file'}: expected a table, got {describe(value)}")
        self.values: dict[str, object] = {str(k): v for k, v in value.items()}
        self.path = path
        self._seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, problem: str) -> ConfigError:
        """An error about key `name` of this table (for checks between keys): ``raise t.error(...)``."""
        return ConfigError(f"{self.key(name)}: {problem}")

    def has(self, name: str) -> bool:
        """Whether the key is there (asking counts as knowing it: `finish()` lists it as known)."""
        self._seen.add(name)
        return name in self.values

    def raw(self, name: str, default: object = MISSING) -> object:
        return self.get(name, default, lambda value, key: value)

    def get(self, name: str, default: object, convert: Callable[[object, str], T]) -> T:
        """The key converted by `convert(value, dotted_key)`, or `default` (MISSING: the key is required).

        A converter raises ConfigError naming the key; another MeshError (a domain check such as
        check_org_code(value, key), which names the key it is given) becomes a ConfigError.
        """
        self._seen.add(name)
        if name not in self.values:
            if default is MISSING:
                raise ConfigError(f"{self.key(name)}: required key is missing")
            return default  # type: ignore[return-value]  # the caller's default, of the caller's type
        try:
            return convert(self.values[name], self.key(name))
        except ConfigError:
            raise
        except MeshError as exc:
            raise ConfigError(str(exc)) from None

    def text(self, name: str, default: object = MISSING, choices: tuple[str, ...] | None = None,
             check: Callable[[str, str], str] | None = None) -> str:
        """A string; one of `choices` if given; passed through `check(value, key)` if given."""
        def convert(value: object, key: str) -> str:
            if not isinstance(value, str):
                raise ConfigError(f"{key}: expected a string, got {describe(value)}")
            if choices is not None and value not in choices:
                raise ConfigError(f"{key}: {value[:40]!r} is not one of {', '.join(choices)}")
            return check(value, key) if check is not None else value
        return self.get(name, default, convert)

    def integer(self, name: str, default: object = MISSING, lo: int = 0, hi: int = 2**62) -> int:
        def convert(value: object, key: str) -> int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{key}: expected an integer in {lo}..{hi}, got {describe(value)}")
            if not lo <= value <= hi:
                raise ConfigError(f"{key}: {value} is outside {lo}..{hi}")
            return value
        return self.get(name, default, convert)

    def number(self, name: str, default: object = MISSING, lo: float = 0.0, hi: float = math.inf) -> float:
        def convert(value: object, key: str) -> float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{key}: expected a number in {lo:g}..{hi:g}, got {describe(value)}")
            if not math.isfinite(value) or not lo <= value <= hi:
                raise ConfigError(f"{key}: {value} is outside {lo:g}..{hi:g}")
            return float(value)
        return self.get(name, default, convert)

    def boolean(self, name: str, default: object = MISSING) -> bool:
        def convert(value: object, key: str) -> bool:
            if not isinstance(value, bool):
                raise ConfigError(f"{key}: expected true or false, got {describe(value)}")
            return value
        return self.get(name, default, convert)

    def size(self, name: str, default: object = MISSING) -> float:
        return self.get(name, default, quantities.size)

    def rate(self, name: str, default: object = MISSING) -> float:
        return self.get(name, default, quantities.rate)

    def duration(self, name: str, default: object = MISSING) -> float:
        return self.get(name, default, quantities.duration)

    def clock(self, name: str, default: object = MISSING) -> float:
        return self.get(name, default, quantities.clock)

    def weekday(self, name: str, default: object = MISSING) -> int | None:
        return self.get(name, default, quantities.weekday)

    def _list(self, value: object, key: str, what: str) -> list[object]:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected {what}, got {describe(value)}")
        if len(value) > MAX_ITEMS:
            raise ConfigError(f"{key}: {len(value)} items, more than the {MAX_ITEMS} allowed")
        return value

    def numbers(self, name: str, length: int, default: object = MISSING, hi: float | None = None) -> tuple[float, ...]:
        """A list of `length` finite, non-negative numbers, not all zero (each at most `hi` when given)."""
        def convert(value: object, key: str) -> tuple[float, ...]:
            items = self._list(value, key, f"a list of {length} numbers")
            if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in items):
                raise ConfigError(f"{key}: expected a list of {length} numbers")
            if len(items) != length:
                raise ConfigError(f"{key}: expected {length} numbers, got {len(items)}")
            floats = tuple(float(v) for v in items)  # type: ignore[arg-type]  # checked just above
            if any(not math.isfinite(v) or v < 0 for v in floats):
                raise ConfigError(f"{key}: values must be finite and not negative")
            if hi is not None and any(v > hi for v in floats):
                raise ConfigError(f"{key}: values must be at most {hi:.0f}")
            if sum(floats) <= 0:
                raise ConfigError(f"{key}: at least one value must be positive")
            return floats
        return self.get(name, default, convert)

    def texts(self, name: str, default: object = (), choices: tuple[str, ...] | None = None,
              check: Callable[[str, str], str] | None = None, *, single: bool = False,
              nonempty: bool = False) -> tuple[str, ...]:
        """A list of strings (or, with `single`, one string standing for a list of one).

        Each item is one of `choices` if given and passed through `check(item, "key[i]")` if given.
        """
        def convert(value: object, key: str) -> tuple[str, ...]:
            if single and isinstance(value, str):
                value = [value]
            items = self._list(value, key, "a name or a list of names" if single else "a list of strings")
            if not all(isinstance(v, str) for v in items):
                raise ConfigError(f"{key}: expected {'a name or ' if single else ''}a list of strings")
            out = tuple(str(v) for v in items)
            if nonempty and not out:
                raise ConfigError(f"{key}: must not be empty")
            if choices is not None:
                bad = sorted(set(out) - set(choices))
                if bad:
                    raise ConfigError(f"{key}: unknown value(s) {bad}; expected some of {list(choices)}")
            if check is not None:
                out = tuple(check(v, f"{key}[{i}]") for i, v in enumerate(out))
            return out
        return self.get(name, default, convert)

    def names(self, name: str, default: object = MISSING) -> tuple[str, ...]:
        """A string or a list of strings."""
        return self.texts(name, default, single=True)

    def table(self, name: str, required: bool = False) -> Table:
        """A sub-table (``[name]`` or ``name = { ... }``); an absent optional one reads as empty."""
        value = self.raw(name, MISSING if required else {})
        return Table(value, self.key(name))

    def tables(self, name: str) -> list[Table]:
        """An array of tables (``[[name]]``), each named ``name[i]`` in errors; absent: none."""
        value = self.raw(name, [])
        items = self._list(value, self.key(name), f"an array of tables (write [[{self.key(name)}]])")
        return [Table(v, f"{self.key(name)}[{i}]") for i, v in enumerate(items)]

    def finish(self) -> None:
        """Refuse the keys nobody read, naming the first and the keys this table knows."""
        unknown = sorted(set(self.values) - self._seen)
        if unknown:
            known = ", ".join(sorted(self._seen)) or "none"
            also = f"; also unknown: {', '.join(unknown[1:])}" if unknown[1:] else ""
            raise ConfigError(f"{self.key(unknown[0])}: unknown key (known: {known}){also}"
                              f"{did_you_mean(unknown[0], self._seen)}")
