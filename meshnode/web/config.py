"""node.toml's [http] section and [[webhook]] tables: the DICOMweb/UI/metrics listener and notifications.

meshnode.config delegates these to this module; every unknown key is refused
with its name, like the rest of node.toml.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from protocol.errors import MeshError
from protocol.manifest import Priority


class HttpConfigError(MeshError):
    """[http] or [[webhook]] settings that are missing, malformed or inconsistent."""

    code = 903
    name = "http-config-error"


WEBHOOK_EVENTS = ("announced", "arrived", "delivered", "failed")
PRIORITIES = tuple(p.value for p in Priority)
_HOST_PORT = re.compile(r"^(?P<host>[0-9A-Za-z.\-]+|\[[0-9A-Fa-f:.]+\]):(?P<port>[0-9]{1,5})$")

#: Written by `meshnode init` (everything commented: the listener is off until `listen` is set).
TEMPLATE = """
# [http]
# DICOMweb (QIDO-RS, WADO-RS, STOW-RS) under /dicomweb, the web UI under /ui, /metrics and /health.
# The listener is off unless `listen` is set. Users and their API tokens: `meshnode users`.
# listen = "127.0.0.1:8042"
# TLS for anything beyond localhost (PEM files; relative paths are in the node folder).
# tls_certificate = "http-cert.pem"
# tls_key = "http-key.pem"
# Largest request body (a STOW-RS upload), in MB; larger requests get 413 and change nothing.
# max_request_mb = 1024
# Largest single DICOM instance in a STOW-RS upload, in MB.
# max_instance_mb = 256
# Most results one QIDO-RS query returns (a client pages with limit/offset).
# max_results = 1000
# Inbox, outbox and peers pages (no patient identifiers) without logging in; audit always needs a login.
# public_status = true
# /metrics without a token (it holds org codes and counters, never patient data).
# public_metrics = true
# How long a web UI login lasts, in hours.
# session_hours = 12
# The URL clients reach this listener at (behind a proxy), for RetrieveURLs and webhook links.
# public_url = "https://pacs-gw.example.nhs.uk"

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
# max_attempts = 12                       # retried with backoff (2 s doubling, at most 15 min)
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

    @property
    def enabled(self) -> bool:
        return bool(self.listen)

    @property
    def host_port(self) -> tuple[str, int]:
        m = _HOST_PORT.match(self.listen)
        if m is None:
            raise HttpConfigError(f"[http] listen must be HOST:PORT, not {self.listen!r}")
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
            return TEMPLATE
        lines = ["", "[http]"]
        for key in ("listen", "tls_certificate", "tls_key", "public_url"):
            lines.append(f'{key} = "{getattr(self, key)}"')
        for key in ("max_request_mb", "max_instance_mb", "max_results", "session_hours"):
            lines.append(f"{key} = {getattr(self, key)}")
        for key in ("public_status", "public_metrics"):
            lines.append(f"{key} = {'true' if getattr(self, key) else 'false'}")
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


HTTP_KEYS = {"listen", "tls_certificate", "tls_key", "max_request_mb", "max_instance_mb", "max_results",
             "public_status", "public_metrics", "session_hours", "public_url"}
WEBHOOK_KEYS = {"url", "secret", "secret_file", "events", "orgs", "priorities", "routes", "include_identifiers",
                "max_attempts"}


def _str(table: dict[str, object], key: str, where: str, default: str = "") -> str:
    value = table.get(key, default)
    if not isinstance(value, str):
        raise HttpConfigError(f"{where} {key} must be a string")
    return value


def _bool(table: dict[str, object], key: str, where: str, default: bool) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise HttpConfigError(f"{where} {key} must be true or false")
    return value


def _int(table: dict[str, object], key: str, where: str, default: int, lo: int, hi: int) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise HttpConfigError(f"{where} {key} must be an integer in {lo}..{hi}")
    return value


