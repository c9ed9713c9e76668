"""The node's configuration file (node.toml): read, validated, with clear errors."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from meshnode.audit_export.config import AuditRepositoryConfig, AuditRepositoryConfigError, parse_audit_repository
from meshnode.gateway.config import SECTIONS as GATEWAY_SECTIONS
from meshnode.gateway.config import GatewayConfig, parse_gateway
from meshnode.web.config import HttpConfig, HttpConfigError, parse_http
from protocol.address_record import check_multiaddr_text
from protocol.document import DEFAULT_SKEW
from protocol.errors import ConfigError, MeshError
from protocol.keys import PublicKey
from protocol.schema import check_org_code


DEFAULT_LISTEN = ("/ip4/127.0.0.1/tcp/0",)

TEMPLATE = """\
# dicom-mesh node configuration. Written by `meshnode init`; edit freely.

[node]
# Your organisation's code (as on your certificate), e.g. an ODS code.
org = "{org}"
# Where the node listens for other nodes (libp2p multiaddrs; TCP + Noise + Yamux).
listen = {listen}
# Fetch announced studies as soon as they arrive (false: wait for `meshnode fetch MANIFEST`).
auto_fetch = {auto_fetch}

[directory]
# Multiaddr of the directory, ending in /p2p/<its peer ID>. The directory is
# trusted for nothing but availability: everything it serves is verified.
address = "{directory}"

[trust]
# Peer IDs of the authority keys this node trusts (from `meshadmin authority init`).
authority_keys = {authority_keys}
# Clock skew tolerated when checking validity periods, in seconds.
clock_skew_seconds = {skew}
# How long a signed address record of this node stays valid, in seconds.
address_record_ttl_seconds = 86400
# How often to fetch the roster from the directory (revocations take effect then).
roster_refresh_seconds = {roster_refresh}

[limits]
# Per peer: concurrent inbound streams, and requests per second before it is cut off.
max_streams_per_peer = {max_streams}
max_requests_per_second = {max_rate}
# A request that has not completed in this many seconds is abandoned (and the peer's window shrinks).
request_timeout_seconds = {request_timeout}
# Cap on the bytes per second this node serves to all peers together, in MB/s (0: no cap).
upload_mb_per_s = {upload}

