"""node.toml's [notify] section: email to staff when a study arrives (meshnode.notify.notifier).

    [notify]
    host = "smtp.example.nhs.uk"          # the SMTP relay (on: the section is there with a host)
    port = 587                            # submission port
    starttls = true                       # required by default: nothing, not even the message, in clear
    ca = "smtp-ca.pem"                    # optional: CA certificate(s) for the relay (default: the system's)
    username = "pacs-gw"                  # optional login (only over STARTTLS) ...
    password_file = "smtp.password"       # ... and its password, in a file readable only by the node
    from_address = "imaging-mesh@rxx.nhs.uk"
    org_address = "pacs-team@rxx.nhs.uk"  # gets the email when the study names no local person
    priorities = ["stat", "urgent", "routine"]  # which priorities are emailed
    attention_domains = ["rxx.nhs.uk"]    # an `attention` address in these domains is emailed directly
    max_attempts = 20                     # retried with backoff (30 s doubling, at most 1 h)
    timeout_seconds = 30                  # one SMTP conversation
    per_sender_per_hour = 60              # arrival emails one sending organisation can cause in an hour

Relative paths are relative to the node directory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from meshnode.notify.recipient import check_address
from protocol.config_reader import Table, defaults
from protocol.errors import ConfigError
from protocol.manifest import Priority

PRIORITIES = tuple(p.value for p in Priority)
_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$"
                   r"|^\[?[0-9A-Fa-f:.]+\]?$")
_DOMAIN = re.compile(r"^(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,62}$")

#: Written by `meshnode init` (everything commented: no email until [notify] is set).
TEMPLATE = """
# Email to staff when a study arrives: the person the sender named (`meshnode share --attention`) if they
# are a user here with an email address, else the organisation's address. No patient identifiers in it:
# the sending organisation, priority, counts and a link to the inbox ([http] public_url).
# [notify]
# host = "smtp.example.nhs.uk"
# port = 587
# starttls = true                      # required unless set to false (a relay on this machine)
# ca = "smtp-ca.pem"                   # CA certificate(s) of the relay (default: the system's)
# username = "pacs-gw"                 # optional, sent only over STARTTLS
# password_file = "smtp.password"
# from_address = "imaging-mesh@example.nhs.uk"
# org_address = "pacs-team@example.nhs.uk"
# priorities = ["stat", "urgent", "routine"]
# attention_domains = []               # `attention` addresses in these domains are emailed directly
# max_attempts = 20
# per_sender_per_hour = 60             # arrival emails one sending organisation can cause in an hour
"""


@dataclass(frozen=True)
class NotifyConfig:
    host: str = ""
    port: int = 587
    starttls: bool = True
    ca: Path | None = None
    username: str = ""
    password: str = field(default="", repr=False)
    password_file: str = ""
    from_address: str = ""
    org_address: str = ""
    priorities: tuple[str, ...] = PRIORITIES
    attention_domains: tuple[str, ...] = ()
    max_attempts: int = 20
    timeout_seconds: int = 30
    per_sender_per_hour: int = 60

    @property
    def enabled(self) -> bool:
        return bool(self.host)

    def render(self) -> str:
        if not self.enabled:
            return TEMPLATE
        lines = ["", "[notify]", f'host = "{self.host}"', f"port = {self.port}",
                 f"starttls = {'true' if self.starttls else 'false'}"]
        if self.ca is not None:
            lines.append(f'ca = "{self.ca}"')
        if self.username:
            lines += [f'username = "{self.username}"', f'password_file = "{self.password_file}"']
        lines += [f'from_address = "{self.from_address}"', f'org_address = "{self.org_address}"',
                  "priorities = [" + ", ".join(f'"{p}"' for p in self.priorities) + "]",
                  "attention_domains = [" + ", ".join(f'"{d}"' for d in self.attention_domains) + "]",
                  f"max_attempts = {self.max_attempts}", f"timeout_seconds = {self.timeout_seconds}",
                  f"per_sender_per_hour = {self.per_sender_per_hour}"]
        return "\n".join(lines) + "\n"


def _host(value: str, key: str) -> str:
    if not _HOST.match(value):
        raise ConfigError(f"{key}: must be a host name or IP address (got {value[:80]!r})")
    return value.strip("[]")


def _domain(value: str, key: str) -> str:
    if not _DOMAIN.match(value):
        raise ConfigError(f"{key}: must be a lower-case domain name such as \"rxx.nhs.uk\" (got {value[:80]!r})")
    return value


def _path(value: str, home: Path | None) -> Path:
    path = Path(value)
    return path if path.is_absolute() or home is None else home / path


def parse_notify(root: Table, home: Path | None = None) -> NotifyConfig:
    """node.toml's [notify] table (absent: no email)."""
    if not root.has("notify"):
        return NotifyConfig()
    t = root.table("notify")
    d = defaults(NotifyConfig)
    host = t.text("host", check=_host)
    starttls = t.boolean("starttls", d["starttls"])
    username = t.text("username", d["username"])
    password_file = t.text("password_file", d["password_file"])
    if bool(username) != bool(password_file):
        raise t.error("password_file" if username else "username", "username and password_file go together")
    if username and not starttls:
        raise t.error("username", "a password is sent only over STARTTLS: set starttls = true")
    password = ""
    if password_file:
        path = _path(password_file, home)
        try:
            password = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise t.error("password_file", f"cannot read {path}: {exc}") from None
        if not password:
            raise t.error("password_file", f"{path} is empty")
    ca = _path(t.text("ca"), home) if t.has("ca") else None
    if ca is not None and not ca.is_file():
        raise t.error("ca", f"no such file {ca}")
    config = NotifyConfig(
        host=host, port=t.integer("port", d["port"], 1, 65535), starttls=starttls, ca=ca,
        username=username, password=password, password_file=password_file,
        from_address=t.text("from_address", check=check_address),
        org_address=t.text("org_address", check=check_address),
        priorities=t.texts("priorities", d["priorities"], PRIORITIES),
        attention_domains=t.texts("attention_domains", d["attention_domains"], check=_domain),
        max_attempts=t.integer("max_attempts", d["max_attempts"], 1, 1000),
        timeout_seconds=t.integer("timeout_seconds", d["timeout_seconds"], 1, 600),
        per_sender_per_hour=t.integer("per_sender_per_hour", d["per_sender_per_hour"], 1, 100000),
    )
    t.finish()
    return config
