"""The one TOML reader (protocol.config_reader): every malformed, unknown, mistyped or oversized input is a
ConfigError naming the file and the dotted key; nothing else escapes."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.config_reader import (
    MAX_CONFIG_BYTES,
    MAX_ITEMS,
    Table,
    assignments,
    defaults,
    format_value,
    parse_value,
    read,
    set_key,
)
from protocol.errors import ConfigError, MeshError


@dataclass(frozen=True)
class Limits:
    streams: int = 64
    timeout: float = 30.0
    names: tuple[str, ...] = ()
    on: bool = True


def build(root: Table) -> Limits:
    d = defaults(Limits)
    t = root.table("limits")
    out = Limits(streams=t.integer("streams", d["streams"], 1, 4096), timeout=t.duration("timeout", d["timeout"]),
                 names=t.texts("names", d["names"]), on=t.boolean("on", d["on"]))
    t.finish()
    root.finish()
    return out


def test_defaults_come_from_the_dataclass_and_units_are_read() -> None:
    assert read("", "x.toml", build) == Limits()
    assert read('[limits]\nstreams = 8\ntimeout = "2min"\nnames = ["a"]\n', "x.toml", build) == \
        Limits(8, 120.0, ("a",), True)


@pytest.mark.parametrize("text, message", [
    ("[limits\n", "x.toml: not valid TOML"),
    ("[limits]\nstreams = 1\nstreams = 2\n", "x.toml: not valid TOML"),
    ("[limits]\nstreams = 0\n", "x.toml: limits.streams: 0 is outside 1..4096"),
    ("[limits]\nstreams = 99999999999999999\n", "limits.streams: 99999999999999999 is outside 1..4096"),
    ('[limits]\nstreams = "8"\n', "x.toml: limits.streams: expected an integer in 1..4096, got a string ('8')"),
    ("[limits]\nstreams = true\n", "limits.streams: expected an integer in 1..4096, got a boolean (true)"),
    ("[limits]\nstreams = 1.5\n", "limits.streams: expected an integer"),
    ("[limits]\non = 1\n", "x.toml: limits.on: expected true or false, got an integer (1)"),
    ('[limits]\ntimeout = "soon"\n', "x.toml: limits.timeout: not a duration: 'soon'"),
    ('[limits]\ntimeout = -1\n', "limits.timeout: a duration cannot be negative"),
    ("[limits]\ntimeout = nan\n", "limits.timeout: must be a finite number"),
    ("[limits]\nnames = [1]\n", "limits.names: expected a list of strings"),
    ('[limits]\nnames = "a"\n', "limits.names: expected a list of strings, got a string ('a')"),
    ("[limits]\nstream = 8\n", "x.toml: limits.stream: unknown key (known: names, on, streams, timeout)"),
    ("[limits]\nzz = 1\naa = 2\n", "limits.aa: unknown key (known: names, on, streams, timeout); also unknown: zz"),
    ("[limts]\n", "x.toml: limts: unknown key (known: limits)"),
    ("limits = 3\n", "x.toml: limits: expected a table, got an integer (3)"),
    ("[[limits]]\nstreams = 1\n", "x.toml: limits: expected a table, got a list"),
    ('[limits]\nnames = ["' + "x" * 200 + '", 3]\n', "limits.names: expected a list of strings"),
])
def test_bad_input_is_one_error_naming_file_and_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        read(text, "x.toml", build)
    assert message in str(err.value), str(err.value)
    assert type(err.value) is ConfigError


def test_long_values_are_shortened_in_messages() -> None:
    with pytest.raises(ConfigError) as err:
        read('[limits]\nstreams = "' + "A" * 10_000 + '"\n', "x.toml", build)
    assert len(str(err.value)) < 200


def test_oversized_and_binary_files_are_refused_before_parsing() -> None:
    big = "# " + "x" * MAX_CONFIG_BYTES + "\n"
    with pytest.raises(ConfigError, match="more than the 1048576 a configuration file may hold"):
        read(big, "x.toml", build)
    with pytest.raises(ConfigError, match="more than the 1048576"):
        read(big.encode(), "x.toml", build)
    with pytest.raises(ConfigError, match="x.toml: not UTF-8 text"):
        read(b"[limits]\nstreams = \xff\n", "x.toml", build)
    with pytest.raises(ConfigError, match="x.toml: not valid TOML"):
        read("\x00", "x.toml", build)


@pytest.mark.parametrize("text", ["a = " + "[" * 100_000 + "]" * 100_000,
                                  "a = " + "{b = " * 100_000 + "1" + "}" * 100_000])
def test_deep_nesting_is_a_config_error(text: str) -> None:
    """tomllib recurses per nesting level: a RecursionError escaped every reader (and the CLIs' one-line errors)."""
    with pytest.raises(ConfigError, match="x.toml: not valid TOML: values nested too deeply"):
        read(text, "x.toml", build)
    assert parse_value("[" * 100_000) == "[" * 100_000


@pytest.mark.parametrize("text", [
    "a." * 500_000 + "b = 1",  # tomllib needs memory in the square of the parts: ~25 TB for this line
    '"a".' * 250_000 + "b = 1",
    "a . " * 250_000 + "b = 1",
    "[" + "a." * 500_000 + "b]",
    "[[" + "a." * 500_000 + "b]]",
    "t = { " + "a." * 500_000 + "b = 1 }",
    "a" + ".1" * 500_000 + " = 1",
    ".".join(["k"] * 33) + " = 1",
])
def test_long_dotted_keys_are_refused_before_parsing(text: str) -> None:
    with pytest.raises(ConfigError, match="x.toml: a dotted key of more than 32 parts"):
        read(text, "x.toml", build)


@pytest.mark.parametrize("text", [
    ".".join(["k"] * 32) + " = 1",
    "a = [" + ", ".join(["0.5"] * 50_000) + "]",
    'a = "' + "1." * 50_000 + '"',
    "a = '" + "1." * 50_000 + "'",
    'a = """\n' + "x." * 50_000 + '\n"""',
    "# " + "x." * 50_000,
    'a = "\\\\"' + "\n# " + "." * 100,
    'a = "x\\"y.' + "." * 100 + '"',
])
def test_dots_in_values_strings_and_comments_are_not_keys(text: str) -> None:
    read(text, "x.toml", lambda root: root)


def test_long_lists_are_refused() -> None:
    text = "[limits]\nnames = [" + ", ".join('"a"' for _ in range(MAX_ITEMS + 1)) + "]\n"
    with pytest.raises(ConfigError, match=f"limits.names: {MAX_ITEMS + 1} items, more than the {MAX_ITEMS}"):
        read(text, "x.toml", build)
    with pytest.raises(ConfigError, match="more than the"):
        Table({"t": [{}] * (MAX_ITEMS + 1)}, "").tables("t")


def test_domain_errors_in_build_name_the_file() -> None:
    def failing(root: Table) -> None:
        raise MeshError("limits.org: not an organisation code")

    with pytest.raises(ConfigError, match="^x.toml: limits.org: not an organisation code$"):
        read("", "x.toml", failing)


def test_a_subclass_can_be_raised_for_a_kind_of_file() -> None:
    class ScenarioLike(ConfigError):
        pass

    with pytest.raises(ScenarioLike, match="x.toml: limits.streams"):
        read("[limits]\nstreams = 0\n", "x.toml", build, ScenarioLike)
    with pytest.raises(ScenarioLike, match="not valid TOML"):
        read("[", "x.toml", build, ScenarioLike)


def test_set_key_and_parse_value() -> None:
    doc: dict[str, object] = {"a": {"b": 1}, "arr": [{"x": 1}]}
    set_key(doc, "a.b", 2)
    set_key(doc, "c.d", parse_value("true"))
    set_key(doc, "arr[0].x", parse_value('"y"'))
    assert doc == {"a": {"b": 2}, "c": {"d": True}, "arr": [{"x": "y"}]}
    assert parse_value("1Gbit/s") == "1Gbit/s" and parse_value("[1, 2]") == [1, 2]
    for key, message in (("arr[3].x", "arr\\[3\\] does not exist"), ("a.b.c", "a.b is not a table"),
                         ("a..b", "'' is not a key"), ("a b", "is not a key")):
        with pytest.raises(ConfigError, match=message):
            set_key(doc, key, 1)
    with pytest.raises(ConfigError, match="there is no table x"):
        set_key(doc, "x.y", 1, create=False)


@given(st.recursive(st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text()
                    | st.floats(allow_nan=False, allow_infinity=False),
                    lambda inner: st.lists(inner, max_size=4), max_leaves=8))
def test_format_value_reads_back(value: object) -> None:
    """What the emulation passes to `meshnode config set` is read back as the same value (quotes,
    backslashes, control characters, DEL and non-ASCII text included)."""
    assert parse_value(format_value(value)) == value


def test_assignments() -> None:
    assert assignments({"limits.upload_mb_per_s": 2.5, "dimse.enabled": True, "http.listen": "127.0.0.1:1",
                        "node.listen": ["/ip4/1.2.3.4/tcp/1"]}) == [
        "limits.upload_mb_per_s=2.5", "dimse.enabled=true", 'http.listen="127.0.0.1:1"',
        'node.listen=["/ip4/1.2.3.4/tcp/1"]']
    with pytest.raises(ConfigError):
        format_value(float("nan"))
    with pytest.raises(ConfigError):
        format_value({"a": 1})


@pytest.mark.parametrize(("text", "message"), [
    ("[limits]\nstram = 8\n", "x.toml: limits.stram: unknown key (known: names, on, streams, timeout); did you mean streams?"),
    ("[limts]\n", "x.toml: limts: unknown key (known: limits); did you mean limits?"),
    ("[limits]\ntimeuot = 1\n", "did you mean timeout?"),
])
def test_a_misspelt_key_names_the_closest_known_one(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        read(text, "x.toml", build)
    assert message in str(err.value), str(err.value)


def test_no_suggestion_when_no_known_key_is_close() -> None:
    with pytest.raises(ConfigError) as err:
        read("[limits]\nqqqq = 8\n", "x.toml", build)
    assert "did you mean" not in str(err.value)
