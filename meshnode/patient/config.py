"""node.toml's [patient_access] section: links for patients and people without a node (off by default).

    [patient_access]
    enabled = true
    public_url = "https://images.rxx.nhs.uk"   # what the links in emails point at (the public listener's URL)
    listen = "0.0.0.0:8732"                    # the public pages' own listener (empty: served under /p/ by [http])
    tls_certificate = "public-cert.pem"        # with tls_key: HTTPS on that listener (required off localhost)
    tls_key = "public-key.pem"
    trusted_proxies = []                       # reverse proxies whose X-Forwarded-For is believed
    share_days = 14                            # how long a share lasts unless the staff user picks otherwise
    max_share_days = 90                        # the longest a staff user may pick
    allow_forward = true                       # a patient may pass a share on to a clinician's email
    max_forwards = 3                           # shares one share may create by forwarding
    code_attempts = 3                          # wrong codes before a link is locked (staff are told)
    code_minutes = 10                          # how long a one-time code works
    code_resends = 5                           # new codes a person may ask for on one link
    session_minutes = 30                       # a patient's signed-in page, without activity
    requests_per_minute = 60                   # per client address, on every public endpoint
    links_per_hour = 30                        # links one staff user (or control account) may make in an hour
    sms_gateway_url = "https://sms.example.nhs.uk/send"   # POSTs {"id", "to", "text"}, signed like webhooks
    sms_secret_file = "sms.secret"             # the HMAC secret of those POSTs (or sms_secret = "...")
    upload_days = 14                           # how long an upload link lasts
    max_upload_mb = 8192                       # all files of one upload link together
    max_file_mb = 2048                         # one uploaded file (a ZIP counts once, each member again)
    max_files = 20000                          # files in one upload link (ZIP members included)
    max_pending_upload_requests = 200          # asks for an upload link (/p/ask) waiting for the PACS team

Email goes through [notify]'s SMTP relay (required when patient access is on). Relative paths are relative
to the node directory. public_url and sms_gateway_url must be https:// (plain http only to 127.0.0.1, ::1 or
localhost: a proxy on the same machine, the tests).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from meshnode.web.config import _listen, _optional_url, check_proxies, read_secret
from protocol.config_reader import Table, defaults
from protocol.errors import ConfigError

#: The public listener's port `meshnode init` suggests: beside [http]'s 8731, and not 8443 (dcm4chee's HTTPS);
#: tests/meshnode/web/test_http_port.py checks it against the software a node sits beside
DEFAULT_PUBLIC_PORT = 8732

#: Written by `meshnode init` (commented: patient access is off until `enabled = true`).
TEMPLATE = """
# Patient access (docs/operators.md, "Patient access"): links by email, with a one-time code on a second
# channel, for patients and clinicians without a node to view, download, pass on and upload images.
# [patient_access]
# enabled = true
# public_url = "https://images.example.nhs.uk"
# listen = "0.0.0.0:{public_port}"              # the public pages' own listener (empty: under /p/ on [http])
# tls_certificate = "public-cert.pem"
# tls_key = "public-key.pem"
# share_days = {share_days}
# max_share_days = {max_share_days}
# allow_forward = {allow_forward}
# max_forwards = {max_forwards}
# code_attempts = {code_attempts}
# code_minutes = {code_minutes}
# code_resends = {code_resends}
# session_minutes = {session_minutes}
# requests_per_minute = {requests_per_minute}
# links_per_hour = {links_per_hour}
# sms_gateway_url = "https://sms.example.nhs.uk/send"
# sms_secret_file = "sms.secret"
# upload_days = {upload_days}
# max_upload_mb = {max_upload_mb}
# max_file_mb = {max_file_mb}
# max_files = {max_files}
# max_pending_upload_requests = {max_pending_upload_requests}
"""


@dataclass(frozen=True)
class PatientAccessConfig:
    enabled: bool = False
    public_url: str = ""
    listen: str = ""
    tls_certificate: str = ""
    tls_key: str = ""
    trusted_proxies: tuple[str, ...] = ()
    share_days: int = 14
    max_share_days: int = 90
    allow_forward: bool = True
    max_forwards: int = 3
    code_attempts: int = 3
    code_minutes: int = 10
    code_resends: int = 5
    session_minutes: int = 30
    requests_per_minute: int = 60
    links_per_hour: int = 30
    sms_gateway_url: str = ""
    sms_secret: str = ""
    sms_secret_file: str = ""
    upload_days: int = 14
    max_upload_mb: int = 8192
    max_file_mb: int = 2048
    max_files: int = 20000
    max_pending_upload_requests: int = 200

    @property
    def own_listener(self) -> bool:
        """The public pages have a listener of their own (and [http] does not serve /p/)."""
        return self.enabled and bool(self.listen)

    @property
    def proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(p, strict=False) for p in self.trusted_proxies)

    def tls_paths(self, home: Path) -> tuple[Path, Path] | None:
        if not self.tls_certificate:
            return None
        return home / self.tls_certificate, home / self.tls_key

    def render(self) -> str:
        if not self.enabled:
            d = defaults(PatientAccessConfig)
            return TEMPLATE.format(**{k: ("true" if v else "false") if isinstance(v, bool) else v
                                      for k, v in d.items()}, public_port=DEFAULT_PUBLIC_PORT)
        lines = ["", "[patient_access]", "enabled = true"]
        for key in ("public_url", "listen", "tls_certificate", "tls_key", "sms_gateway_url", "sms_secret_file"):
            if getattr(self, key):
                lines.append(f'{key} = "{getattr(self, key)}"')
        if self.sms_secret and not self.sms_secret_file:
            lines.append(f'sms_secret = "{self.sms_secret}"')
        if self.trusted_proxies:
            lines.append("trusted_proxies = [" + ", ".join(f'"{p}"' for p in self.trusted_proxies) + "]")
        for key in ("share_days", "max_share_days", "max_forwards", "code_attempts", "code_minutes", "code_resends",
                    "session_minutes", "requests_per_minute", "links_per_hour", "upload_days", "max_upload_mb",
                    "max_file_mb", "max_files", "max_pending_upload_requests"):
            lines.append(f"{key} = {getattr(self, key)}")
        lines.append(f"allow_forward = {'true' if self.allow_forward else 'false'}")
        return "\n".join(lines) + "\n"


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


def _https_url(value: str, key: str) -> str:
    """An https:// URL; plain http:// only to this machine (a code or a token must not cross a network in clear)."""
    url = _optional_url(value, key)
    if url and urlsplit(url).scheme != "https" and (urlsplit(url).hostname or "") not in LOOPBACK_HOSTS:
        raise ConfigError(f"{key}: must be an https:// URL (plain http only to 127.0.0.1, ::1 or localhost)")
    return url


