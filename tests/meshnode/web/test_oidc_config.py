"""[http] session settings and the [http.oidc] table: read, rendered back, and mistakes named."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshnode.config import parse_config
from protocol.errors import ConfigError
from tests.meshnode.web.test_config import BASE

OIDC = ('[http]\nlisten = "127.0.0.1:8731"\nsession_idle_seconds = 600\nlogin_failures_per_address = 500\n'
        '[http.oidc]\n'
        'issuer = "https://login.example.nhs.uk/realms/staff/"\nclient_id = "meshnode-rgt"\n'
        'client_secret_file = "oidc.secret"\nredirect_url = "https://gw.example/ui/oidc/callback"\n'
        'role_claim = "groups"\n[http.oidc.roles]\n"pacs-team" = "pacs"\n"admins" = ["admin", "auditor"]\n')


def test_oidc_round_trip(tmp_path: Path) -> None:
    (tmp_path / "oidc.secret").write_text("the-client-secret\n")
    config = parse_config(BASE + OIDC, home=tmp_path)
    oidc = config.http.oidc
    assert config.http.session_idle_seconds == 600 and config.http.login_failures_per_address == 500
    assert config.http.login_failures_per_user == 5
    assert oidc is not None and oidc.issuer == "https://login.example.nhs.uk/realms/staff"
    assert oidc.client_secret == "the-client-secret" and oidc.username_claim == "preferred_username"
    assert oidc.roles_for(["pacs-team", "admins", "canteen"]) == ("admin", "auditor", "pacs")
    assert oidc.roles_for("pacs-team") == ("pacs",) and oidc.roles_for(None) == () and oidc.roles_for(3) == ()
    assert parse_config(config.render(), home=tmp_path).http == config.http
    assert parse_config(BASE).http.oidc is None and parse_config(BASE).http.session_idle_seconds == 1800


@pytest.mark.parametrize("change, message", [
    (('issuer = "https://login', 'issuer = "http://login'), "https://"),
    (('client_secret_file = "oidc.secret"', 'client_secret_file = "missing"'), "cannot read"),
    (('"pacs-team" = "pacs"', '"pacs-team" = "superuser"'), "unknown role"),
    (('role_claim = "groups"', 'role_claim = "gr oups"'), "claim name"),
    (('role_claim = "groups"', 'role_claim = "groups"\nextra = 1'), "http.oidc.extra: unknown key"),
    (('session_idle_seconds = 600', 'session_idle_seconds = 1'), "session_idle_seconds"),
    (('[http.oidc.roles]\n"pacs-team" = "pacs"\n"admins" = ["admin", "auditor"]\n', ''), "at least one"),
])
def test_oidc_mistakes_are_named(change: tuple[str, str], message: str, tmp_path: Path) -> None:
    (tmp_path / "oidc.secret").write_text("s")
    with pytest.raises(ConfigError) as err:
        parse_config(BASE + OIDC.replace(*change), home=tmp_path)
    assert message in str(err.value)
