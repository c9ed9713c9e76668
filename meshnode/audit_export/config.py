"""node.toml's [audit_repository]: where security alerts and audit checkpoints are sent.

    [audit_repository]
    address = "arr.example.nhs.uk:6514"   # host:port of the RFC 5425 (syslog over TLS) receiver
    ca = "arr-ca.pem"                     # CA certificate(s) that must have signed the repository's certificate
    client_cert = "node-audit.pem"        # optional: this node's TLS client certificate ...
    client_key = "node-audit.key"         # ... and its key (both or neither)
    server_name = "arr.example.nhs.uk"    # optional: the name the certificate must carry (default: the host)
    checkpoint_seconds = 300              # sign the audit head this often when it has moved

Relative paths are relative to the node directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from protocol.config_reader import Table, defaults
from protocol.errors import ConfigError

DEFAULT_CHECKPOINT_S = 300


@dataclass(frozen=True)
class AuditRepositoryConfig:
    host: str
    port: int
    ca: Path
    client_cert: Path | None = None
    client_key: Path | None = None
    server_name: str = ""
    checkpoint_seconds: int = DEFAULT_CHECKPOINT_S
    connect_timeout_seconds: int = 10

    @property
    def tls_name(self) -> str:
        return self.server_name or self.host


def _file(value: str, key: str) -> str:
    if not value:
        raise ConfigError(f"{key}: must be a file path")
    return value


def _path(value: str, home: Path | None) -> Path:
    path = Path(value)
    return path if path.is_absolute() or home is None else home / path


def parse_audit_repository(root: Table, home: Path | None) -> AuditRepositoryConfig | None:
    """node.toml's [audit_repository] table, or None when there is none."""
    if not root.has("audit_repository"):
        return None
    t = root.table("audit_repository")
    d = defaults(AuditRepositoryConfig)
    address = t.text("address")
    host, _, port_text = address.rpartition(":")
    host = host.strip("[]")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise t.error("address", f'must be "host:port" with a port in 1..65535 (got {address[:80]!r})')
    if not t.has("ca"):
        raise t.error("ca", "required: the repository's certificate is always verified (nothing is sent in clear)")
    cert = t.text("client_cert", "", check=_file) if t.has("client_cert") else ""
    key = t.text("client_key", "", check=_file) if t.has("client_key") else ""
    if bool(cert) != bool(key):
        raise t.error("client_key" if cert else "client_cert", "client_cert and client_key go together")
    config = AuditRepositoryConfig(
        host=host, port=int(port_text), ca=_path(t.text("ca", check=_file), home),
        client_cert=_path(cert, home) if cert else None, client_key=_path(key, home) if key else None,
        server_name=t.text("server_name", d["server_name"]),
        checkpoint_seconds=t.integer("checkpoint_seconds", d["checkpoint_seconds"], 1, 86400),
        connect_timeout_seconds=t.integer("connect_timeout_seconds", d["connect_timeout_seconds"], 1, 300),
    )
    t.finish()
    return config
