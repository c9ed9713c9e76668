"""The seeded topology: concrete organisations, their access links, volumes and referral partners.

Drawn from the `topology` stream of the master seed only, so every
replication of a scenario runs on the same network (replications differ in
workload, faults and attacks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from simulations import rng
from simulations.scenario.model import Availability, OrgKind, Referral, Scenario


@dataclass(frozen=True)
class Org:
    index: int
    code: str
    group: str
    kind: OrgKind
    up: float  # bytes/s
    down: float
    latency: float  # one-way, s
    weight: float  # relative volume of studies it sends
    availability: Availability
    joins: float = 0.0  # it is a member of the exchange from `joins` until `leaves` (s from the start)
    leaves: float = math.inf


@dataclass(frozen=True)
class Route:
    """One referral rule as seen from one sending organisation."""

    rule: int
    partners: np.ndarray  # organisation indices
    cdf: np.ndarray  # cumulative choice probabilities over partners (last is 1)
    copies: int


@dataclass(frozen=True)
class Topology:
    orgs: tuple[Org, ...]
    index: dict[str, int]
    routes: tuple[tuple[Route, ...], ...]  # per sending organisation
    route_cdf: tuple[np.ndarray, ...]  # per sending organisation: cumulative shares of its routes

    def org(self, code: str) -> Org:
        return self.orgs[self.index[code]]

    def senders(self) -> np.ndarray:
        return np.array([o.index for o in self.orgs if o.weight > 0 and self.routes[o.index]], dtype=np.int64)

    def members(self, scenario: Scenario, name: str) -> list[int]:
        return [self.index[c] for c in scenario.members(name)]


def build_topology(scenario: Scenario) -> Topology:
    g = rng.stream(scenario.seed, "topology")
    orgs: list[Org] = []
    for group in scenario.groups:
        n = group.count
        spread = group.bandwidth_spread
        factor = np.exp(g.normal(0.0, spread, n)) if spread > 0 else np.ones(n)
        volume = np.exp(g.normal(0.0, group.weight_spread, n)) if group.weight_spread > 0 else np.ones(n)
        for i, code in enumerate(group.codes):
            # An override is the organisation's exact value; the group's spread draws are made all the same, so
            # no other organisation's draws move.
            o = group.override(code)
            joins, leaves = group.membership(code)
            orgs.append(Org(
                len(orgs), code, group.name, group.kind,
                float(group.up * factor[i]) if o is None or o.up is None else o.up,
                float(group.down * factor[i]) if o is None or o.down is None else o.down,
                group.latency if o is None or o.latency is None else o.latency,
                float(group.weight * volume[i]) if o is None or o.weight is None else o.weight,
                group.availability if o is None or o.availability is None else o.availability, joins, leaves))
    index = {o.code: o.index for o in orgs}
    weight = np.array([o.weight for o in orgs])
    per_org: list[list[tuple[Route, float]]] = [[] for _ in orgs]
    for rule_no, rule in enumerate(scenario.workload.referrals):
        sources = [index[c] for c in scenario.members(rule.source)]
        parts = [([index[c] for c in scenario.members(name)], share) for name, share in rule.parts]
        for src in sources:
            # `to` with several groups: one route per group, with its share of the rule's (drawn in that order,
            # after the single-group rule's draw order, so a plain `to` draws as it always did)
            for targets, share in parts:
                per_org[src].append((_route(g, rule_no, rule, src, targets, weight), rule.share * share))
    routes = tuple(tuple(r for r, _ in rs) for rs in per_org)
    cdfs = []
    for rs in per_org:
        shares = np.array([s for _, s in rs], dtype=float)
        cdfs.append(np.cumsum(shares) / shares.sum() if len(rs) and shares.sum() > 0 else np.zeros(0))
    return Topology(tuple(orgs), index, routes, tuple(cdfs))


def _route(g: np.random.Generator, rule_no: int, rule: Referral, src: int, targets: list[int],
           weight: np.ndarray) -> Route:
    candidates = np.array([t for t in targets if t != src], dtype=np.int64)
    w = np.maximum(weight[candidates], 1e-9)
    chosen = g.choice(len(candidates), size=rule.partners, replace=False, p=w / w.sum())
    partners = candidates[np.sort(chosen)]
    # A sender's partners are not used equally: the first-chosen (largest) gets the most, Zipf-like.
    pw = np.maximum(weight[partners], 1e-9) * g.lognormal(0.0, 0.5, len(partners))
    cdf = np.cumsum(pw) / pw.sum()
    cdf[-1] = 1.0
    return Route(rule_no, partners, cdf, rule.copies)
