"""What a scenario says, as frozen dataclasses (SI units: bytes, bytes/s, seconds).

Built by `simulations.scenario.parse` from a TOML file and validated there;
everything downstream (topology, workload, engine, emulation) reads these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

from protocol.delivery_policy import DeliveryPolicy
from protocol.fetch_settings import FetchSettings
from protocol.manifest import Priority
from protocol.replication import ReplicationScope


class OrgKind(str, Enum):
    ACUTE_TRUST = "acute-trust"
    INDEPENDENT_SECTOR = "independent-sector"
    TELERADIOLOGY = "teleradiology"
    RESEARCH = "research"
    STROKE_NETWORK = "stroke-network"


class DesignKind(str, Enum):
    HUB = "hub"
    MESH = "mesh"
    HYBRID = "hybrid"  # the mesh, with the hub as a fallback holder


class FaultKind(str, Enum):
    NODE_FAILURE = "node-failure"
    LINK_DEGRADATION = "link-degradation"
    PARTITION = "partition"
    HUB_OUTAGE = "hub-outage"


class AttackKind(str, Enum):
    CORRUPT_BLOCKS = "corrupt-blocks"  # serves blocks whose bytes do not match their CID
    DROP_REQUESTS = "drop-requests"  # accepts block requests and never answers
    FLOOD_ANNOUNCEMENTS = "flood-announcements"  # announces bogus studies to make targets fetch junk
    REVOKED = "revoked"  # an organisation whose certificate is revoked mid-run


@dataclass(frozen=True)
class ScheduledOutage:
    day: int | None  # 0 Monday .. 6 Sunday; None every day
    start: float  # seconds after midnight
    duration: float


@dataclass(frozen=True)
class Availability:
    mtbf: float | None = None  # mean time between random failures (None: none)
    mttr: float = 4 * 3600.0  # mean time to repair
    scheduled: tuple[ScheduledOutage, ...] = ()


@dataclass(frozen=True)
class OrgOverride:
    """[[groups.overrides]]: one organisation of a counted group that differs from it (one slow site).

    Each field left None is the group's. `up`, `down`, `latency` and `weight` are the organisation's exact
    values (the group's `bandwidth_spread` / `weight_spread` draws are still made, and ignored for it, so no
    other organisation's draws move)."""

    code: str
    up: float | None = None
    down: float | None = None
    latency: float | None = None
    weight: float | None = None
    availability: Availability | None = None
    joins: float | None = None
    leaves: float | None = None


@dataclass(frozen=True)
class Group:
    name: str
    kind: OrgKind
    codes: tuple[str, ...]  # one organisation code per member
    up: float  # access-link upload, bytes/s (median of the group)
    down: float
    latency: float  # one-way latency of the access link, s
    bandwidth_spread: float  # lognormal sigma of per-organisation link rates (topology stream)
    weight: float  # relative number of studies an organisation of this group sends
    weight_spread: float  # lognormal sigma of per-organisation volume (topology stream)
    availability: Availability
    #: when its organisations join and leave the exchange, s from the start (absent before / after)
    joins: float = 0.0
    leaves: float = math.inf
    overrides: tuple[OrgOverride, ...] = ()

    @property
    def count(self) -> int:
        return len(self.codes)

    def override(self, code: str) -> OrgOverride | None:
        return next((o for o in self.overrides if o.code == code), None)

    def membership(self, code: str) -> tuple[float, float]:
        """(joins, leaves) of one of its organisations: the override's, else the group's."""
        o = self.override(code)
        joins = self.joins if o is None or o.joins is None else o.joins
        leaves = self.leaves if o is None or o.leaves is None else o.leaves
        return joins, leaves

    def weight_of(self, code: str) -> float:
        """The relative volume one of its organisations sends, before the group's weight_spread."""
        o = self.override(code)
        return self.weight if o is None or o.weight is None else o.weight


@dataclass(frozen=True)
class Hub:
    ingress: float = 10e9 / 8  # bytes/s into the hub, all senders together (10 Gbit/s)
    egress: float = 10e9 / 8
    latency: float = 0.002  # one-way latency from the core to the hub, s
    max_concurrent: int = 1000  # transfers (uploads + downloads) the hub runs at once; others queue
    processing_delay: float = 30.0  # from a study fully received to forwarding it (index, notify)
    availability: Availability = field(default_factory=Availability)
    code: str = "HUB"
    #: how long the hub keeps a study after forwarding it (its storage cost: bytes in x retention)
    retention: float = 30 * 86400.0


@dataclass(frozen=True)
class Relay:
    """Organisations behind NAT, reached through a Circuit Relay v2 relay (issue 16; docs/researchers.md).

    A path between two organisations is relayed when either is behind NAT: its bytes cross the relay (in on
    its downlink, out on its uplink, shared by every relayed flow) and each direction goes via the relay,
    `latency` further from the core. The hub is public: paths to and from it are never relayed. The
    recipient's fetch scheduler is told which holders are relayed (protocol.fetch: direct holders first)."""

    behind: tuple[str, ...] = ()  # organisation codes (groups expanded)
    latency: float = 0.010  # one-way latency from the core to the relay, s
    bandwidth: float = 1e9 / 8  # the relay's link, each direction, bytes/s (1 Gbit/s)


class HALinks(str, Enum):
    """Where an organisation's nodes sit ([ha] links)."""

    SHARED = "shared"  # one site: the nodes share the org's access link; sibling copies cross the site's LAN
    SEPARATE = "separate"  # one site each, each with an access link like the org's; copies cross access links


@dataclass(frozen=True)
class HighAvailability:
    """Several nodes per organisation (issue 16's high availability; docs/researchers.md, simulations/engine/
    org_nodes.py). Each listed organisation runs `nodes` nodes that fail independently (each with the
    organisation's availability); the organisation is down only when all are. Which node fetches a study, and
    when a sibling takes over, is protocol.org_fetch's decision; what siblings copy, protocol.replication's.
    Defaults are the node's (protocol.replication: DEFAULT_SCOPE, DEFAULT_TAKEOVER_SECONDS)."""

    orgs: tuple[str, ...] = ()  # organisation codes (groups expanded)
    nodes: int = 2
    replication: ReplicationScope = ReplicationScope.ALL
    takeover_seconds: float = 30.0
    links: HALinks = HALinks.SHARED
    lan_rate: float = 1e9 / 8  # links = shared: the site LAN a sibling copy crosses, bytes/s

    def nodes_of(self, code: str) -> int:
        return self.nodes if code in self.orgs else 1


@dataclass(frozen=True)
class Costs:
    """Prices a report turns bytes into money with ([costs]; issue 18). Per decimal GB (1e9 bytes).

    `transfer_per_gb` is charged on every byte crossing an organisation's or the hub's access link (what a
    network operator bills: each byte once on the way out and once on the way in); `storage_per_gb_month`
    on the hub's stored bytes x `hub.retention` (30-day months)."""

    currency: str = "GBP"
    transfer_per_gb: float = 0.0
    storage_per_gb_month: float = 0.0


@dataclass(frozen=True)
class Count:
    """A lognormal count (images per study), clipped to [minimum, maximum]."""

    median: float
    sigma: float = 0.0
    minimum: int = 1
    maximum: int = 100_000


@dataclass(frozen=True)
class Modality:
    name: str
    share: float
    images: Count
    image_bytes: float


@dataclass(frozen=True)
class Referral:
    source: str  # a group name or an organisation code
    target: str  # the `to` as written (one name; several: the names joined with "+")
    share: float  # of the source organisations' studies
    partners: int  # distinct target organisations each source organisation refers to (seeded topology)
    copies: int  # recipients per study
    priority: tuple[tuple[Priority, float], ...] | None  # overrides the workload's shares
    modalities: tuple[tuple[str, float], ...] | None
    #: `to` naming several groups (or codes) with shares of this rule's studies; empty: all to `target`
    targets: tuple[tuple[str, float], ...] = ()
    #: 24 relative hourly rates of the studies this rule routes (overrides the workload's); None: the workload's
    daily_profile: tuple[float, ...] | None = None

    @property
    def parts(self) -> tuple[tuple[str, float], ...]:
        """Where the rule's studies go: (group or code, share of them), shares summing to 1."""
        return self.targets or ((self.target, 1.0),)


@dataclass(frozen=True)
class Workload:
    studies_per_year: float
    daily_profile: tuple[float, ...]  # 24 relative hourly rates
    weekly_profile: tuple[float, ...]  # 7 relative daily rates, Monday first
    priority: tuple[tuple[Priority, float], ...]
    modalities: tuple[Modality, ...]
    referrals: tuple[Referral, ...]


@dataclass(frozen=True)
class Design:
    kind: DesignKind
    granularity: float = 1 << 20  # bytes per scheduler block (the node uses 1 MiB blocks)
    fallback_after: float = 60.0  # hybrid: a fetch without progress this long adds the hub as a holder
    verify_rate: float = 0.0  # bytes/s a node checks instance digests at completion (0: instantly)
    roster_refresh: float = 60.0
    #: the node's fetch settings (protocol.fetch_settings; block counts in the node's 1 MiB blocks, scaled to
    #: `granularity` by the engine), as the scenario changes them
    fetch: FetchSettings = field(default_factory=FetchSettings)
    #: the node's delivery policy (protocol.delivery_policy: announces' backoff, attempt timeout, attempt limit,
    #: jitter), as the scenario's [design.delivery] changes it
    delivery: DeliveryPolicy = field(default_factory=DeliveryPolicy)


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    targets: tuple[str, ...]  # organisation codes or group names ("hub" for a hub outage)
    start: float
    duration: float
    factor: float = 1.0  # link degradation: capacity multiplier
    direction: str = "both"  # link degradation: up, down or both
    others: tuple[str, ...] = ()  # partition: the other side (empty: everyone else)
    node: int | None = None  # node-failure at an [ha] organisation: only this node (0-based; None: all of them)


@dataclass(frozen=True)
class Attacker:
    kind: AttackKind
    org: str
    start: float
    end: float
    probability: float = 1.0  # corrupt-blocks / drop-requests: share of requests affected
    rate: float = 1.0  # flood: bogus announcements per second
    study_bytes: float = 50e6  # flood: size of each bogus study
    priority: Priority = Priority.STAT  # flood: the priority the bogus manifests claim
    targets: tuple[str, ...] = ()  # flood: organisations announced to (empty: the org's partners)
    revoke_at: float | None = None  # admins revoke its certificate at this time


@dataclass(frozen=True)
class Engine:
    time_slices: int = 1
    slice_overlap: float = 6 * 3600.0
    per_image_events: bool = False
    drain: float = 0.0  # after `duration`, no new studies; transfers in flight may finish
    idle_fast_path: bool = True  # exact shortcut for fetches an idle node's scheduler would issue as one request


@dataclass(frozen=True)
class Output:
    records: str = "csv"  # csv | csv.gz | none
    record_fraction: float = 1.0
    timeseries_bin: float = 3600.0
    hub_bin: float = 60.0


@dataclass(frozen=True)
class Emulation:
    studies: int = 6  # replay the first N studies of the workload
    max_images: int = 24  # cap on images per generated study
    bandwidth_scale: float = 1.0  # emulated link rate = scenario rate x scale
    min_gap: float = 2.0  # seconds between consecutive shares (compressed arrival times)
    timeout: float = 300.0


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    duration: float
    warmup: float
    replications: int
    seed: int
    groups: tuple[Group, ...]
    hub: Hub
    workload: Workload
    design: Design
    faults: tuple[Fault, ...] = ()
    attackers: tuple[Attacker, ...] = ()
    engine: Engine = field(default_factory=Engine)
    output: Output = field(default_factory=Output)
    emulation: Emulation = field(default_factory=Emulation)
    relay: Relay = field(default_factory=Relay)
    costs: Costs = field(default_factory=Costs)
    ha: HighAvailability = field(default_factory=HighAvailability)
    source: str = ""  # the TOML text it was read from (hashed into the run manifest)

    @property
    def org_codes(self) -> tuple[str, ...]:
        return tuple(c for g in self.groups for c in g.codes)

    def group(self, name: str) -> Group | None:
        return next((g for g in self.groups if g.name == name), None)

    def members(self, name: str) -> tuple[str, ...]:
        """Organisation codes a group name or a code stands for (empty when neither)."""
        g = self.group(name)
        if g is not None:
            return g.codes
        return (name,) if name in self.org_codes else ()
