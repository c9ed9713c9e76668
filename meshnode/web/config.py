"""node.toml's [http] section and [[webhook]] tables: the DICOMweb/UI/metrics listener and notifications.

meshnode.config delegates these to this module; they are read with protocol.config_reader like
the rest of node.toml (unknown keys, wrong types and out-of-range values refused, naming the key).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

from meshnode.web.oidc_config import OidcConfig, parse_oidc
from protocol.config_reader import Table, defaults
from protocol.errors import ConfigError
from protocol.manifest import Priority

WEBHOOK_EVENTS = ("announced", "arrived", "delivered", "failed")
PRIORITIES = tuple(p.value for p in Priority)
_HOST_PORT = re.compile(r"^(?P<host>[0-9A-Za-z.\-]+|\[[0-9A-Fa-f:.]+\]):(?P<port>[0-9]{1,5})$")

#: The HTTP port `meshnode init` suggests (commented out: the listener is off until `listen` is set). Not a
#: port of the software a node sits beside on a hospital server: Orthanc (8042 HTTP/DICOMweb, 4242 DICOM),
#: dcm4chee (8080, 8443, 11112), DIMSE (104, 11112), Prometheus (9090), Grafana and OHIF (3000), node exporter
#: (9100), Alertmanager (9093), Jupyter (8888), RStudio (8787). tests/meshnode/web/test_http_port.py checks it.
DEFAULT_HTTP_PORT = 8731
DEFAULT_HTTP_LISTEN = f"127.0.0.1:{DEFAULT_HTTP_PORT}"

#: Written by `meshnode init` (everything commented: the listener is off until `listen` is set).
TEMPLATE = """
# [http]
# DICOMweb (QIDO-RS, WADO-RS, STOW-RS) under /dicomweb, the web UI under /ui, /metrics and /health.
# The listener is off unless `listen` is set. Users and their API tokens: `meshnode users`.
# listen = "{default_listen}"
# TLS for anything beyond localhost (PEM files; relative paths are in the node folder).
# tls_certificate = "http-cert.pem"
# tls_key = "http-key.pem"
# Largest request body (a STOW-RS upload), in MB; larger requests get 413 and change nothing.
# max_request_mb = {max_request_mb}
# Largest single DICOM instance in a STOW-RS upload, in MB.
# max_instance_mb = {max_instance_mb}
# Most results one QIDO-RS query returns (a client pages with limit/offset).
# max_results = {max_results}
# Inbox, outbox and peers pages (no patient identifiers) without logging in; audit always needs a login.
# public_status = {public_status}
# /metrics without a token (it holds org codes and counters, never patient data).
# public_metrics = {public_metrics}
# How long a web UI login lasts, in hours, and how long it lasts without a request, in seconds.
# session_hours = {session_hours}
# session_idle_seconds = {session_idle_seconds}
# Failed sign-ins within 15 minutes before further attempts get 429: per user name, per client address (raise
# the second when the whole site signs in through one NAT or proxy address).
# login_failures_per_user = {login_failures_per_user}
# login_failures_per_address = {login_failures_per_address}
# Single sign-on with OpenID Connect: an [http.oidc] table (docs/operators.md, "Sign-in and roles").
# The URL clients reach this listener at (behind a proxy), for RetrieveURLs and webhook links.
# public_url = "https://pacs-gw.example.nhs.uk"
# Reverse proxies (addresses or CIDR networks) whose X-Forwarded-For is believed: for a request from one of
# them the client is the right-most address in X-Forwarded-For that is not a listed proxy (sign-in limits,
# audit). Empty: the TCP peer is the client, whatever the header says.
# trusted_proxies = ["10.0.0.5", "fd00:1::/64"]

