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

from protocol.errors import MeshError

DEFAULT_CHECKPOINT_S = 300


class AuditRepositoryConfigError(MeshError):
    """[audit_repository] in node.toml is malformed or inconsistent."""

    code = 904
    name = "audit-repository-config-error"


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


KEYS = frozenset({"address", "ca", "client_cert", "client_key", "server_name", "checkpoint_seconds",
                  "connect_timeout_seconds"})


def _path(value: object, key: str, home: Path | None) -> Path:
    if not isinstance(value, str) or not value:
        raise AuditRepositoryConfigError(f"[audit_repository] {key} must be a file path")
    path = Path(value)
    return path if path.is_absolute() or home is None else home / path


def _int(section: dict[str, object], key: str, default: int, lo: int, hi: int) -> int:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise AuditRepositoryConfigError(f"[audit_repository] {key} must be an integer in {lo}..{hi}")
    return value


def parse_audit_repository(value: object, home: Path | None) -> AuditRepositoryConfig | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise AuditRepositoryConfigError("[audit_repository] must be a table")
    section: dict[str, object] = value
    unknown = set(section) - KEYS
    if unknown:
        raise AuditRepositoryConfigError(f"[audit_repository]: unknown key(s) {sorted(unknown)}")
    address = section.get("address")
    if not isinstance(address, str) or ":" not in address:
        raise AuditRepositoryConfigError('[audit_repository] address must be "host:port"')
    host, _, port_text = address.rpartition(":")
    host = host.strip("[]")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise AuditRepositoryConfigError('[audit_repository] address must be "host:port" with a port in 1..65535')
    if "ca" not in section:
        raise AuditRepositoryConfigError("[audit_repository] ca is required: the repository's certificate is "
                                         "always verified (nothing is sent in clear)")
    cert = _path(section["client_cert"], "client_cert", home) if "client_cert" in section else None
    key = _path(section["client_key"], "client_key", home) if "client_key" in section else None
    if (cert is None) != (key is None):
        raise AuditRepositoryConfigError("[audit_repository] client_cert and client_key go together")
    server_name = section.get("server_name", "")
    if not isinstance(server_name, str):
        raise AuditRepositoryConfigError("[audit_repository] server_name must be a string")
    return AuditRepositoryConfig(
        host=host, port=int(port_text), ca=_path(section["ca"], "ca", home), client_cert=cert, client_key=key,
        server_name=server_name,
        checkpoint_seconds=_int(section, "checkpoint_seconds", DEFAULT_CHECKPOINT_S, 1, 86400),
        connect_timeout_seconds=_int(section, "connect_timeout_seconds", 10, 1, 300),
    )
