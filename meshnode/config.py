"""The node's configuration file (node.toml): read with protocol.config_reader, validated, with clear errors.

Each default is stated once, on NodeConfig (and the dataclasses of the sections other modules read:
meshnode.gateway.config, meshnode.web.config, meshnode.audit_export.config).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from common.files import read_file
from meshnode.audit_export.config import AuditRepositoryConfig, parse_audit_repository
from meshnode.gateway.config import GatewayConfig, parse_gateway
from meshnode.node.reach_config import ReachConfig, parse_reach
from meshnode.node.replication_config import ReplicationConfig, parse_replication
from meshnode.node.request_config import RequestConfig, parse_requests
from meshnode.notify.config import NotifyConfig, parse_notify
from meshnode.patient.config import PatientAccessConfig, parse_patient_access
from meshnode.web.config import HttpConfig, parse_http
from protocol.address_record import check_multiaddr_text
from protocol.config_reader import MAX_CONFIG_BYTES, Table, defaults, read
from protocol.document import DEFAULT_SKEW
from protocol.errors import ConfigError, MeshError, StorageError
from protocol.fetch_settings import FetchSettings
from protocol.keys import PublicKey
from protocol.schema import check_org_code

__all__ = ["DEFAULT_LISTEN", "ConfigError", "NodeConfig", "load_config", "parse_config"]

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

{control}
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
address_record_ttl_seconds = {ttl}
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
    #: one request to a peer (the wire's calls and the fetcher's block requests): the fetch settings' default
    request_timeout: int = int(FetchSettings.request_timeout)
    upload_mb_per_s: float = 0.0
    #: [control] port: the control API's port on 127.0.0.1 (0: any free port)
    control_port: int = 0
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    #: [http] and [[webhook]]: DICOMweb, web UI, metrics, health, webhooks (meshnode.web.config)
    http: HttpConfig = field(default_factory=HttpConfig)
    #: [audit_repository]: where security alerts and audit checkpoints go (meshnode.audit_export.config)
    audit_repository: AuditRepositoryConfig | None = None
    #: [[request_policy]] and [prior_query]: incoming study requests and prior queries (meshnode.node.request_config)
    requests: RequestConfig = field(default_factory=RequestConfig)
    #: [notify]: email to staff when a study arrives (meshnode.notify.config)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    #: [patient_access]: links for patients and people without a node (meshnode.patient.config)
    patient_access: PatientAccessConfig = field(default_factory=PatientAccessConfig)
    #: [reach]: relays, AutoNAT, hole punching; serving as a relay (meshnode.node.reach_config)
    reach: ReachConfig = field(default_factory=ReachConfig)
    #: [replication]: several nodes of one organisation (meshnode.node.replication_config)
    replication: ReplicationConfig = field(default_factory=ReplicationConfig)

    def __post_init__(self) -> None:
        try:
            check_org_code(self.org, "org")
            for addr in self.listen:
                check_multiaddr_text(addr, "listen")
            if self.directory:
                check_multiaddr_text(self.directory, "directory")
        except MeshError as exc:
            raise ConfigError(str(exc)) from None

    def _control_section(self) -> str:
        """[control], commented out while it holds the default."""
        return CONTROL_TEMPLATE.format(comment="" if self.control_port else "# ", port=self.control_port)

    def render(self) -> str:
        def toml_list(items: tuple[str, ...]) -> str:
            return "[" + ", ".join(f'"{i}"' for i in items) + "]"

        return TEMPLATE.format(
            org=self.org,
            listen=toml_list(self.listen),
            directory=self.directory,
            authority_keys=toml_list(tuple(k.peer_id for k in self.authority_keys)),
            skew=self.clock_skew,
            ttl=self.address_record_ttl,
            auto_fetch="true" if self.auto_fetch else "false",
            roster_refresh=self.roster_refresh,
            max_streams=self.max_streams_per_peer,
            max_rate=self.max_requests_per_second,
            request_timeout=self.request_timeout,
            upload=self.upload_mb_per_s,
            control=self._control_section(),
        ) + (self.gateway.render() + self.http.render() + self.notify.render() + self.patient_access.render()
                + self.reach.render())


CONTROL_TEMPLATE = """\
# The control API `meshnode status|share|inbox|...` talk to: on 127.0.0.1 only, at this port (0, the
# default: any free port). Its URL is written to control.json at every start, its token to control.token.
{comment}[control]
{comment}port = {port}
"""


def _build(root: Table, home: Path | None) -> NodeConfig:
    d = defaults(NodeConfig)
    node = root.table("node")
    org = node.text("org", check=check_org_code)
    listen = node.texts("listen", d["listen"], check=check_multiaddr_text)
    auto_fetch = node.boolean("auto_fetch", d["auto_fetch"])
    node.finish()
    directory = root.table("directory")
    address = directory.text("address", d["directory"], check=lambda v, k: check_multiaddr_text(v, k) if v else v)
    directory.finish()
    trust = root.table("trust")
    keys = tuple(PublicKey.from_peer_id(k) for k in trust.texts("authority_keys", (), check=PublicKey.check_peer_id))
    clock_skew = trust.integer("clock_skew_seconds", d["clock_skew"], 0, 86400)
    address_record_ttl = trust.integer("address_record_ttl_seconds", d["address_record_ttl"], 60, 30 * 86400)
    roster_refresh = trust.integer("roster_refresh_seconds", d["roster_refresh"], 1, 86400)
    trust.finish()
    control = root.table("control")
    control_port = control.integer("port", d["control_port"], 0, 65535)
    control.finish()
    limits = root.table("limits")
    config = NodeConfig(
        org=org, listen=listen, directory=address, authority_keys=keys, clock_skew=clock_skew,
        address_record_ttl=address_record_ttl, auto_fetch=auto_fetch, roster_refresh=roster_refresh,
        max_streams_per_peer=limits.integer("max_streams_per_peer", d["max_streams_per_peer"], 1, 4096),
        max_requests_per_second=limits.integer("max_requests_per_second", d["max_requests_per_second"], 1, 100_000),
        request_timeout=limits.integer("request_timeout_seconds", d["request_timeout"], 1, 3600),
        upload_mb_per_s=limits.number("upload_mb_per_s", d["upload_mb_per_s"], 0, 100_000),
        control_port=control_port,
        gateway=parse_gateway(root),
        http=parse_http(root, home),
        audit_repository=parse_audit_repository(root, home),
        requests=parse_requests(root),
        notify=parse_notify(root, home),
        patient_access=parse_patient_access(root, home),
        reach=parse_reach(root),
        replication=parse_replication(root),
    )
    if config.patient_access.enabled and not config.notify.enabled:
        raise ConfigError("patient_access.enabled: the links go by email: configure [notify]'s SMTP relay too")
    limits.finish()
    root.finish()
    return config


def parse_config(data: str | bytes, source: str = "node.toml", home: Path | None = None) -> NodeConfig:
    """node.toml's text (at most protocol.config_reader.MAX_CONFIG_BYTES) as a NodeConfig, or a ConfigError
    naming `source`, the dotted key and the problem. `home` is where relative file paths point."""
    return read(data, source, lambda root: _build(root, home))


def load_config(path: Path) -> NodeConfig:
    try:
        data = read_file(path, "node configuration", max_bytes=MAX_CONFIG_BYTES)
    except StorageError as exc:
        if not path.exists():
            raise ConfigError(f"no configuration at {path}; run `meshnode init` first") from None
        raise ConfigError(str(exc)) from None
    return parse_config(data, str(path), path.parent)