# Webhooks: one [[webhook]] table per receiver. The body is JSON, signed with HMAC-SHA256:
#   X-Meshnode-Signature: t=<unix time>,v1=<hex of HMAC(secret, "<t>." + body)>
# [[webhook]]
# url = "https://alerts.example.nhs.uk/mesh"
# secret_file = "webhook.secret"          # or: secret = "..."
# events = ["arrived", "delivered", "failed"]  # of: announced, arrived, delivered, failed
# orgs = []                               # only studies from/to these orgs (empty: all)
# priorities = []                         # only these priorities (empty: all)
# routes = []                             # only studies sent through these routing rules (empty: all)
# include_identifiers = false             # add StudyInstanceUID and accession number to the body
# max_attempts = {max_attempts:<22} # retried with backoff (2 s doubling, at most 15 min)
"""


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    secret: str
    secret_file: str = ""
    events: tuple[str, ...] = ("arrived", "delivered", "failed")
    orgs: tuple[str, ...] = ()
    priorities: tuple[str, ...] = ()
    routes: tuple[str, ...] = ()
    include_identifiers: bool = False
    max_attempts: int = 12

    @property
    def name(self) -> str:
        """A stable name for the queue and metrics: the URL without query or credentials."""
        return re.sub(r"//[^/@]*@", "//", self.url.split("?", 1)[0])

    def wants(self, event: str, org: str, priority: str, route: str) -> bool:
        return (event in self.events and (not self.orgs or org in self.orgs)
                and (not self.priorities or priority in self.priorities)
                and (not self.routes or route in self.routes))


@dataclass(frozen=True)
class HttpConfig:
    listen: str = ""
    tls_certificate: str = ""
    tls_key: str = ""
    max_request_mb: int = 1024
    max_instance_mb: int = 256
    max_results: int = 1000
    public_status: bool = True
    public_metrics: bool = True
    session_hours: int = 12
    public_url: str = ""
    webhooks: tuple[WebhookConfig, ...] = field(default_factory=tuple)
    session_idle_seconds: int = 1800
    oidc: OidcConfig | None = None
    login_failures_per_user: int = 5
    login_failures_per_address: int = 20
    trusted_proxies: tuple[str, ...] = ()

    @property
    def proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(p, strict=False) for p in self.trusted_proxies)

    @property
    def enabled(self) -> bool:
        return bool(self.listen)

    @property
    def host_port(self) -> tuple[str, int]:
        m = _HOST_PORT.match(self.listen)
        if m is None:
            raise ConfigError(f"http.listen: must be HOST:PORT, not {self.listen!r}")
        return m["host"].strip("[]"), int(m["port"])

    @property
    def max_request_bytes(self) -> int:
        return self.max_request_mb * 1024 * 1024

    @property
    def max_instance_bytes(self) -> int:
        return self.max_instance_mb * 1024 * 1024

    def tls_paths(self, home: Path) -> tuple[Path, Path] | None:
        if not self.tls_certificate:
            return None
        return home / self.tls_certificate, home / self.tls_key

    def render(self) -> str:
        if not self.enabled and not self.webhooks:
            return TEMPLATE.format(**{k: _toml_scalar(v) for k, v in defaults(HttpConfig).items()},
                                   max_attempts=defaults(WebhookConfig)["max_attempts"],
                                   default_listen=DEFAULT_HTTP_LISTEN)
        lines = ["", "[http]"]
        for key in ("listen", "tls_certificate", "tls_key", "public_url"):
            lines.append(f'{key} = "{getattr(self, key)}"')
        for key in ("max_request_mb", "max_instance_mb", "max_results", "session_hours", "session_idle_seconds",
                    "login_failures_per_user", "login_failures_per_address"):
            lines.append(f"{key} = {getattr(self, key)}")
        for key in ("public_status", "public_metrics"):
            lines.append(f"{key} = {'true' if getattr(self, key) else 'false'}")
        if self.trusted_proxies:
            lines.append(f"trusted_proxies = {_toml_list(self.trusted_proxies)}")
        if self.oidc is not None:
            o = self.oidc
            lines += ["", "[http.oidc]", *(f'{k} = "{getattr(o, k)}"' for k in (
                "issuer", "client_id", "client_secret_file", "redirect_url", "username_claim", "display_name_claim",
                "email_claim", "role_claim", "label")), f"scopes = {_toml_list(o.scopes)}", "", "[http.oidc.roles]",
                *(f'"{value}" = {_toml_list(roles)}' for value, roles in o.roles)]
        for hook in self.webhooks:
            lines += ["", "[[webhook]]", f'url = "{hook.url}"',
                      f'secret_file = "{hook.secret_file}"' if hook.secret_file else f'secret = "{hook.secret}"',
                      f"events = {_toml_list(hook.events)}", f"orgs = {_toml_list(hook.orgs)}",
                      f"priorities = {_toml_list(hook.priorities)}", f"routes = {_toml_list(hook.routes)}",
                      f"include_identifiers = {'true' if hook.include_identifiers else 'false'}",
                      f"max_attempts = {hook.max_attempts}"]
        return "\n".join(lines) + "\n"


def _toml_list(items: tuple[str, ...]) -> str:
    return "[" + ", ".join(f'"{i}"' for i in items) + "]"


def _toml_scalar(value: object) -> object:
    return ("true" if value else "false") if isinstance(value, bool) else value


# -- reading (protocol.config_reader: unknown keys, wrong types and ranges are refused naming the key) --


def _url(value: str, key: str) -> str:
    if not re.match(r"^https?://[^\s/]+", value):
        raise ConfigError(f"{key}: must be an http:// or https:// URL (got {value[:80]!r})")
    return value


def _optional_url(value: str, key: str) -> str:
    return _url(value, key).rstrip("/") if value else value


def _listen(value: str, key: str) -> str:
    if not value:
        return value
    m = _HOST_PORT.match(value)
    if m is None:
        raise ConfigError(f"{key}: must be HOST:PORT, e.g. \"{DEFAULT_HTTP_LISTEN}\" (got {value[:80]!r})")
    if int(m["port"]) > 65535:
        raise ConfigError(f"{key}: the port must be at most 65535 (got {m['port']})")
    return value


def read_secret(t: Table, home: Path | None, key: str, file_key: str) -> tuple[str, str]:
    """A secret given inline (`key`) or in a file (`file_key`, relative to the node folder), not both:
    (the secret, the file's name as written)."""
    secret = t.text(key, "")
    secret_file = t.text(file_key, "")
    if secret and secret_file:
        raise t.error(file_key, f"give {key} or {file_key}, not both")
    if secret_file:
        path = Path(secret_file)
        if not path.is_absolute() and home is not None:
            path = home / path
        try:
            secret = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise t.error(file_key, f"cannot read {file_key} {path}: {exc}") from None
    return secret, secret_file


def check_proxies(t: Table, key: str, proxies: tuple[str, ...]) -> None:
    """Every entry an IP address or CIDR network, or a ConfigError naming `key`."""
    for proxy in proxies:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise t.error(key, f"{proxy!r} is not an IP address or network (CIDR)") from None


def parse_webhook(t: Table, home: Path | None) -> WebhookConfig:
    """One [[webhook]] table (its secret_file read from the node folder)."""
    d = defaults(WebhookConfig)
    url = t.text("url", check=_url)
    secret, secret_file = read_secret(t, home, "secret", "secret_file")
    if len(secret) < 16:
        raise t.error("secret", "the HMAC secret must be at least 16 characters")
    hook = WebhookConfig(
        url=url, secret=secret, secret_file=secret_file,
        events=t.texts("events", d["events"], WEBHOOK_EVENTS), orgs=t.texts("orgs", d["orgs"]),
        priorities=t.texts("priorities", d["priorities"], PRIORITIES), routes=t.texts("routes", d["routes"]),
        include_identifiers=t.boolean("include_identifiers", d["include_identifiers"]),
        max_attempts=t.integer("max_attempts", d["max_attempts"], 1, 100),
    )
    t.finish()
    return hook


def parse_http(root: Table, home: Path | None = None) -> HttpConfig:
    """node.toml's [http] table (may be absent) and [[webhook]] array of tables (may be absent)."""
    d = defaults(HttpConfig)
    t = root.table("http")
    config = HttpConfig(
        listen=t.text("listen", d["listen"], check=_listen),
        tls_certificate=t.text("tls_certificate", d["tls_certificate"]),
        tls_key=t.text("tls_key", d["tls_key"]),
        max_request_mb=t.integer("max_request_mb", d["max_request_mb"], 1, 1 << 20),
        max_instance_mb=t.integer("max_instance_mb", d["max_instance_mb"], 1, 4096),
        max_results=t.integer("max_results", d["max_results"], 1, 100_000),
        public_status=t.boolean("public_status", d["public_status"]),
        public_metrics=t.boolean("public_metrics", d["public_metrics"]),
        session_hours=t.integer("session_hours", d["session_hours"], 1, 24 * 30),
        public_url=t.text("public_url", d["public_url"], check=_optional_url),
        webhooks=tuple(parse_webhook(w, home) for w in root.tables("webhook")),
        session_idle_seconds=t.integer("session_idle_seconds", d["session_idle_seconds"], 5, 7 * 86_400),
        oidc=parse_oidc(t.table("oidc"), home),
        login_failures_per_user=t.integer("login_failures_per_user", d["login_failures_per_user"], 1, 1000),
        login_failures_per_address=t.integer("login_failures_per_address", d["login_failures_per_address"], 1,
                                             100_000),
        trusted_proxies=tuple(t.texts("trusted_proxies", d["trusted_proxies"])),
    )
    check_proxies(t, "trusted_proxies", config.trusted_proxies)
    if bool(config.tls_certificate) != bool(config.tls_key):
        raise t.error("tls_key" if config.tls_certificate else "tls_certificate",
                      "tls_certificate and tls_key go together")
    t.finish()
    return config
