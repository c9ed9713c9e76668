"""The gateway's part of node.toml: [dimse], [[caller]], [[route]], [[move_destination]], [[pacs]].

meshnode.config reads the file and hands its root table to `parse_gateway`, which reads the
gateway's tables with protocol.config_reader: unknown keys are refused with the key named, and
every error names the dotted key (``route[1].name``: the second [[route]]).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from meshnode.gateway.reconcile_config import (
    ReconciliationSettings,
    parse_reconciliation,
    render_reconciliation,
)
from meshnode.gateway.routes import (
    MAX_QUIET_PERIOD_S,
    MIN_QUIET_PERIOD_S,
    Route,
    RouteError,
    RouteTable,
    check_ae_title,
    check_route_name,
)
from protocol.config_reader import Table, defaults
from protocol.deid import DeidProfile, read_profile
from protocol.conflict import DEFAULT_POLICY, ConflictPolicy
from protocol.errors import ConfigError
from protocol.manifest import Priority, Purpose
from protocol.schema import check_org_code

T = TypeVar("T")
POLICIES = tuple(p.value for p in ConflictPolicy)
ON_REPLACE = ("hold", "overwrite")
PURPOSES = tuple(p.value for p in Purpose)
OPERATIONS = frozenset({"store", "find", "get", "move"})  # C-ECHO: every admitted caller


@dataclass(frozen=True)
class DimseSettings:
    enabled: bool = False
    ae_title: str = "MESHNODE"
    host: str = "127.0.0.1"
    port: int = 11112
    max_associations: int = 16
    #: largest PDU this node receives (what it advertises); a bigger one aborts the association
    max_pdu_bytes: int = 1 << 20
    #: largest instance accepted over C-STORE; a bigger one is refused (0xA700) without being buffered
    max_instance_mb: int = 2048
    quiet_period_s: int = 60
    acse_timeout_s: int = 30
    dimse_timeout_s: int = 60
    network_timeout_s: int = 120
    #: most pixel data one conversion decompresses (a retrieve whose caller does not take the stored syntax)
    max_conversion_mb: int = 512

    @property
    def max_instance_bytes(self) -> int:
        return self.max_instance_mb * 1024 * 1024


@dataclass(frozen=True)
class Caller:
    """A remote AE allowed to open associations with the gateway."""

    ae_title: str
    hosts: tuple[str, ...] = ()  # empty: from any address
    allow: frozenset[str] = OPERATIONS

    def admits(self, host: str) -> bool:
        return not self.hosts or host in self.hosts


@dataclass(frozen=True)
class DicomPeer:
    """A remote AE this node connects to: a C-MOVE destination."""

    ae_title: str
    host: str
    port: int


@dataclass(frozen=True)
class PacsDestination:
    """Where received studies are forwarded (C-STORE) once verified and receipted."""

    name: str
    ae_title: str
    host: str
    port: int
    calling_ae_title: str = ""  # "" : the [dimse] ae_title
    from_orgs: tuple[str, ...] = ()  # only studies from these sender orgs (empty: every study)
    retry_max_s: int = 300
    max_attempts: int = 5  # per instance the PACS refuses; an unreachable PACS is retried for ever
    #: a received revision replaces an instance already forwarded here: "hold" (a human decides) or "overwrite"
    #: (forward the new bytes: only for a PACS configured to overwrite, e.g. Orthanc's OverwriteInstances)
    on_replace: str = "hold"
    #: the purposes of the received manifests forwarded here (protocol.manifest.Purpose values): a clinical PACS
    #: takes care only; research (de-identified) studies only where a destination opts in (review 2 finding 8)
    purposes: tuple[str, ...] = ("care",)
    #: tell the sender of a study how its forward here ended (protocol.forward_report): on by default
    report_forward: bool = True


@dataclass(frozen=True)
class GatewayConfig:
    dimse: DimseSettings = field(default_factory=DimseSettings)
    callers: tuple[Caller, ...] = ()
    routes: RouteTable = field(default_factory=RouteTable)
    move_destinations: tuple[DicomPeer, ...] = ()
    pacs: tuple[PacsDestination, ...] = ()
    reconciliation: ReconciliationSettings = field(default_factory=ReconciliationSettings)
    #: [conflicts] default: the policy off any route (the node's own AE title, STOW-RS without a route, file ingest)
    conflict_default: ConflictPolicy = DEFAULT_POLICY

    def caller(self, ae_title: str) -> Caller | None:
        return next((c for c in self.callers if c.ae_title == ae_title.strip()), None)

    def move_destination(self, ae_title: str) -> DicomPeer | None:
        return next((d for d in self.move_destinations if d.ae_title == ae_title.strip()), None)

    def render(self) -> str:
        return render_gateway(self)


# -- reading (protocol.config_reader: unknown keys, wrong types and ranges are refused naming the key) --


def _check_host(value: str, where: str) -> str:
    """An IP address or a plain DNS host name (no ports, no URLs)."""
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    labels = value.split(".")
    if not value or len(value) > 253 or not all(
            label and len(label) <= 63 and label.replace("-", "").isalnum() and label.isascii()
            and not label.startswith("-") for label in labels):
        raise ConfigError(f"{where}: not an IP address or host name (got {value[:80]!r})")
    return value


def _unique(items: list[T], name: Callable[[T], str], t: Table, what: str) -> None:
    if sum(1 for item in items if name(item) == name(items[-1])) > 1:
        raise ConfigError(f"{t.path}: {name(items[-1])!r} is {what}")


def _dimse(root: Table) -> DimseSettings:
    t = root.table("dimse")
    d = defaults(DimseSettings)
    dimse = DimseSettings(
        enabled=t.boolean("enabled", d["enabled"]),
        ae_title=t.text("ae_title", d["ae_title"], check=check_ae_title),
        host=t.text("host", d["host"], check=_check_host),
        port=t.integer("port", d["port"], 0, 65535),
        max_associations=t.integer("max_associations", d["max_associations"], 1, 1024),
        max_pdu_bytes=t.integer("max_pdu_bytes", d["max_pdu_bytes"], 4096, 64 << 20),
        max_instance_mb=t.integer("max_instance_mb", d["max_instance_mb"], 1, 1 << 20),
        quiet_period_s=t.integer("quiet_period_seconds", d["quiet_period_s"], MIN_QUIET_PERIOD_S, MAX_QUIET_PERIOD_S),
        acse_timeout_s=t.integer("acse_timeout_seconds", d["acse_timeout_s"], 1, 3600),
        dimse_timeout_s=t.integer("dimse_timeout_seconds", d["dimse_timeout_s"], 1, 3600),
        network_timeout_s=t.integer("network_timeout_seconds", d["network_timeout_s"], 1, 86400),
        max_conversion_mb=t.integer("max_conversion_mb", d["max_conversion_mb"], 1, 1 << 16),
    )
    t.finish()
    return dimse


def _callers(root: Table) -> tuple[Caller, ...]:
    out: list[Caller] = []
    for t in root.tables("caller"):
        allow = frozenset(t.texts("allow", tuple(OPERATIONS), tuple(sorted(OPERATIONS))))
        if not allow:
            raise t.error("allow", f"choose from {sorted(OPERATIONS)}")
        out.append(Caller(t.text("ae_title", check=check_ae_title), t.texts("hosts", (), check=_check_host), allow))
        t.finish()
        _unique(out, lambda c: c.ae_title, t, "listed twice")
    return tuple(out)


def _routes(root: Table, dimse: DimseSettings, default_policy: ConflictPolicy) -> RouteTable:
    d = defaults(Route)
    routes = []
    for t in root.tables("route"):
        try:
            routes.append(Route(
                name=t.text("name", check=check_route_name),
                to=t.texts("to", check=check_org_code),
                priority=Priority(t.text("priority", Priority(d["priority"]).value, tuple(p.value for p in Priority))),
                purpose=Purpose(t.text("purpose", Purpose(d["purpose"]).value, tuple(p.value for p in Purpose))),
                called_ae=t.text("called_ae", "", check=check_ae_title) if t.has("called_ae") else "",
                quiet_period_s=t.integer("quiet_period_seconds", dimse.quiet_period_s, MIN_QUIET_PERIOD_S,
                                         MAX_QUIET_PERIOD_S),
                deid=_route_deid(t),
                on_conflict=ConflictPolicy(t.text("on_conflict", default_policy.value, POLICIES)),
            ))
        except RouteError as exc:
            raise ConfigError(f"{t.path}: {exc}") from None
        t.finish()
    try:
        table = RouteTable(routes)
    except RouteError as exc:
        raise ConfigError(f"route: {exc}") from None
    if dimse.ae_title in table.called_ae_titles:
        raise ConfigError(f"route: called_ae {dimse.ae_title!r} is the node's own [dimse] ae_title "
                          "(which stores without sharing)")
    return table


def _route_deid(t: Table) -> DeidProfile | None:
    """A [[route]]'s de-identification ([route.deid], protocol.deid): set for purpose research or when the table
    is there; its project defaults to the route's name."""
    name = str(t.values.get("name", ""))
    research = t.values.get("purpose") == Purpose.RESEARCH.value
    if "deid" not in t.values and not research:  # (not t.has: the known keys listed stay as they were)
        return None
    return read_profile(t.table("deid"), default_project=name)


