"""[http] and [[webhook]] in node.toml: defaults, round trip, every bad value named."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol.errors import ConfigError
from meshnode.config import NodeConfig, parse_config

BASE = NodeConfig(org="RGT").render()


def test_init_writes_commented_defaults_and_http_is_off() -> None:
    assert "# [http]" in BASE and "# [[webhook]]" in BASE
    config = parse_config(BASE)
    assert not config.http.enabled and config.http.webhooks == ()
    assert config.http.max_request_mb == 1024 and config.http.public_status


def test_round_trip(tmp_path: Path) -> None:
    (tmp_path / "hook.secret").write_text("a-long-enough-secret\n")
    text = BASE + (
        '\n[http]\nlisten = "0.0.0.0:8443"\nmax_request_mb = 10\npublic_status = false\n'
        'tls_certificate = "c.pem"\ntls_key = "k.pem"\npublic_url = "https://gw.example/"\n'
        '[[webhook]]\nurl = "https://h.example/x"\nsecret_file = "hook.secret"\nevents = ["arrived"]\n'
        'priorities = ["stat", "urgent"]\norgs = ["RJ1"]\n'
        '[[webhook]]\nurl = "http://127.0.0.1:9/y"\nsecret = "0123456789abcdef"\n')
    config = parse_config(text, home=tmp_path)
    http = config.http
    assert http.host_port == ("0.0.0.0", 8443) and http.max_request_bytes == 10 << 20
    assert http.public_url == "https://gw.example" and not http.public_status
    assert http.webhooks[0].secret == "a-long-enough-secret" and http.webhooks[0].events == ("arrived",)
    assert http.webhooks[0].wants("arrived", "RJ1", "stat", "")
    assert not http.webhooks[0].wants("arrived", "RAJ", "stat", "")
    assert not http.webhooks[0].wants("delivered", "RJ1", "stat", "")
    assert http.webhooks[1].events == ("arrived", "delivered", "failed")
    again = parse_config(config.render(), home=tmp_path)
    assert again.http == http


@pytest.mark.parametrize("extra, message", [
    ('[http]\nlisten = "nonsense"\n', "HOST:PORT"),
    ('[http]\nlisten = "127.0.0.1:99999"\n', "65535"),
    ('[http]\nlisten = "127.0.0.1:0"\nverbose = true\n', "http.verbose: unknown key (known: listen, "),
    ('[http]\nmax_request_mb = 0\n', "max_request_mb"),
    ('[http]\npublic_status = "yes"\n', "public_status"),
    ('[http]\ntls_certificate = "c.pem"\n', "go together"),
    ('[http]\npublic_url = "ftp://x"\n', "public_url"),
    ('[http]\n[[webhook]]\nurl = "https://x"\nsecret = "short"\n', "at least 16"),
    ('[[webhook]]\nurl = "mailto:x"\nsecret = "0123456789abcdef"\n', "http:// or https://"),
    ('[[webhook]]\nurl = "https://x"\nsecret = "0123456789abcdef"\nevents = ["arrival"]\n', "unknown value(s)"),
    ('[[webhook]]\nurl = "https://x"\nsecret = "0123456789abcdef"\nretries = 3\n', "webhook[0].retries: unknown key (known: events, "),
    ('[[webhook]]\nurl = "https://x"\nsecret_file = "missing"\n', "cannot read secret_file"),
    ('[[webhook]]\nurl = "https://x"\nsecret = "0123456789abcdef"\nsecret_file = "f"\n', "not both"),
    ('[webhook]\nurl = "https://x"\n', "array of tables"),
    ('[http]\nmax_results = "10"\n', "http.max_results: expected an integer in 1..100000, got a string ('10')"),
    ('[http]\nsession_hours = 100000\n', "http.session_hours: 100000 is outside 1..720"),
    ('[http]\nlisten = ["127.0.0.1:1"]\n', "http.listen: expected a string, got a list"),
    ('[[webhook]]\nurl = 3\nsecret = "0123456789abcdef"\n', "webhook[0].url: expected a string, got an integer"),
    ('[[webhook]]\nurl = "https://x"\nsecret = "0123456789abcdef"\nevents = "arrived"\n',
     "webhook[0].events: expected a list of strings"),
    ('[[webhook]]\nurl = "https://x"\nsecret = "0123456789abcdef"\nmax_attempts = 0\n',
     "webhook[0].max_attempts: 0 is outside 1..100"),
    ('[[webhook]]\nurl = "https://x"\n[[webhook]]\nurl = "https://y"\nsecret = "0123456789abcdef"\nx = 1\n',
     "webhook[0].secret: the HMAC secret must be at least 16 characters"),
    ('[htp]\nlisten = "x"\n', "htp: unknown key (known: audit_repository, caller, conflicts, control, dimse, directory, http, "),
])
def test_bad_settings_are_named(extra: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(BASE + "\n" + extra, home=tmp_path)
    assert message in str(err.value)


def test_oversized_webhook_settings_are_refused() -> None:
    hooks = "".join('[[webhook]]\nurl = "https://x"\nsecret = "0123456789abcdef"\n' for _ in range(10_001))
    with pytest.raises(ConfigError, match="^node.toml: webhook: 10001 items, more than the 10000 allowed"):
        parse_config(BASE + "\n" + hooks)
    with pytest.raises(ConfigError, match="^node.toml: \\d+ bytes, more than the 1048576"):
        parse_config(BASE + "\n# " + "x" * (1 << 20))
