"""directory.toml through the one reader: round trip, and every bad input one ConfigError naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol.errors import ConfigError
from protocol.keys import SigningKey
from tools.directory.home import DirectoryConfig, DirectoryHome, parse_directory_config

KEY = SigningKey(bytes(range(32))).public_key
CONFIG = DirectoryConfig(("/ip4/127.0.0.1/tcp/4001",), (KEY,), 30)


def test_round_trip() -> None:
    assert parse_directory_config(CONFIG.render(), "directory.toml") == CONFIG
    default_skew = parse_directory_config(CONFIG.render().replace("clock_skew_seconds = 30\n", ""), "d.toml")
    assert default_skew == DirectoryConfig(CONFIG.listen, CONFIG.authority_keys)


@pytest.mark.parametrize("old, new, message", [
    ("clock_skew_seconds = 30", "clock_skew_seconds = 86401", "d.toml: directory.clock_skew_seconds: 86401 is outside"),
    ("clock_skew_seconds = 30", 'clock_skew_seconds = "30"', "directory.clock_skew_seconds: expected an integer"),
    ("clock_skew_seconds = 30", "clock_skew = 30", "d.toml: directory.clock_skew: unknown key (known: "),
    ('listen = ["/ip4/127.0.0.1/tcp/4001"]', "listen = []", "d.toml: directory.listen: must not be empty"),
    ('listen = ["/ip4/127.0.0.1/tcp/4001"]', 'listen = "/ip4/127.0.0.1/tcp/4001"', "directory.listen: expected a list"),
    ('listen = ["/ip4/127.0.0.1/tcp/4001"]', 'listen = ["localhost:4001"]', "directory.listen[0]: 'localhost:4001' "
                                                                           "is not a multiaddr"),
    ('listen = ["/ip4/127.0.0.1/tcp/4001"]\n', "", "d.toml: directory.listen: required key is missing"),
    (f'authority_keys = ["{KEY.peer_id}"]', "authority_keys = []", "directory.authority_keys: must not be empty"),
    (f'authority_keys = ["{KEY.peer_id}"]', 'authority_keys = ["QmNotAKey0"]', "directory.authority_keys[0]: "),
    ("clock_skew_seconds = 30", "clock_skew_seconds = 30\n[extra]", "d.toml: extra: unknown key (known: directory)"),
    ("[directory]", "[directoryy]", "d.toml: directory: required key is missing"),
    ("[directory]", "[directory", "d.toml: not valid TOML"),
])
def test_bad_directory_config_is_named(old: str, new: str, message: str) -> None:
    text = CONFIG.render()
    assert old in text
    with pytest.raises(ConfigError) as err:
        parse_directory_config(text.replace(old, new), "d.toml")
    assert message in str(err.value), str(err.value)


def test_home_refuses_missing_and_oversized_config(tmp_path: Path) -> None:
    home = DirectoryHome(tmp_path)
    with pytest.raises(ConfigError, match="run `meshadmin directory init` first"):
        home.config()
    home.config_path.write_bytes(CONFIG.render().encode() + b"#" * (1 << 20))
    with pytest.raises(ConfigError, match="is larger than 1048576 bytes"):
        home.config()
    home.config_path.write_text(CONFIG.render())
    assert home.config() == CONFIG