def _move_destinations(root: Table) -> tuple[DicomPeer, ...]:
    out: list[DicomPeer] = []
    for t in root.tables("move_destination"):
        out.append(DicomPeer(t.text("ae_title", check=check_ae_title), t.text("host", check=_check_host),
                             t.integer("port", lo=1, hi=65535)))
        t.finish()
        _unique(out, lambda d: d.ae_title, t, "listed twice")
    return tuple(out)


def _pacs(root: Table) -> tuple[PacsDestination, ...]:
    out: list[PacsDestination] = []
    for t in root.tables("pacs"):
        d = defaults(PacsDestination)
        out.append(PacsDestination(
            name=t.text("name", check=check_route_name), ae_title=t.text("ae_title", check=check_ae_title),
            host=t.text("host", check=_check_host), port=t.integer("port", lo=1, hi=65535),
            calling_ae_title=t.text("calling_ae_title", d["calling_ae_title"], check=check_ae_title)
            if t.has("calling_ae_title") else "",
            from_orgs=t.texts("from_orgs", d["from_orgs"], check=check_org_code),
            retry_max_s=t.integer("retry_max_seconds", d["retry_max_s"], 1, 86400),
            max_attempts=t.integer("max_attempts", d["max_attempts"], 1, 1000),
            on_replace=t.text("on_replace", d["on_replace"], ON_REPLACE),
            purposes=t.texts("purposes", d["purposes"], PURPOSES, nonempty=True),
            report_forward=t.boolean("report_forward", d["report_forward"]),
        ))
        t.finish()
        _unique(out, lambda p: p.name, t, "used twice as a name")
    return tuple(out)


