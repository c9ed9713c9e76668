"""node.toml's [http.oidc] table: single sign-on with the trust's OpenID Connect provider (optional).

    [http.oidc]
    issuer = "https://login.example.nhs.uk/realms/staff"   # its /.well-known/openid-configuration is read
    client_id = "meshnode-rgt"
    client_secret_file = "oidc-client.secret"              # relative: in the node folder
    redirect_url = "https://pacs-gw.example.nhs.uk/ui/oidc/callback"
    username_claim = "preferred_username"                  # the local user name (lower-cased)
    role_claim = "groups"                                  # a string or a list of strings in the ID token
    label = "Trust single sign-on"                         # the sign-in page's button
    [http.oidc.roles]                                      # claim value -> role(s); no mapped role: refused
    "imaging-pacs-team" = "pacs"
    "imaging-clinicians" = "clinician"
    "mesh-admins" = ["admin", "auditor"]
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from meshnode.storage.users import check_roles
from protocol.config_reader import Table
from protocol.errors import ConfigError, LocalProtocolError

_CLAIM = re.compile(r"^[A-Za-z0-9_.:/-]{1,100}$")


@dataclass(frozen=True)
class OidcConfig:
    issuer: str
    client_id: str
    client_secret: str
    redirect_url: str
    client_secret_file: str = ""
    username_claim: str = "preferred_username"
    display_name_claim: str = "name"
    email_claim: str = "email"
    role_claim: str = "roles"
    roles: tuple[tuple[str, tuple[str, ...]], ...] = ()
    scopes: tuple[str, ...] = ("openid", "profile", "email")
    label: str = "Single sign-on"

    def roles_for(self, claim: object) -> tuple[str, ...]:
        """The local roles the role claim's value(s) map to (unknown values map to nothing)."""
        values = [claim] if isinstance(claim, str) else list(claim) if isinstance(claim, list) else []
        mapping = dict(self.roles)
        wanted = {role for v in values if isinstance(v, str) for role in mapping.get(v, ())}
        return tuple(sorted(wanted))


def _claim(value: str, key: str) -> str:
    if not _CLAIM.match(value):
        raise ConfigError(f"{key}: a claim name (letters, digits, _ . : / -), not {value[:60]!r}")
    return value


def _https_or_loopback(value: str, key: str) -> str:
    if not re.match(r"^(https://[^\s/]+|http://(127\.0\.0\.1|localhost|\[::1\])(:[0-9]+)?)(/\S*)?$", value):
        raise ConfigError(f"{key}: must be an https:// URL (http:// only on 127.0.0.1), not {value[:80]!r}")
    return value.rstrip("/") if key.endswith("issuer") else value


def parse_oidc(t: Table, home: Path | None) -> OidcConfig | None:
    """[http.oidc] (None when the table is absent or empty)."""
    if not t.values:
        return None
    secret_file = t.text("client_secret_file")
    path = Path(secret_file)
    if not path.is_absolute() and home is not None:
        path = home / path
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise t.error("client_secret_file", f"cannot read {path}: {exc}") from None
    if not secret:
        raise t.error("client_secret_file", f"{path} is empty")
    mapping = t.table("roles")
    roles = []
    for value in sorted(mapping.values):
        try:
            roles.append((value, check_roles(mapping.names(value))))
        except LocalProtocolError as exc:
            raise mapping.error(value, str(exc)) from None
    mapping.finish()
    config = OidcConfig(
        issuer=t.text("issuer", check=_https_or_loopback),
        client_id=t.text("client_id"),
        client_secret=secret,
        client_secret_file=secret_file,
        redirect_url=t.text("redirect_url", check=_https_or_loopback),
        username_claim=t.text("username_claim", "preferred_username", check=_claim),
        display_name_claim=t.text("display_name_claim", "name", check=_claim),
        email_claim=t.text("email_claim", "email", check=_claim),
        role_claim=t.text("role_claim", "roles", check=_claim),
        roles=tuple(roles),
        scopes=t.texts("scopes", ("openid", "profile", "email")),
        label=t.text("label", "Single sign-on")[:60],
    )
    if "openid" not in config.scopes:
        raise t.error("scopes", "must include openid")
    if not config.roles:
        raise t.error("roles", "map at least one claim value to a role ([http.oidc.roles])")
    t.finish()
    return config
