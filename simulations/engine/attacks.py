"""Attackers: a node that serves corrupt blocks, drops requests, floods announcements, or is revoked.

Corrupting and dropping are properties of the attacker's node while the
attack lasts (each block or request is affected with the attacker's
probability, drawn from the `attackers` stream). A flooder announces bogus
studies to its targets at a fixed rate; they are real fetches for the
targets (they compete with real studies for the targets' downlinks and, at
the priority the attacker claims, for their schedulers) but are reported
apart. A revocation takes effect once every node has refreshed its roster
(`design.roster_refresh` after the admins revoke).
"""

from __future__ import annotations

import math

from simulations.engine.designs import Design
from simulations.engine.state import Study
from simulations.engine.world import World
from simulations.scenario.model import AttackKind, Attacker

BOGUS_ID_BASE = -(1 << 40)


class Attacks:
    def __init__(self, world: World, design: Design) -> None:
        self.world = world
        self.design = design
        self.bogus_sent = 0
        q = world.queue
        start = world.window.start
        for i, a in enumerate(world.scenario.attackers):
            org = world.code_index[a.org]
            if a.kind in (AttackKind.CORRUPT_BLOCKS, AttackKind.DROP_REQUESTS):
                q.at(max(a.start, start), self._begin, (a, org))
                if a.end < math.inf:
                    q.at(max(a.end, start), self._stop, (a, org))
            elif a.kind is AttackKind.FLOOD_ANNOUNCEMENTS and a.rate > 0:
                targets = self._targets(a, org)
                first = max(a.start, start)
                q.at(first, self._flood, (i, a, org, targets, int((first - a.start) * a.rate)))
            if a.revoke_at is not None:
                q.at(max(a.revoke_at + world.scenario.design.roster_refresh, start), self._revoke, org)

    def _targets(self, a: Attacker, org: int) -> list[int]:
        if a.targets:
            codes = [c for name in a.targets for c in self.world.scenario.members(name)]
            return [self.world.code_index[c] for c in codes if c != a.org]
        partners = sorted({int(p) for r in self.world.topology.routes[org] for p in r.partners})
        return partners or [o.index for o in self.world.orgs if o.index != org][:1]

    def _begin(self, arg: tuple[Attacker, int], now: float) -> None:
        a, org = arg
        o = self.world.orgs[org]
        if a.kind is AttackKind.CORRUPT_BLOCKS:
            o.corrupt = a.probability
        else:
            o.drop = a.probability

    def _stop(self, arg: tuple[Attacker, int], now: float) -> None:
        a, org = arg
        o = self.world.orgs[org]
        if a.kind is AttackKind.CORRUPT_BLOCKS:
            o.corrupt = 0.0
        else:
            o.drop = 0.0

    def _flood(self, arg: tuple[int, Attacker, int, list[int], int], now: float) -> None:
        i, a, org, targets, k = arg
        world = self.world
        if now >= a.end or now >= world.window.arrivals_end or world.orgs[org].revoked or not targets:
            return
        if world.orgs[org].online:
            image_bytes = world.image_bytes[0]
            images = max(1, round(a.study_bytes / image_bytes))
            sid = BOGUS_ID_BASE - i * (1 << 32) - k
            s = Study(sid, now, org, [targets[k % len(targets)]], 0, a.priority.rank, images, a.study_bytes,
                      image_bytes, recorded=False, bogus=True)
            self.bogus_sent += 1
            self.design.arrive(s, now)
        world.queue.at(now + 1.0 / a.rate, self._flood, (i, a, org, targets, k + 1))

    def _revoke(self, org: int, now: float) -> None:
        if not self.world.orgs[org].revoked:
            self.design.revoked(org, now)