def parse_gateway(root: Table) -> GatewayConfig:
    """The gateway's tables of node.toml ([dimse], [[caller]], [[route]], [[move_destination]], [[pacs]])."""
    dimse = _dimse(root)
    default_policy = _conflict_default(root)
    return GatewayConfig(dimse=dimse, callers=_callers(root), routes=_routes(root, dimse, default_policy),
                         move_destinations=_move_destinations(root), pacs=_pacs(root),
                         reconciliation=parse_reconciliation(root), conflict_default=default_policy)


def _conflict_default(root: Table) -> ConflictPolicy:
    """[conflicts] default: the node's policy for a SOP Instance UID held here with other bytes."""
    t = root.table("conflicts")
    policy = ConflictPolicy(t.text("default", DEFAULT_POLICY.value, POLICIES))
    t.finish()
    return policy


# -- writing -------------------------------------------------------------------------------

_DIMSE_TEMPLATE = """
[dimse]
# The DICOM (DIMSE) gateway: a PACS or modality stores studies here (C-STORE), queries
# (C-FIND) and retrieves them (C-GET, C-MOVE). Only AEs listed as [[caller]] may connect.
enabled = {enabled}
# The node's own AE title: studies sent to it are stored, not shared. Routes add more titles.
ae_title = {ae_title}
host = {host}
port = {port}
max_associations = {max_associations}
# Largest PDU accepted (advertised to callers), and largest instance accepted over C-STORE.
max_pdu_bytes = {max_pdu_bytes}
max_instance_mb = {max_instance_mb}
# DICOM has no end-of-study signal: a study is announced this long after its last instance.
quiet_period_seconds = {quiet_period}
acse_timeout_seconds = {acse}
dimse_timeout_seconds = {dimse}
network_timeout_seconds = {network}
# Most pixel data one retrieve conversion decompresses (a caller that does not take the stored syntax).
max_conversion_mb = {max_conversion_mb}
"""

