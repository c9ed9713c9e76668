"""node.toml's [notify]: read with the one config reader; mistakes are a ConfigError naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshnode.config import ConfigError, NodeConfig, parse_config
from meshnode.notify.config import NotifyConfig
from protocol.keys import SigningKey

AUTHORITY = SigningKey(bytes(range(32))).public_key
BASE = NodeConfig(org="RXX", authority_keys=(AUTHORITY,)).render()
SECTION = """
[notify]
host = "smtp.rxx.nhs.uk"
from_address = "imaging-mesh@rxx.nhs.uk"
org_address = "pacs-team@rxx.nhs.uk"
"""


def test_off_unless_the_section_is_there_and_init_writes_it_commented() -> None:
    config = parse_config(BASE)
    assert config.notify == NotifyConfig() and not config.notify.enabled
    assert "# [notify]" in BASE


def test_defaults_starttls_required_every_priority() -> None:
    notify = parse_config(BASE + SECTION).notify
    assert notify.enabled and notify.starttls and notify.port == 587
    assert notify.priorities == ("stat", "urgent", "routine") and notify.attention_domains == ()


def test_rendered_parses_back_to_itself(tmp_path: Path) -> None:
    (tmp_path / "smtp.password").write_text("s3cret\n", encoding="utf-8")
    (tmp_path / "ca.pem").write_text("-", encoding="utf-8")
    text = BASE + SECTION + ('port = 2525\nusername = "gw"\npassword_file = "smtp.password"\nca = "ca.pem"\n'
                             'priorities = ["stat"]\nattention_domains = ["rxx.nhs.uk"]\n')
    config = parse_config(text, home=tmp_path)
    assert config.notify.password == "s3cret" and "s3cret" not in repr(config.notify)
    assert parse_config(config.render(), home=tmp_path) == config


@pytest.mark.parametrize(("extra", "message"), [
    ('starttls = false\nusername = "gw"\npassword_file = "p"\n', "only over STARTTLS"),
    ('username = "gw"\n', "go together"),
    ('password_file = "missing.password"\n', "go together"),
    ('priorities = ["soon"]\n', "notify.priorities"),
    ('attention_domains = ["RXX.nhs.uk"]\n', "attention_domains"),
    ('attention_domains = ["*.nhs.uk"]\n', "attention_domains"),
    ('ca = "nope.pem"\n', "notify.ca"),
    ('port = 0\n', "notify.port"),
    ('max_attempts = 0\n', "notify.max_attempts"),
    ('reply_to = "x@y.example"\n', "reply_to"),
])
def test_mistakes_are_named(extra: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(BASE + SECTION + extra, home=tmp_path)


@pytest.mark.parametrize(("key", "value"), [
    ("org_address", '"pacs-team@rxx.nhs.uk\\r\\nBcc: everyone@evil.example"'),
    ("org_address", '"Pacs Team <pacs-team@rxx.nhs.uk>"'),
    ("from_address", '"imaging mesh@rxx.nhs.uk"'),
    ("from_address", '"nobody"'),
    ("host", '"smtp.rxx.nhs.uk\\r\\nEHLO x"'),
])
def test_addresses_and_host_are_checked(key: str, value: str) -> None:
    section = "\n".join(f"{key} = {value}" if line.startswith(key + " ") else line for line in SECTION.splitlines())
    with pytest.raises(ConfigError, match=f"notify.{key}"):
        parse_config(BASE + section + "\n")


def test_required_keys() -> None:
    for key in ("host", "from_address", "org_address"):
        section = "\n".join(line for line in SECTION.splitlines() if not line.startswith(key + " "))
        with pytest.raises(ConfigError, match=f"notify.{key}: required"):
            parse_config(BASE + section + "\n")