# Security alerts and signed audit checkpoints also go to an audit repository (IHE ATNA: RFC 5424
# syslog over TLS, DICOM PS3.15 A.5 messages), spooled while it is down. See docs/operators.md.
# [audit_repository]
# address = "arr.example.nhs.uk:6514"
# ca = "arr-ca.pem"
"""


@dataclass(frozen=True)
class NodeConfig:
    org: str
    listen: tuple[str, ...] = DEFAULT_LISTEN
    directory: str = ""
    authority_keys: tuple[PublicKey, ...] = field(default_factory=tuple)
    clock_skew: int = DEFAULT_SKEW
    address_record_ttl: int = 86400
    auto_fetch: bool = True
    roster_refresh: int = 60
    max_streams_per_peer: int = 64
    max_requests_per_second: int = 500
    request_timeout: int = 30
    upload_mb_per_s: float = 0.0
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    #: [http] and [[webhook]]: DICOMweb, web UI, metrics, health, webhooks (meshnode.web.config)
    http: HttpConfig = field(default_factory=HttpConfig)
    #: [audit_repository]: where security alerts and audit checkpoints go (meshnode.audit_export.config)
    audit_repository: AuditRepositoryConfig | None = None

    def __post_init__(self) -> None:
        try:
            check_org_code(self.org, "org")
            for addr in self.listen:
                check_multiaddr_text(addr, "listen")
            if self.directory:
                check_multiaddr_text(self.directory, "directory")
        except MeshError as exc:
            raise ConfigError(str(exc)) from None

    def render(self) -> str:
        def toml_list(items: tuple[str, ...]) -> str:
            return "[" + ", ".join(f'"{i}"' for i in items) + "]"

        return TEMPLATE.format(
            org=self.org,
            listen=toml_list(self.listen),
            directory=self.directory,
            authority_keys=toml_list(tuple(k.peer_id for k in self.authority_keys)),
            skew=self.clock_skew,
            auto_fetch="true" if self.auto_fetch else "false",
            roster_refresh=self.roster_refresh,
            max_streams=self.max_streams_per_peer,
            max_rate=self.max_requests_per_second,
            request_timeout=self.request_timeout,
            upload=self.upload_mb_per_s,
        ) + self.gateway.render() + self.http.render()


def _section(doc: dict[str, object], name: str, keys: set[str]) -> dict[str, object]:
    value = doc.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table")
    unknown = set(value) - keys
    if unknown:
        raise ConfigError(f"[{name}]: unknown key(s) {sorted(unknown)}")
    return value


def _str_list(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be a list of strings")
    return tuple(str(v) for v in value)


def _int(value: object, where: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{where} must be an integer in {lo}..{hi}")
    return value


def parse_config(text: str, source: str = "node.toml", home: Path | None = None) -> NodeConfig:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    sections = {"node", "directory", "trust", "limits", "http", "webhook", "audit_repository"}
    unknown = set(doc) - sections - GATEWAY_SECTIONS
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {sorted(unknown)}")
    node = _section(doc, "node", {"org", "listen", "auto_fetch"})
    limits = _section(doc, "limits", {"max_streams_per_peer", "max_requests_per_second", "request_timeout_seconds",
                                      "upload_mb_per_s"})
    upload = limits.get("upload_mb_per_s", 0)
    if isinstance(upload, bool) or not isinstance(upload, (int, float)) or not 0 <= upload <= 100_000:
        raise ConfigError(f"{source}: [limits] upload_mb_per_s must be a number in 0..100000")
    directory = _section(doc, "directory", {"address"})
    trust = _section(doc, "trust", {"authority_keys", "clock_skew_seconds", "address_record_ttl_seconds",
                                    "roster_refresh_seconds"})
    auto_fetch = node.get("auto_fetch", True)
    if not isinstance(auto_fetch, bool):
        raise ConfigError(f"{source}: [node] auto_fetch must be true or false")
    org = node.get("org")
    if not isinstance(org, str):
        raise ConfigError(f"{source}: [node] org is required")
    try:
        check_org_code(org, "[node] org")
        listen = _str_list(node.get("listen", list(DEFAULT_LISTEN)), "[node] listen")
        for addr in listen:
            check_multiaddr_text(addr, "[node] listen")
        address = directory.get("address", "")
        if not isinstance(address, str):
            raise ConfigError("[directory] address must be a string")
        if address:
            check_multiaddr_text(address, "[directory] address")
        keys = tuple(
            PublicKey.from_peer_id(k) for k in _str_list(trust.get("authority_keys", []), "[trust] authority_keys")
        )
        gateway = parse_gateway(doc)
        http = parse_http(doc.get("http"), doc.get("webhook"), home)
        audit_repository = parse_audit_repository(doc.get("audit_repository"), home)
    except ConfigError:
        raise
    except AuditRepositoryConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except HttpConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except MeshError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return NodeConfig(
        org=org,
        listen=listen,
        directory=address,
        authority_keys=keys,
        clock_skew=_int(trust.get("clock_skew_seconds", DEFAULT_SKEW), "[trust] clock_skew_seconds", 0, 86400),
        address_record_ttl=_int(
            trust.get("address_record_ttl_seconds", 86400), "[trust] address_record_ttl_seconds", 60, 30 * 86400
        ),
        auto_fetch=auto_fetch,
        roster_refresh=_int(trust.get("roster_refresh_seconds", 60), "[trust] roster_refresh_seconds", 1, 86400),
        max_streams_per_peer=_int(limits.get("max_streams_per_peer", 64), "[limits] max_streams_per_peer", 1, 4096),
        max_requests_per_second=_int(limits.get("max_requests_per_second", 500),
                                     "[limits] max_requests_per_second", 1, 100_000),
        request_timeout=_int(limits.get("request_timeout_seconds", 30), "[limits] request_timeout_seconds", 1, 3600),
        upload_mb_per_s=float(upload),
        gateway=gateway,
        http=http,
        audit_repository=audit_repository,
    )


def load_config(path: Path) -> NodeConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"no configuration at {path}; run `meshnode init` first") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    return parse_config(text, str(path), path.parent)