def parse_patient_access(root: Table, home: Path | None = None) -> PatientAccessConfig:
    """node.toml's [patient_access] table (absent: off)."""
    if not root.has("patient_access"):
        return PatientAccessConfig()
    t = root.table("patient_access")
    d = defaults(PatientAccessConfig)
    enabled = t.boolean("enabled", d["enabled"])
    secret, secret_file = read_secret(t, home, "sms_secret", "sms_secret_file")
    config = PatientAccessConfig(
        enabled=enabled,
        public_url=t.text("public_url", d["public_url"], check=_https_url),
        listen=t.text("listen", d["listen"], check=_listen),
        tls_certificate=t.text("tls_certificate", d["tls_certificate"]),
        tls_key=t.text("tls_key", d["tls_key"]),
        trusted_proxies=tuple(t.texts("trusted_proxies", d["trusted_proxies"])),
        share_days=t.integer("share_days", d["share_days"], 1, 366),
        max_share_days=t.integer("max_share_days", d["max_share_days"], 1, 366),
        allow_forward=t.boolean("allow_forward", d["allow_forward"]),
        max_forwards=t.integer("max_forwards", d["max_forwards"], 0, 100),
        code_attempts=t.integer("code_attempts", d["code_attempts"], 1, 20),
        code_minutes=t.integer("code_minutes", d["code_minutes"], 1, 60),
        code_resends=t.integer("code_resends", d["code_resends"], 0, 50),
        session_minutes=t.integer("session_minutes", d["session_minutes"], 1, 24 * 60),
        requests_per_minute=t.integer("requests_per_minute", d["requests_per_minute"], 1, 100_000),
        links_per_hour=t.integer("links_per_hour", d["links_per_hour"], 1, 10_000),
        sms_gateway_url=t.text("sms_gateway_url", d["sms_gateway_url"], check=_https_url),
        sms_secret=secret,
        sms_secret_file=secret_file,
        upload_days=t.integer("upload_days", d["upload_days"], 1, 366),
        max_upload_mb=t.integer("max_upload_mb", d["max_upload_mb"], 1, 1 << 20),
        max_file_mb=t.integer("max_file_mb", d["max_file_mb"], 1, 1 << 16),
        max_files=t.integer("max_files", d["max_files"], 1, 1_000_000),
        max_pending_upload_requests=t.integer("max_pending_upload_requests", d["max_pending_upload_requests"], 0,
                                              100_000),
    )
    check_proxies(t, "trusted_proxies", config.trusted_proxies)
    if bool(config.tls_certificate) != bool(config.tls_key):
        raise t.error("tls_key" if config.tls_certificate else "tls_certificate",
                      "tls_certificate and tls_key go together")
    if config.share_days > config.max_share_days:
        raise t.error("share_days", f"the default ({config.share_days}) is longer than max_share_days "
                                    f"({config.max_share_days})")
    if enabled and not config.public_url:
        raise t.error("public_url", "patient access needs the URL the links point at")
    if config.sms_gateway_url and len(secret) < 16:
        raise t.error("sms_secret", "the SMS gateway's HMAC secret must be at least 16 characters")
    t.finish()
    return config
