"""NodeHome.set_config: node.toml edited through the node's own reader (comments kept, atomic, nothing
written when the result is invalid), as `meshnode config set` and the demo use it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from meshnode.config import ConfigError, NodeConfig, load_config
from meshnode.home import NodeHome


@pytest.fixture
def home(tmp_path: Path) -> NodeHome:
    return NodeHome.create(tmp_path / "node", NodeConfig(org="RGT"))


def test_values_are_set_and_comments_kept(home: NodeHome) -> None:
    before = home.config_path.read_text()
    config = home.set_config({"limits.upload_mb_per_s": 30, "dimse.enabled": True, "dimse.port": 0,
                              "trust.roster_refresh_seconds": 2, "http.listen": "127.0.0.1:8042"})
    assert config == load_config(home.config_path)
    assert (config.upload_mb_per_s, config.gateway.dimse.enabled, config.gateway.dimse.port) == (30.0, True, 0)
    assert config.roster_refresh == 2 and config.http.listen == "127.0.0.1:8042"
    after = home.config_path.read_text()
    comments = [line for line in before.splitlines() if line.startswith("#")]
    assert comments and all(line in after.splitlines() for line in comments)
    assert after.count("port = ") == before.count("port = ")  # the [dimse] port, no second one


@pytest.mark.parametrize("values, message", [
    ({"limits.upload_mb_per_s": -1}, "limits.upload_mb_per_s: -1 is outside 0..100000"),
    ({"limits.upload": 1}, "limits.upload: unknown key \\(known: "),
    ({"port": 0}, "node.toml: port: unknown key"),  # a bare key is not guessed into a table
    ({"dimse.enabled": "true"}, "dimse.enabled: expected true or false, got a string"),
    ({"node.org": "not an org"}, "node.org: organisation code"),
    ({"webhook[0].url": "https://x"}, "webhook\\[0\\] does not exist"),
    ({"node.org.x": 1}, "node.org is not a table"),
    ({"http": 1}, "http: expected a table"),
])
def test_invalid_changes_are_refused_and_write_nothing(home: NodeHome, values: dict[str, object],
                                                       message: str) -> None:
    before = home.config_path.read_bytes()
    with pytest.raises(ConfigError, match=message):
        home.set_config(values)
    assert home.config_path.read_bytes() == before
    assert not [p for p in home.path.iterdir() if p.name.startswith(".node.toml.tmp")]


def test_an_invalid_file_can_be_repaired_but_not_parsed_if_not_toml(home: NodeHome) -> None:
    text = home.config_path.read_text().replace("max_streams_per_peer = 64", "max_streams_per_peer = 0")
    home.config_path.write_text(text)
    with pytest.raises(ConfigError):
        home.config()
    assert home.set_config({"limits.max_streams_per_peer": 8}).max_streams_per_peer == 8
    home.config_path.write_text("[node\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        home.set_config({"limits.max_streams_per_peer": 8})
    home.config_path.write_bytes(b"#" * (2 << 20))
    with pytest.raises(ConfigError, match="larger than 1048576 bytes"):
        home.set_config({"limits.max_streams_per_peer": 8})


def test_file_mode_is_kept_and_missing_home_is_named(home: NodeHome, tmp_path: Path) -> None:
    os.chmod(home.config_path, 0o600)
    home.set_config({"node.auto_fetch": False})
    assert home.config_path.stat().st_mode & 0o777 == 0o600 and not home.config().auto_fetch
    with pytest.raises(ConfigError, match="run `meshnode init` first"):
        NodeHome(tmp_path / "nowhere").set_config({"node.auto_fetch": False})


def test_concurrent_edits_do_not_lose_each_other(home: NodeHome) -> None:
    """Two `meshnode config set` at once (an operator's and a script's): each read-modify-write must see
    the other's result, or one change silently disappears."""
    import threading

    keys = ["limits.max_streams_per_peer", "limits.max_requests_per_second", "limits.request_timeout_seconds",
            "trust.roster_refresh_seconds", "trust.clock_skew_seconds", "dimse.max_associations"]
    errors: list[BaseException] = []

    def worker(key: str) -> None:
        try:
            for value in range(1, 11):
                home.set_config({key: value})
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    config = home.config()
    assert (config.max_streams_per_peer, config.max_requests_per_second, config.request_timeout,
            config.roster_refresh, config.clock_skew, config.gateway.dimse.max_associations) == (10,) * 6
