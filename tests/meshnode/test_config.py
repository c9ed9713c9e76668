"""node.toml through the one reader: defaults round-trip, every malformed, unknown, mistyped, out-of-range or
oversized input is one ConfigError naming the file and the dotted key, and nothing else escapes."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshnode.config import ConfigError, NodeConfig, load_config, parse_config
from protocol.keys import SigningKey

AUTHORITY = SigningKey(bytes(range(32))).public_key
BASE = NodeConfig(org="RGT", authority_keys=(AUTHORITY,)).render()


def _set(key: str, value: str, text: str = BASE) -> str:
    lines = text.splitlines()
    hits = [i for i, line in enumerate(lines) if line.split("=")[0].strip() == key]
    assert hits, key
    lines[hits[0]] = f"{key} = {value}"
    return "\n".join(lines) + "\n"


def test_rendered_config_parses_back_to_itself() -> None:
    config = NodeConfig(org="RGT", authority_keys=(AUTHORITY,), address_record_ttl=3600, roster_refresh=5,
                        max_streams_per_peer=8, upload_mb_per_s=2.5, auto_fetch=False)
    assert parse_config(config.render()) == config


def test_render_keeps_the_address_record_ttl() -> None:
    """render() wrote `address_record_ttl_seconds = 86400` whatever the config said (a default stated twice)."""
    config = NodeConfig(org="RGT", address_record_ttl=3600)
    assert parse_config(config.render()).address_record_ttl == 3600


@pytest.mark.parametrize("key, value, message", [
    ("org", '"rgt"', "node.org: organisation code must be"),
    ("org", "42", "node.org: expected a string, got an integer (42)"),
    ("listen", '"/ip4/127.0.0.1/tcp/0"', "node.listen: expected a list of strings, got a string"),
    ("listen", '["not a multiaddr"]', "node.listen[0]: 'not a multiaddr' is not a multiaddr"),
    ("auto_fetch", '"yes"', "node.auto_fetch: expected true or false, got a string ('yes')"),
    ("address", "1", "directory.address: expected a string, got an integer (1)"),
    ("address", '"dir.example"', "directory.address: 'dir.example' is not a multiaddr"),
    ("authority_keys", '["12D3KooWnope"]', "trust.authority_keys[0]: "),
    ("authority_keys", '["' + "1" * 5000 + '"]', "trust.authority_keys[0]: peer ID too long"),
    ("clock_skew_seconds", "-1", "trust.clock_skew_seconds: -1 is outside 0..86400"),
    ("clock_skew_seconds", "1e3", "trust.clock_skew_seconds: expected an integer in 0..86400, got a number"),
    ("address_record_ttl_seconds", "59", "trust.address_record_ttl_seconds: 59 is outside 60..2592000"),
    ("roster_refresh_seconds", "0", "trust.roster_refresh_seconds: 0 is outside 1..86400"),
    ("max_streams_per_peer", "4097", "limits.max_streams_per_peer: 4097 is outside 1..4096"),
    ("max_streams_per_peer", "true", "limits.max_streams_per_peer: expected an integer in 1..4096, got a boolean"),
    ("max_requests_per_second", "9223372036854775807", "limits.max_requests_per_second: 9223372036854775807 is "
                                                         "outside 1..100000"),
    ("request_timeout_seconds", '"30s"', "limits.request_timeout_seconds: expected an integer in 1..3600"),
    ("upload_mb_per_s", "nan", "limits.upload_mb_per_s: nan is outside 0..100000"),
    ("upload_mb_per_s", "-1", "limits.upload_mb_per_s: -1 is outside 0..100000"),
    ("upload_mb_per_s", "inf", "limits.upload_mb_per_s: inf is outside 0..100000"),
])
def test_bad_values_are_named(key: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(_set(key, value))
    assert str(err.value).startswith("node.toml: ") and message in str(err.value), str(err.value)


@pytest.mark.parametrize("text, message", [
    ("", "node.toml: node.org: required key is missing"),
    ("[node]\n", "node.toml: node.org: required key is missing"),
    ('[node]\norg = "RGT"\norgs = "X"\n', "node.toml: node.orgs: unknown key (known: auto_fetch, listen, org)"),
    ('[node]\norg = "RGT"\n[limits]\nmax_stream_per_peer = 1\n', "limits.max_stream_per_peer: unknown key"),
    ('[node]\norg = "RGT"\n[trust]\nauthority_key = []\n', "trust.authority_key: unknown key (known: "),
    ('[node]\norg = "RGT"\n[nodes]\n', "node.toml: nodes: unknown key (known: audit_repository, "),
    ('[node]\norg = "RGT"\n[[node]]\n', "node.toml: not valid TOML"),
    ("node = 1\n", "node.toml: node: expected a table, got an integer (1)"),
    ('[node]\norg = "RGT"\norg = "RJ1"\n', "node.toml: not valid TOML"),
    ("[node\norg = 'RGT'\n", "node.toml: not valid TOML"),
    ('[node]\norg = "RGT"\nlisten = ["/ip4/1.2.3.4/tcp/1", 5]\n', "node.listen: expected a list of strings"),
    ('[node]\norg = "RGT"\n[limits]\nupload_mb_per_s = [1]\n', "limits.upload_mb_per_s: expected a number"),
    ('[node]\norg = "RGT"\nlisten = [' + ", ".join(['"/ip4/1.2.3.4/tcp/1"'] * 10_001) + "]\n",
     "node.listen: 10001 items, more than the 10000 allowed"),
])
def test_malformed_files_are_named(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(text)
    assert message in str(err.value), str(err.value)


def test_load_config_refuses_oversized_binary_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    with pytest.raises(ConfigError, match="no configuration at .*; run `meshnode init` first"):
        load_config(path)
    path.write_bytes(BASE.encode() + b"#" * (2 << 20))
    with pytest.raises(ConfigError, match="node.toml is larger than 1048576 bytes"):
        load_config(path)
    path.write_bytes(BASE.encode() + b"# \xff\xfe\n")
    with pytest.raises(ConfigError, match="node.toml: not UTF-8 text"):
        load_config(path)
    path.write_text(BASE)
    assert load_config(path).authority_keys == (AUTHORITY,)


def test_node_config_checks_what_it_is_built_from() -> None:
    with pytest.raises(ConfigError, match="organisation code"):
        NodeConfig(org="not an org")