_EXAMPLES = """
# Who may connect (calling AE titles); unknown callers are rejected and audited.
# [[caller]]
# ae_title = "RGT_PACS"
# hosts = ["10.20.30.40"]                        # optional: only from these addresses
# allow = ["store", "find", "get", "move"]      # default: all (C-ECHO is always answered)

# Routing rules, selected by the called AE title: a PACS sends to MESH_STROKE and the
# study is shared, urgently, with the stroke network once no instance arrived for 20 s.
# [[route]]
# name = "stroke"
# called_ae = "MESH_STROKE"
# to = ["RJ1", "RAJ"]
# priority = "urgent"                            # stat, urgent or routine
# purpose = "care"                               # care, research or patient-access
# quiet_period_seconds = 20
# on_conflict = "reject"                         # same SOP Instance UID, other bytes: reject (held for a
#                                                # human: `meshnode conflicts`), replace or keep-both

# A research route shares a de-identified copy (PS3.15 Annex E basic profile), never the original; the
# options are Annex E's (docs/operators.md, "De-identification profiles"). An unknown key is refused.
# [[route]]
# name = "lung-ai"
# called_ae = "MESH_RESEARCH"
# to = ["RES01"]
# purpose = "research"
# [route.deid]
# project = "lung-ai"                            # pseudonyms are consistent within a project
# retain_longitudinal_temporal = true            # dates shifted per patient instead of removed
# retain_patient_characteristics = false
# retain_device_identity = false
# clean_descriptors = false
# clean_structured_content = false
# retain_safe_private = false
# safe_private = []                              # "gggg,xxee,Private Creator" (with retain_safe_private)
# pixel_risk = "hold"                            # hold (a human decides) or refuse

# C-MOVE destinations (a C-MOVE names an AE title; this says where it is).
# [[move_destination]]
# ae_title = "RGT_PACS"
# host = "10.20.30.40"
# port = 104

# Auto-forward: every received study, once verified and receipted, is stored into the PACS.
# [[pacs]]
# name = "main"
# ae_title = "RGT_PACS"
# host = "10.20.30.40"
# port = 104
# from_orgs = []                                 # only studies from these orgs (empty: all)
# retry_max_seconds = {retry_max_s:<24} # back-off cap while the PACS is unreachable
# on_replace = "hold"                            # a new revision changes a forwarded instance: hold (for a
#                                                # human) or overwrite (only if the PACS overwrites)
# purposes = ["care"]                            # received studies of these purposes only (research: opt in)
# report_forward = true                          # tell the study's sender how the forward here ended

# Same SOP Instance UID with other bytes off any route (the node's own AE, file ingest): see docs/operators.md.
# [conflicts]
# default = "reject"                             # reject (held for a human), replace or keep-both
"""


def _q(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's for printable ASCII)."""
    return json.dumps(value)


def _toml_list(items: Iterable[str], *, sort: bool = False) -> str:
    values = sorted(items) if sort else list(items)
    return "[" + ", ".join(_q(v) for v in values) + "]"


def _render_deid(profile: DeidProfile) -> str:
    lines = ["[route.deid]"]
    for key, value in profile.to_json().items():
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, list):
            lines.append(f"{key} = {_toml_list(str(v) for v in value)}")
        else:
            lines.append(f"{key} = {_q(str(value))}")
    return "\n".join(lines) + "\n"


def render_gateway(config: GatewayConfig) -> str:
    """The gateway's sections as node.toml text: the settings in force, then commented examples."""
    d = config.dimse
    out = [_DIMSE_TEMPLATE.format(
        enabled="true" if d.enabled else "false", ae_title=_q(d.ae_title), host=_q(d.host), port=d.port,
        max_associations=d.max_associations, max_pdu_bytes=d.max_pdu_bytes, max_instance_mb=d.max_instance_mb,
        quiet_period=d.quiet_period_s, acse=d.acse_timeout_s, dimse=d.dimse_timeout_s, network=d.network_timeout_s,
        max_conversion_mb=d.max_conversion_mb)]
    if config.conflict_default is not DEFAULT_POLICY:
        out.append(f"\n[conflicts]\ndefault = {_q(config.conflict_default.value)}\n")
    for c in config.callers:
        out.append(f"\n[[caller]]\nae_title = {_q(c.ae_title)}\nhosts = {_toml_list(c.hosts)}\n"
                   f"allow = {_toml_list(c.allow, sort=True)}\n")
    for r in config.routes:
        called = f"called_ae = {_q(r.called_ae)}\n" if r.called_ae else ""
        out.append(f"\n[[route]]\nname = {_q(r.name)}\n{called}to = {_toml_list(r.to)}\n"
                   f"priority = {_q(r.priority.value)}\npurpose = {_q(r.purpose.value)}\n"
                   f"quiet_period_seconds = {r.quiet_period_s}\non_conflict = {_q(r.on_conflict.value)}\n")
        if r.deid is not None:
            out.append(_render_deid(r.deid))
    for m in config.move_destinations:
        out.append(f"\n[[move_destination]]\nae_title = {_q(m.ae_title)}\nhost = {_q(m.host)}\nport = {m.port}\n")
    for p in config.pacs:
        calling = f"calling_ae_title = {_q(p.calling_ae_title)}\n" if p.calling_ae_title else ""
        out.append(f"\n[[pacs]]\nname = {_q(p.name)}\nae_title = {_q(p.ae_title)}\nhost = {_q(p.host)}\n"
                   f"port = {p.port}\n{calling}from_orgs = {_toml_list(p.from_orgs)}\n"
                   f"retry_max_seconds = {p.retry_max_s}\n"
                   f"max_attempts = {p.max_attempts}\non_replace = {_q(p.on_replace)}\n"
                   f"purposes = {_toml_list(p.purposes)}\n"
                   f"report_forward = {'true' if p.report_forward else 'false'}\n")
    out.append(render_reconciliation(config.reconciliation))
    out.append(_EXAMPLES.format(retry_max_s=defaults(PacsDestination)["retry_max_s"]))
    return "".join(out)