def _list(table: dict[str, object], key: str, where: str, allowed: tuple[str, ...] | None = None,
          default: tuple[str, ...] = ()) -> tuple[str, ...]:
    value = table.get(key, list(default))
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise HttpConfigError(f"{where} {key} must be a list of strings")
    items = tuple(str(v) for v in value)
    if allowed is not None:
        bad = sorted(set(items) - set(allowed))
        if bad:
            raise HttpConfigError(f"{where} {key}: unknown value(s) {bad}; expected some of {list(allowed)}")
    return items


def parse_webhook(table: object, index: int, home: Path | None) -> WebhookConfig:
    where = f"[[webhook]] #{index + 1}"
    if not isinstance(table, dict):
        raise HttpConfigError(f"{where} must be a table")
    unknown = set(table) - WEBHOOK_KEYS
    if unknown:
        raise HttpConfigError(f"{where}: unknown key(s) {sorted(unknown)}")
    url = _str(table, "url", where)
    if not re.match(r"^https?://[^\s/]+", url):
        raise HttpConfigError(f"{where} url must be an http:// or https:// URL")
    secret = _str(table, "secret", where)
    secret_file = _str(table, "secret_file", where)
    if secret and secret_file:
        raise HttpConfigError(f"{where}: give secret or secret_file, not both")
    if secret_file:
        path = Path(secret_file)
        if not path.is_absolute() and home is not None:
            path = home / path
        try:
            secret = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise HttpConfigError(f"{where}: cannot read secret_file {path}: {exc}") from None
    if len(secret) < 16:
        raise HttpConfigError(f"{where}: the HMAC secret must be at least 16 characters")
    return WebhookConfig(
        url=url, secret=secret, secret_file=secret_file,
        events=_list(table, "events", where, WEBHOOK_EVENTS, default=("arrived", "delivered", "failed")),
        orgs=_list(table, "orgs", where), priorities=_list(table, "priorities", where, PRIORITIES),
        routes=_list(table, "routes", where),
        include_identifiers=_bool(table, "include_identifiers", where, False),
        max_attempts=_int(table, "max_attempts", where, 12, 1, 100),
    )


def parse_http(section: object, webhooks: object, home: Path | None = None) -> HttpConfig:
    """The [http] table (may be absent) and the [[webhook]] array of tables (may be absent)."""
    if section is None:
        section = {}
    if not isinstance(section, dict):
        raise HttpConfigError("[http] must be a table")
    unknown = set(section) - HTTP_KEYS
    if unknown:
        raise HttpConfigError(f"[http]: unknown key(s) {sorted(unknown)}")
    hooks: list[WebhookConfig] = []
    if webhooks is not None:
        if not isinstance(webhooks, list):
            raise HttpConfigError("webhook must be an array of tables: write [[webhook]]")
        hooks = [parse_webhook(t, i, home) for i, t in enumerate(webhooks)]
    where = "[http]"
    config = HttpConfig(
        listen=_str(section, "listen", where),
        tls_certificate=_str(section, "tls_certificate", where),
        tls_key=_str(section, "tls_key", where),
        max_request_mb=_int(section, "max_request_mb", where, 1024, 1, 1 << 20),
        max_instance_mb=_int(section, "max_instance_mb", where, 256, 1, 4096),
        max_results=_int(section, "max_results", where, 1000, 1, 100_000),
        public_status=_bool(section, "public_status", where, True),
        public_metrics=_bool(section, "public_metrics", where, True),
        session_hours=_int(section, "session_hours", where, 12, 1, 24 * 30),
        public_url=_str(section, "public_url", where).rstrip("/"),
        webhooks=tuple(hooks),
    )
    if config.listen:
        _, port = config.host_port
        if port > 65535:
            raise HttpConfigError("[http] listen port must be at most 65535")
    if bool(config.tls_certificate) != bool(config.tls_key):
        raise HttpConfigError("[http] tls_certificate and tls_key go together")
    if config.public_url and not re.match(r"^https?://[^\s/]+", config.public_url):
        raise HttpConfigError("[http] public_url must be an http:// or https:// URL")
    return config
