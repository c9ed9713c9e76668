"""Read a scenario TOML file into a validated `Scenario`, or refuse it with the key and the problem.

Everything is checked before a run starts: unknown keys, wrong types,
impossible values (negative bandwidth, shares that do not sum to one) and
references (a referral, fault or attacker naming an organisation or group
that does not exist).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from protocol.backoff import MAX_JITTER, Backoff
from protocol.config_reader import MISSING, Table, defaults, read
from protocol.delivery_policy import DeliveryPolicy
from protocol.errors import ConfigError, LocalProtocolError, MeshError
from protocol.fetch_settings import FetchSettings
from protocol.manifest import Priority
from protocol.replication import DEFAULT_SCOPE, DEFAULT_TAKEOVER_SECONDS, TAKEOVER_SECONDS_RANGE, ReplicationScope
from protocol.schema import check_org_code
from simulations.scenario.errors import ScenarioError
from simulations.scenario.model import (
    AttackKind,
    Attacker,
    Availability,
    Costs,
    Count,
    Design,
    DesignKind,
    Emulation,
    Engine,
    Fault,
    FaultKind,
    Group,
    HALinks,
    HighAvailability,
    Hub,
    Modality,
    OrgKind,
    OrgOverride,
    Output,
    Referral,
    Relay,
    Scenario,
    ScheduledOutage,
    Workload,
)

MAX_ORGS = 5000
SHARE_TOLERANCE = 1e-6
#: the largest value of a daily or weekly profile (relative weights: bounded so their sum cannot overflow)
MAX_PROFILE = 1e6
FLAT_DAY = (1.0,) * 24
FLAT_WEEK = (1.0,) * 7


def load_scenario(path: Path) -> Scenario:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioError(f"{path}: no such scenario file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{path}: cannot read: {exc}") from None
    return parse_scenario(text, str(path))


def parse_scenario(text: str, source: str = "scenario") -> Scenario:
    return read(text, source, lambda root: _build(root, text), ScenarioError)


def _build(root: Table, text: str) -> Scenario:
    head = root.table("scenario", required=True)
    name = head.text("name")
    description = head.text("description", "")
    duration = head.duration("duration")
    if duration <= 0:
        raise ConfigError(f"{head.key('duration')}: must be positive")
    warmup = head.duration("warmup", 0.0)
    if warmup >= duration:
        raise ConfigError(f"{head.key('warmup')}: must be shorter than the duration")
    replications = head.integer("replications", 1, 1, 10_000)
    seed = head.integer("seed", 0, 0, 2**63 - 1)
    head.finish()

    engine = _engine(root.table("engine"))
    horizon = duration + engine.drain  # the run's last instant: nothing scheduled at or after it happens
    groups = tuple(_group(t, duration, horizon) for t in root.tables("groups"))
    if not groups:
        raise ConfigError("groups: at least one [[groups]] table is required")
    _check_names(groups)
    hub = _hub(root.table("hub"), {c for g in groups for c in g.codes} | {g.name for g in groups})
    known = _Names(groups)
    workload = _workload(root.table("workload", required=True), known)
    design = _design(root.table("design", required=True))
    faults = tuple(_fault(t, known, hub.code, horizon) for t in root.tables("faults"))
    attackers = tuple(_attacker(t, known, horizon) for t in root.tables("attackers"))
    output = _output(root.table("output"))
    emulation = _emulation(root.table("emulation"))
    relay = _relay(root.table("relay"), known)
    costs = _costs(root.table("costs"))
    ha = _ha(root.table("ha"), known)
    _check_node_faults(faults, ha, known)
    root.finish()
    return Scenario(name=name, description=description, duration=duration, warmup=warmup,
                    replications=replications, seed=seed, groups=groups, hub=hub, workload=workload,
                    design=design, faults=faults, attackers=attackers, engine=engine, output=output,
                    emulation=emulation, relay=relay, costs=costs, ha=ha, source=text)


class _Names:
    def __init__(self, groups: tuple[Group, ...]) -> None:
        self.groups = {g.name: g for g in groups}
        self.codes = {c: g for g in groups for c in g.codes}

    def members(self, name: str, key: str) -> tuple[str, ...]:
        if name in self.groups:
            return self.groups[name].codes
        if name in self.codes:
            return (name,)
        raise ConfigError(f"{key}: no organisation or group named {name!r}")


def _availability(t: Table) -> Availability:
    mtbf = t.duration("mtbf", None) if t.has("mtbf") else None
    if mtbf is not None and mtbf <= 0:
        raise ConfigError(f"{t.key('mtbf')}: must be positive")
    mttr = t.duration("mttr", defaults(Availability)["mttr"])
    if mttr <= 0:
        raise ConfigError(f"{t.key('mttr')}: must be positive")
    scheduled = []
    for s in t.tables("scheduled"):
        outage = ScheduledOutage(s.weekday("day", None), s.clock("start"), s.duration("duration"))
        if not 0 < outage.duration <= 7 * 86400:
            raise ConfigError(f"{s.key('duration')}: must be positive and at most a week")
        s.finish()
        scheduled.append(outage)
    t.finish()
    return Availability(mtbf, mttr, tuple(scheduled))


def _group(t: Table, duration: float, horizon: float) -> Group:
    name = t.text("name")
    kind_text = t.text("kind", choices=tuple(k.value for k in OrgKind))
    if t.has("codes"):
        codes = t.names("codes")
        if t.has("count") and t.integer("count", lo=1, hi=MAX_ORGS) != len(codes):
            raise ConfigError(f"{t.key('count')}: says {t.values['count']} but {len(codes)} codes are listed")
    else:
        count = t.integer("count", lo=1, hi=MAX_ORGS)
        prefix = t.text("code_prefix")
        width = max(3, len(str(count)))
        codes = tuple(f"{prefix}{i:0{width}d}" for i in range(1, count + 1))
    for i, code in enumerate(codes):
        check_org_code(code, f"{t.key('codes')}[{i}]")
    up, down = _bandwidth(t, "up"), _bandwidth(t, "down")
    joins, leaves = _membership(t, duration, horizon, 0.0, math.inf)
    group = Group(
        name=name, kind=OrgKind(kind_text), codes=tuple(codes), up=up, down=down,
        latency=t.duration("latency", 0.005), bandwidth_spread=t.number("bandwidth_spread", 0.0, 0.0, 3.0),
        weight=t.number("weight", 1.0, 0.0, 1e9), weight_spread=t.number("weight_spread", 0.0, 0.0, 3.0),
        availability=_availability(t.table("availability")), joins=joins, leaves=leaves,
    )
    overrides = tuple(_override(o, group, duration, horizon) for o in t.tables("overrides"))
    seen: set[str] = set()
    for i, o in enumerate(overrides):
        if o.code in seen:
            raise ConfigError(f"{t.key('overrides')}[{i}].code: {o.code} is overridden twice")
        seen.add(o.code)
    t.finish()
    return dataclasses.replace(group, overrides=overrides)


def _bandwidth(t: Table, key: str, default: object = MISSING) -> float:
    value = t.rate(key, default)
    if value <= 0:
        raise ConfigError(f"{t.key(key)}: bandwidth must be positive")
    return value


def _membership(t: Table, duration: float, horizon: float, joins: float, leaves: float) -> tuple[float, float]:
    """`joins` and `leaves` of a group or an override (defaults: the group's): joins before the arrivals end
    (`scenario.duration`), leaves after it joins and before the run ends (duration + drain)."""
    joins = t.duration("joins", joins)
    if t.has("joins") and joins >= duration:
        raise t.error("joins", f"{joins:g} s is at or after scenario.duration ({duration:g} s): it would never "
                               "send or receive a study")
    leaves = t.duration("leaves", leaves) if t.has("leaves") else leaves
    if t.has("leaves"):
        _within_run(t, "leaves", leaves, horizon)
    if leaves <= joins:
        raise t.error("leaves" if t.has("leaves") else "joins",
                      f"leaves ({leaves:g} s) must be after joins ({joins:g} s)")
    return joins, leaves


#: What [[groups.overrides]] may change: a subset of the group's keys.
OVERRIDE_KEYS = ("up", "down", "latency", "weight", "availability", "joins", "leaves")


def _override(t: Table, group: Group, duration: float, horizon: float) -> OrgOverride:
    code = t.text("code")
    if code not in group.codes:
        raise t.error("code", f"{code[:20]!r} is not an organisation of group {group.name!r}")
    joins, leaves = _membership(t, duration, horizon, group.joins, group.leaves)
    o = OrgOverride(
        code=code, up=_bandwidth(t, "up") if t.has("up") else None,
        down=_bandwidth(t, "down") if t.has("down") else None,
        latency=t.duration("latency") if t.has("latency") else None,
        weight=t.number("weight", lo=0.0, hi=1e9) if t.has("weight") else None,
        availability=_availability(t.table("availability")) if t.has("availability") else None,
        joins=joins if t.has("joins") else None, leaves=leaves if t.has("leaves") else None)
    t.finish()
    if not any(t.has(k) for k in OVERRIDE_KEYS):
        raise t.error("code", f"the override of {code} changes nothing (it may set {', '.join(OVERRIDE_KEYS)})")
    return o


def _check_names(groups: tuple[Group, ...]) -> None:
    seen_groups: set[str] = set()
    seen_codes: dict[str, str] = {}
    for i, g in enumerate(groups):
        if g.name in seen_groups:
            raise ConfigError(f"groups[{i}].name: group {g.name!r} is defined twice")
        seen_groups.add(g.name)
        for code in g.codes:
            if code in seen_codes:
                raise ConfigError(f"groups[{i}]: organisation code {code} is also in group {seen_codes[code]!r}")
            seen_codes[code] = g.name
    clash = seen_groups & set(seen_codes)
    if clash:
        raise ConfigError(f"groups: {sorted(clash)[0]!r} is both a group name and an organisation code")
    if len(seen_codes) > MAX_ORGS:
        raise ConfigError(f"groups: {len(seen_codes)} organisations, more than the {MAX_ORGS} supported")


def _hub(t: Table, taken: set[str]) -> Hub:
    d = defaults(Hub)
    hub = Hub(
        ingress=t.rate("ingress", d["ingress"]), egress=t.rate("egress", d["egress"]),
        latency=t.duration("latency", d["latency"]), max_concurrent=t.integer("max_concurrent", d["max_concurrent"],
                                                                               1, 10**7),
        processing_delay=t.duration("processing_delay", d["processing_delay"]),
        availability=_availability(t.table("availability")), code=t.text("code", d["code"], check=check_org_code),
        retention=t.duration("retention", d["retention"]),
    )
    for key, value in (("ingress", hub.ingress), ("egress", hub.egress)):
        if value <= 0:
            raise ConfigError(f"{t.key(key)}: bandwidth must be positive")
    if hub.code in taken:
        raise ConfigError(f"{t.key('code')}: {hub.code!r} is already an organisation or group")
    t.finish()
    return hub


def _shares(t: Table, key: str, names: tuple[str, ...]) -> tuple[tuple[str, float], ...]:
    sub = t.table(key)
    out = tuple((n, sub.number(n, 0.0, 0.0, 1.0)) for n in names if sub.has(n))
    sub.finish()
    return out


def _priority(t: Table, key: str, required: bool) -> tuple[tuple[Priority, float], ...] | None:
    if not t.has(key) and not required:
        return None
    sub = t.table(key)
    stat, urgent = sub.number("stat", 0.0, 0.0, 1.0), sub.number("urgent", 0.0, 0.0, 1.0)
    routine = sub.number("routine", max(0.0, 1.0 - stat - urgent), 0.0, 1.0)
    sub.finish()
    total = stat + urgent + routine
    if abs(total - 1.0) > SHARE_TOLERANCE:
        raise ConfigError(f"{t.key(key)}: stat + urgent + routine = {total:g}, not 1")
    return ((Priority.STAT, stat), (Priority.URGENT, urgent), (Priority.ROUTINE, routine))


def _count(t: Table) -> Count:
    d = defaults(Count)
    c = Count(median=t.number("median", lo=1.0, hi=1e6), sigma=t.number("sigma", d["sigma"], 0.0, 3.0),
              minimum=t.integer("min", d["minimum"], 1, 10**6), maximum=t.integer("max", d["maximum"], 1, 10**6))
    if c.minimum > c.maximum:
        raise ConfigError(f"{t.key('min')}: larger than max")
    t.finish()
    return c


def _workload(t: Table, known: _Names) -> Workload:
    per_year = t.number("studies_per_year", lo=0.0, hi=1e10)
    daily = t.numbers("daily_profile", 24, FLAT_DAY, hi=MAX_PROFILE)
    weekly = t.numbers("weekly_profile", 7, FLAT_WEEK, hi=MAX_PROFILE)
    priority = _priority(t, "priority", required=True)
    assert priority is not None
    modalities = []
    for m in t.tables("modalities"):
        modality = Modality(m.text("name"), m.number("share", lo=0.0, hi=1.0), _count(m.table("images", True)),
                            m.size("image_size"))
        if modality.image_bytes <= 0:
            raise ConfigError(f"{m.key('image_size')}: must be positive")
        m.finish()
        modalities.append(modality)
    if not modalities:
        raise ConfigError(f"{t.key('modalities')}: at least one [[workload.modalities]] is required")
    names = tuple(m.name for m in modalities)
    if len(set(names)) != len(names):
        raise ConfigError(f"{t.key('modalities')}: a modality name appears twice")
    total = sum(m.share for m in modalities)
    if abs(total - 1.0) > SHARE_TOLERANCE:
        raise ConfigError(f"{t.key('modalities')}: shares sum to {total:g}, not 1")
    referrals = tuple(_referral(r, known, names) for r in t.tables("referrals"))
    t.finish()
    _check_referrals(referrals, known)
    return Workload(per_year, daily, weekly, priority, tuple(modalities), referrals)


def _referral(t: Table, known: _Names, modalities: tuple[str, ...]) -> Referral:
    source = t.text("from")
    sources = known.members(source, t.key("from"))
    parts = _targets(t, known)
    target = "+".join(name for name, _ in parts)
    r = Referral(source=source, target=target, share=t.number("share", 1.0, 0.0, 1e9),
                 partners=t.integer("partners", 1, 1, MAX_ORGS), copies=t.integer("copies", 1, 1, 64),
                 priority=_priority(t, "priority", required=False), modalities=None,
                 targets=parts if len(parts) > 1 or isinstance(t.values.get("to"), list) else (),
                 daily_profile=t.numbers("daily_profile", 24, hi=MAX_PROFILE) if t.has("daily_profile") else None)
    if t.has("modalities"):
        shares = _shares(t, "modalities", modalities)
        total = sum(s for _, s in shares)
        if abs(total - 1.0) > SHARE_TOLERANCE:
            raise ConfigError(f"{t.key('modalities')}: shares sum to {total:g}, not 1")
        r = dataclasses.replace(r, modalities=shares)
    t.finish()
    if r.copies > r.partners:
        raise ConfigError(f"{t.key('copies')}: {r.copies} recipients per study but only {r.partners} partners")
    for name, _ in parts:
        targets = known.members(name, t.key("to"))
        for code in sources:
            possible = len([c for c in targets if c != code])
            if possible < r.partners:
                raise ConfigError(f"{t.key('partners')}: {code} needs {r.partners} distinct partners in {name!r}, "
                                  f"which has {possible}")
    return r


def _targets(t: Table, known: _Names) -> tuple[tuple[str, float], ...]:
    """`to`: a group or code, or a list of `{group = "...", share = 0.7}` tables whose shares sum to 1."""
    if not isinstance(t.raw("to"), list):
        name = t.text("to")
        known.members(name, t.key("to"))
        return ((name, 1.0),)
    parts: list[tuple[str, float]] = []
    for part in t.tables("to"):
        name = part.text("group")
        known.members(name, part.key("group"))
        share = part.number("share", lo=0.0, hi=1.0)
        if share <= 0:
            raise part.error("share", "must be positive (leave the part out instead)")
        if name in dict(parts):
            raise part.error("group", f"{name!r} is named twice")
        part.finish()
        parts.append((name, share))
    if not parts:
        raise t.error("to", "an empty list: name a group, or list {group, share} tables")
    total = sum(share for _, share in parts)
    if abs(total - 1.0) > SHARE_TOLERANCE:
        raise t.error("to", f"shares sum to {total:g}, not 1")
    return tuple(parts)


def _check_referrals(referrals: tuple[Referral, ...], known: _Names) -> None:
    covered: set[str] = set()
    for r in referrals:
        if r.share > 0:
            covered.update(known.members(r.source, "workload.referrals"))
    for code, group in known.codes.items():
        if group.weight_of(code) > 0 and code not in covered:
            raise ConfigError(f"groups ({group.name}): {code} sends studies (weight {group.weight_of(code):g}) "
                                "but no workload.referrals rule starts there; set weight = 0 or add a rule")


def _design(t: Table) -> Design:
    d = defaults(Design)
    kind = DesignKind(t.text("kind", choices=tuple(k.value for k in DesignKind)))
    if t.has("announce_max_attempts"):
        raise ConfigError(f"{t.key('announce_max_attempts')}: moved to [design.delivery] max_attempts "
                          "(default: the node's; 0: no limit)")
    delivery = _delivery(t.table("delivery"))
    node = FetchSettings()  # the node's: each default stated once, in protocol.fetch_settings
    window_initial = t.integer("window_initial", node.window_initial, 1, 4096)
    window_max = t.integer("window_max", node.window_max, 1, 4096)
    request_max_blocks = t.integer("request_max_blocks", node.request_max_blocks, 1, 64)
    min_request_blocks = t.integer("min_request_blocks", node.min_request_blocks, 1, 64)
    relayed_window_max = t.integer("relayed_window_max", node.relayed_window_max, 1, 4096)
    timing = {key: t.duration(key, default) for key, default in (
        ("discovery_interval", node.discovery_interval), ("request_timeout", node.request_timeout),
        ("roster_refresh", d["roster_refresh"]))}
    granularity = t.size("granularity", d["granularity"])
    if granularity < 1024:
        raise ConfigError(f"{t.key('granularity')}: must be at least 1KiB")
    if window_max < window_initial:
        raise ConfigError(f"{t.key('window_max')}: smaller than window_initial")
    if min_request_blocks > request_max_blocks:
        raise ConfigError(f"{t.key('min_request_blocks')}: larger than request_max_blocks")
    for key, value in timing.items():
        if not value > 0:
            raise ConfigError(f"{t.key(key)}: must be positive")
    fetch = FetchSettings(
        window_min=min(node.window_min, window_initial), window_initial=window_initial, window_max=window_max,
        request_max_blocks=request_max_blocks, min_request_blocks=min_request_blocks,
        relayed_window_max=relayed_window_max, request_timeout=timing["request_timeout"], discovery_interval=timing["discovery_interval"])
    design = Design(
        kind=kind, granularity=granularity, fallback_after=t.duration("fallback_after", d["fallback_after"]),
        roster_refresh=timing["roster_refresh"], verify_rate=t.rate("verify_rate", d["verify_rate"]), fetch=fetch,
        delivery=delivery,
    )
    t.finish()
    return design


def _delivery(t: Table) -> DeliveryPolicy:
    """[design.delivery]: the node's delivery policy (protocol.delivery_policy), field by field."""
    node = DeliveryPolicy()  # each default stated once, there
    timing = {key: t.duration(key, default) for key, default in (
        ("backoff_base", node.backoff.base), ("backoff_cap", node.backoff.cap),
        ("attempt_timeout", node.attempt_timeout))}
    for key, value in timing.items():
        if not 0 < value < math.inf:
            raise t.error(key, "must be a positive, finite duration")
    factor = t.number("backoff_factor", node.backoff.factor, 1.0, 100.0)
    max_attempts = t.integer("max_attempts", node.max_attempts or 0, 0, 1_000_000)  # 0: no limit
    jitter = t.number("jitter", node.jitter, 0.0, MAX_JITTER)
    t.finish()
    try:
        return DeliveryPolicy(Backoff(timing["backoff_base"], factor, timing["backoff_cap"]),
                              timing["attempt_timeout"], max_attempts or None, jitter)
    except LocalProtocolError as exc:
        raise ConfigError(f"{t.path}: {exc}") from exc


def _costs(t: Table) -> Costs:
    """[costs]: prices per decimal GB transferred over access links and per GB-month the hub stores."""
    d = defaults(Costs)
    costs = Costs(currency=t.text("currency", d["currency"]),
                  transfer_per_gb=t.number("transfer_per_gb", d["transfer_per_gb"], 0.0, 1e6),
                  storage_per_gb_month=t.number("storage_per_gb_month", d["storage_per_gb_month"], 0.0, 1e6))
    if not costs.currency or len(costs.currency) > 8:
        raise ConfigError(f"{t.key('currency')}: a short currency code such as GBP")
    t.finish()
    return costs


def _relay(t: Table, known: _Names) -> Relay:
    """[relay]: organisations behind NAT (groups or codes) and the relay they are reached through."""
    d = defaults(Relay)
    names = t.names("behind", ())
    behind = tuple(dict.fromkeys(c for i, name in enumerate(names)
                                 for c in known.members(name, f"{t.key('behind')}[{i}]")))
    relay = Relay(behind, t.duration("latency", d["latency"]), t.rate("bandwidth", d["bandwidth"]))
    if relay.bandwidth <= 0:
        raise ConfigError(f"{t.key('bandwidth')}: bandwidth must be positive")
    t.finish()
    return relay


MAX_HA_NODES = 16


def _ha(t: Table, known: _Names) -> HighAvailability:
    """[ha]: organisations (groups or codes) running several nodes, and how (defaults: the node's own)."""
    names = t.names("orgs", ())
    orgs = tuple(dict.fromkeys(c for i, name in enumerate(names)
                               for c in known.members(name, f"{t.key('orgs')}[{i}]")))
    d = defaults(HighAvailability)
    ha = HighAvailability(
        orgs=orgs,
        nodes=t.integer("nodes", d["nodes"], 1, MAX_HA_NODES),
        replication=ReplicationScope(t.text("replication", DEFAULT_SCOPE.value, tuple(m.value for m in ReplicationScope))),
        takeover_seconds=t.duration("takeover_seconds", float(DEFAULT_TAKEOVER_SECONDS)),
        links=HALinks(t.text("links", HALinks.SHARED.value, tuple(k.value for k in HALinks))),
        lan_rate=t.rate("lan_rate", d["lan_rate"]))
    if t.values and not orgs:
        raise ConfigError(f"{t.key('orgs')}: name the organisations (groups or codes) that run several nodes")
    low, high = TAKEOVER_SECONDS_RANGE
    if not low <= ha.takeover_seconds <= high:
        raise ConfigError(f"{t.key('takeover_seconds')}: between 1 s and a day (the node's range)")
    if ha.takeover_seconds != int(ha.takeover_seconds):
        raise ConfigError(f"{t.key('takeover_seconds')}: whole seconds (the node's setting is an integer)")
    if ha.lan_rate <= 0:
        raise ConfigError(f"{t.key('lan_rate')}: must be positive")
    t.finish()
    return ha


def _check_node_faults(faults: tuple[Fault, ...], ha: HighAvailability, known: _Names) -> None:
    """A node-failure naming one node targets organisations that run that many nodes ([ha])."""
    for i, f in enumerate(faults):
        if f.node is None:
            continue
        for name in f.targets:
            for code in known.members(name, f"faults[{i}].targets"):
                if ha.nodes_of(code) == 1:
                    raise ConfigError(f"faults[{i}].node: {code} runs 1 node(s) ([ha]): drop `node`, or list "
                                      f"{code} in ha.orgs")
                if f.node >= ha.nodes_of(code):
                    raise ConfigError(f"faults[{i}].node: {code} runs {ha.nodes_of(code)} node(s) ([ha]); "
                                      f"nodes are numbered from 0")


def _within_run(t: Table, key: str, at: float, horizon: float) -> None:
    """Refuse a time at or after the run's end (`scenario.duration` + `engine.drain`): it would never happen."""
    if at >= horizon:
        raise t.error(key, f"{_seconds(at)} is at or after the end of the run ({_seconds(horizon)}: "
                           "scenario.duration + engine.drain), so it would never happen")


def _seconds(value: float) -> str:
    return f"{value:g} s"


def _fault(t: Table, known: _Names, hub_code: str, horizon: float) -> Fault:
    kind = FaultKind(t.text("kind", choices=tuple(k.value for k in FaultKind)))
    start, length = t.duration("start"), t.duration("duration")
    _within_run(t, "start", start, horizon)
    if length <= 0:
        raise ConfigError(f"{t.key('duration')}: must be positive")
    if kind is FaultKind.HUB_OUTAGE:
        targets: tuple[str, ...] = (hub_code,)
    else:
        targets = t.names("targets")
        for i, name in enumerate(targets):
            if not (kind is FaultKind.LINK_DEGRADATION and name in (hub_code, "hub")):
                codes = known.members(name, f"{t.key('targets')}[{i}]")
                windows = [known.codes[c].membership(c) for c in codes]
                if not any(j < start + length and start < lv for j, lv in windows):
                    j, lv = windows[0]
                    raise t.error(f"targets[{i}]", f"{name} is not a member at any time of this fault "
                                  f"({_seconds(start)} to {_seconds(start + length)}; joins {_seconds(j)}, leaves "
                                  + ("never" if math.isinf(lv) else _seconds(lv)) + "), so it would do nothing")
    d = defaults(Fault)
    factor = t.number("factor", d["factor"], 0.0, 1.0) if kind is FaultKind.LINK_DEGRADATION else 1.0
    if kind is FaultKind.LINK_DEGRADATION and factor <= 0:
        raise ConfigError(f"{t.key('factor')}: a degraded link keeps some capacity (use node-failure for none)")
    direction = str(d["direction"])
    if kind is FaultKind.LINK_DEGRADATION:
        direction = t.text("direction", direction, ("up", "down", "both"))
    others: tuple[str, ...] = ()
    if kind is FaultKind.PARTITION:
        others = t.names("others", ())
        for i, name in enumerate(others):
            known.members(name, f"{t.key('others')}[{i}]")
    node = t.integer("node", None, 0, MAX_HA_NODES - 1) if t.has("node") else None
    if node is not None and kind is not FaultKind.NODE_FAILURE:
        raise ConfigError(f"{t.key('node')}: only a node-failure names one node of an organisation")
    t.finish()
    return Fault(kind, targets, start, length, factor, direction, others, node)


def _attacker(t: Table, known: _Names, horizon: float) -> Attacker:
    kind = AttackKind(t.text("kind", choices=tuple(k.value for k in AttackKind)))
    org = t.text("org")
    if org not in known.codes:
        raise ConfigError(f"{t.key('org')}: no organisation with code {org!r}")
    if known.codes[org].membership(org) != (0.0, math.inf):
        raise t.error("org", f"{org} joins or leaves during the run; an attacker is a member throughout")
    start = t.duration("start", 0.0)
    end = t.duration("end", math.inf) if t.has("end") else math.inf
    if end <= start:
        raise ConfigError(f"{t.key('end')}: must be after start")
    _within_run(t, "start", start, horizon)
    revoke_at = t.duration("revoke_at") if t.has("revoke_at") else None
    if revoke_at is not None:
        _within_run(t, "revoke_at", revoke_at, horizon)
    if kind is AttackKind.REVOKED:
        revoke_at = start if revoke_at is None else revoke_at
    targets = t.names("targets", ())
    for i, name in enumerate(targets):
        known.members(name, f"{t.key('targets')}[{i}]")
    d = defaults(Attacker)
    priority = Priority(t.text("priority", Priority(d["priority"]).value, tuple(p.value for p in Priority)))
    attacker = Attacker(kind=kind, org=org, start=start, end=end,
                        probability=t.number("probability", d["probability"], 0.0, 1.0),
                        rate=t.number("rate", d["rate"], 0.0, 500.0), study_bytes=t.size("study_size", d["study_bytes"]),
                        priority=priority, targets=targets, revoke_at=revoke_at)
    t.finish()
    return attacker


def _engine(t: Table) -> Engine:
    d = defaults(Engine)
    e = Engine(time_slices=t.integer("time_slices", d["time_slices"], 1, 1024),
               slice_overlap=t.duration("slice_overlap", d["slice_overlap"]),
               per_image_events=t.boolean("per_image_events", d["per_image_events"]),
               drain=t.duration("drain", d["drain"]), idle_fast_path=t.boolean("idle_fast_path", d["idle_fast_path"]))
    t.finish()
    return e


def _output(t: Table) -> Output:
    d = defaults(Output)
    o = Output(records=t.text("records", d["records"], ("csv", "csv.gz", "none")),
               record_fraction=t.number("record_fraction", d["record_fraction"], 0.0, 1.0),
               timeseries_bin=t.duration("timeseries_bin", d["timeseries_bin"]),
               hub_bin=t.duration("hub_bin", d["hub_bin"]))
    for key in ("timeseries_bin", "hub_bin"):
        if getattr(o, key) < 1.0:
            raise ConfigError(f"{t.key(key)}: must be at least 1s")
    t.finish()
    return o


def _emulation(t: Table) -> Emulation:
    d = defaults(Emulation)
    e = Emulation(studies=t.integer("studies", d["studies"], 1, 1000),
                  max_images=t.integer("max_images", d["max_images"], 1, 2000),
                  bandwidth_scale=t.number("bandwidth_scale", d["bandwidth_scale"], 1e-6, 1.0),
                  min_gap=t.duration("min_gap", d["min_gap"]), timeout=t.duration("timeout", d["timeout"]))
    t.finish()
    return e
