"""The workload: which studies arrive when, from whom to whom, how big and how urgent.

Studies are drawn day by day, each day from its own sub-stream of the
`workload` stream (so a time slice of a run draws exactly the studies the
whole run draws for those days). Within a day, arrivals are a Poisson
process whose rate follows the weekly and daily profiles (day 0 is a
Monday, 00:00). Every step is vectorised with numpy.

A referral rule with its own `daily_profile` moves the arrival times of the
studies it routes, after every draw, by the quantile map from the workload's
profile to the rule's (a study at the q-th quantile of the day under the
workload's profile arrives at the q-th quantile under the rule's): no extra
draw, the same studies (count per day and rule, senders, recipients, sizes,
ids), only their hour changes.

Organisations that join or leave (`joins` / `leaves`): a study whose sender is
not a member at its arrival time is not generated; a recipient that is not a
member is replaced by another partner of the same route that is (chosen by
the route's shares from the same uniform draw, rescaled), and with none left
that recipient's transfer is not created (a study left with no recipient is
not generated). No other study changes: every draw is made as if everyone
were a member, and ids are assigned before anything is dropped.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from protocol.manifest import Priority
from simulations import rng
from simulations.scenario.model import Scenario
from simulations.topology import Topology

DAY = 86400.0
PRIORITIES = (Priority.STAT, Priority.URGENT, Priority.ROUTINE)
STUDIES_PER_DAY_ID = 10_000_000  # study id = day * this + index within the day


@dataclass
class Studies:
    """A batch of studies, sorted by arrival time. recipients is padded with -1."""

    id: np.ndarray  # int64
    time: np.ndarray  # float64, seconds since the start
    sender: np.ndarray  # int32 organisation index
    recipients: np.ndarray  # int32 [n, max copies]
    modality: np.ndarray  # int8 index into scenario.workload.modalities
    priority: np.ndarray  # int8: 0 stat, 1 urgent, 2 routine (Priority.rank)
    images: np.ndarray  # int32
    nbytes: np.ndarray  # float64

    def __len__(self) -> int:
        return len(self.id)

    def take(self, mask: np.ndarray) -> Studies:
        return Studies(self.id[mask], self.time[mask], self.sender[mask], self.recipients[mask],
                       self.modality[mask], self.priority[mask], self.images[mask], self.nbytes[mask])


def empty(width: int = 1) -> Studies:
    return Studies(np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int32), np.zeros((0, width), np.int32),
                   np.zeros(0, np.int8), np.zeros(0, np.int8), np.zeros(0, np.int32), np.zeros(0))


def max_copies(scenario: Scenario) -> int:
    return max((r.copies for r in scenario.workload.referrals), default=1)


class WorkloadModel:
    """Everything needed to draw a day of studies, precomputed once per scenario and topology."""

    def __init__(self, scenario: Scenario, topology: Topology) -> None:
        self.scenario = scenario
        self.topology = topology
        w = scenario.workload
        self.width = max_copies(scenario)
        self.senders = topology.senders()
        weights = np.array([topology.orgs[i].weight for i in self.senders], dtype=float)
        self.sender_cdf = np.cumsum(weights) / weights.sum() if len(weights) else np.zeros(0)
        names = [m.name for m in w.modalities]
        global_mod = np.array([m.share for m in w.modalities])
        global_pri = np.array([s for _, s in w.priority])
        self.rule_mod_cdf = []
        self.rule_pri_cdf = []
        for r in w.referrals:
            mod = global_mod if r.modalities is None else np.array([dict(r.modalities).get(n, 0.0) for n in names])
            pri = global_pri if r.priority is None else np.array([s for _, s in r.priority])
            self.rule_mod_cdf.append(_cdf(mod))
            self.rule_pri_cdf.append(_cdf(pri))
        self.log_median = np.log([m.images.median for m in w.modalities])
        self.sigma = np.array([m.images.sigma for m in w.modalities])
        self.min_images = np.array([m.images.minimum for m in w.modalities])
        self.max_images = np.array([m.images.maximum for m in w.modalities])
        self.image_bytes = np.array([m.image_bytes for m in w.modalities])
        weekly = np.array(w.weekly_profile)
        daily = np.array(w.daily_profile)
        self.week_factor = weekly / weekly.mean()
        self.hour_share = daily / daily.sum()
        # per rule: its own daily profile's hourly shares, or None (the workload's)
        self.rule_hours: list[np.ndarray | None] = [
            None if r.daily_profile is None else np.array(r.daily_profile) / sum(r.daily_profile) for r in w.referrals]
        self.joins = np.array([o.joins for o in topology.orgs], dtype=float)
        self.leaves = np.array([o.leaves for o in topology.orgs], dtype=float)
        self.comings_and_goings = bool(((self.joins > 0) | np.isfinite(self.leaves)).any())

    def expected_per_day(self, day: int) -> float:
        return self.scenario.workload.studies_per_year / 365.0 * float(self.week_factor[day % 7])

    def day(self, day: int, replication: int) -> Studies:
        """The studies arriving on this day (day 0 starts at t = 0, a Monday)."""
        if len(self.senders) == 0:
            return empty(self.width)
        g = rng.stream(self.scenario.seed, "workload", day, replication=replication)
        per_hour = g.poisson(self.expected_per_day(day) * self.hour_share)
        n = int(per_hour.sum())
        hours = np.repeat(np.arange(24), per_hour)
        times = np.sort(day * DAY + (hours + g.random(n)) * 3600.0)
        sender = self.senders[np.searchsorted(self.sender_cdf, g.random(n), side="right").clip(0, len(self.senders) - 1)]
        rule = np.zeros(n, np.int64)
        recipients = np.full((n, self.width), -1, np.int32)
        modality = np.zeros(n, np.int8)
        priority = np.zeros(n, np.int8)
        u_rule, u_partner, u_mod, u_pri = g.random(n), g.random(n), g.random(n), g.random(n)
        route_no = np.zeros(n, np.int64)
        routes = self.topology.routes
        cdfs = self.topology.route_cdf
        for s in np.unique(sender):
            rows = np.nonzero(sender == s)[0]
            rule_pick = np.searchsorted(cdfs[s], u_rule[rows], side="right").clip(0, len(routes[s]) - 1)
            for k in np.unique(rule_pick):
                route = routes[s][k]
                sel = rows[rule_pick == k]
                rule[sel] = route.rule
                route_no[sel] = k
                if route.copies == 1:
                    pick = np.searchsorted(route.cdf, u_partner[sel], side="right").clip(0, len(route.partners) - 1)
                    recipients[sel, 0] = route.partners[pick]
                else:
                    p = np.diff(np.concatenate(([0.0], route.cdf)))
                    for row in sel:
                        chosen = g.choice(len(route.partners), size=route.copies, replace=False, p=p)
                        recipients[row, :route.copies] = route.partners[np.sort(chosen)]
        for k in np.unique(rule):
            sel = np.nonzero(rule == k)[0]
            modality[sel] = np.searchsorted(self.rule_mod_cdf[k], u_mod[sel], side="right").clip(0, len(self.log_median) - 1)
            priority[sel] = np.searchsorted(self.rule_pri_cdf[k], u_pri[sel], side="right").clip(0, 2)
        m = modality.astype(np.int64)
        raw = np.exp(self.log_median[m] + self.sigma[m] * g.standard_normal(n))
        images = np.clip(np.rint(raw), self.min_images[m], self.max_images[m]).astype(np.int32)
        nbytes = images * self.image_bytes[m]
        ids = day * STUDIES_PER_DAY_ID + np.arange(n, dtype=np.int64)
        batch = Studies(ids, times, sender.astype(np.int32), recipients, modality, priority, images, nbytes)
        if any(h is not None for h in self.rule_hours):
            batch = self._rule_profiles(batch, day, rule)
        if self.comings_and_goings:
            batch = self._members_only(batch, route_no, u_partner)
        return batch

    def _rule_profiles(self, batch: Studies, day: int, rule: np.ndarray) -> Studies:
        """Move each study of a rule with its own daily profile to the same quantile of the day under that
        profile (the module's docstring), then sort the batch by time again."""
        times = batch.time.copy()
        g_share = self.hour_share
        g_start = np.concatenate(([0.0], np.cumsum(g_share)[:-1]))
        for k, share in enumerate(self.rule_hours):
            if share is None:
                continue
            sel = np.nonzero(rule == k)[0]
            if not len(sel):
                continue
            hours = (times[sel] - day * DAY) / 3600.0
            h = np.floor(hours).astype(np.int64).clip(0, 23)
            q = (g_start[h] + (hours - h) * g_share[h]).clip(0.0, 1.0)  # quantile of the day, workload's profile
            cum = np.cumsum(share)
            start = cum - share
            last = int(np.nonzero(share > 0)[0][-1])
            j = np.minimum(np.searchsorted(cum, q, side="right"), last)
            within = np.divide(q - start[j], share[j], out=np.zeros(len(sel)), where=share[j] > 0)
            times[sel] = day * DAY + (j + within.clip(0.0, 1.0 - 1e-9)) * 3600.0
        order = np.argsort(times, kind="stable")
        moved = Studies(batch.id, times, batch.sender, batch.recipients, batch.modality, batch.priority, batch.images,
                        batch.nbytes)
        return moved.take(order)

    def _members_only(self, batch: Studies, route_no: np.ndarray, u_partner: np.ndarray) -> Studies:
        """Drop studies whose sender is not a member at arrival; replace recipients that are not (the module's
        docstring); drop studies left with no recipient. `route_no` and `u_partner` are in draw order, which
        `batch.id` keeps (id - day * STUDIES_PER_DAY_ID)."""
        if not len(batch):
            return batch
        t = batch.time
        keep = (self.joins[batch.sender] <= t) & (t < self.leaves[batch.sender])
        rec = batch.recipients.copy()
        valid = rec >= 0
        idx = np.where(valid, rec, 0)
        absent = valid & ~((self.joins[idx] <= t[:, None]) & (t[:, None] < self.leaves[idx]))
        draw = batch.id % STUDIES_PER_DAY_ID
        for row in np.nonzero(keep & absent.any(axis=1))[0]:
            route = self.topology.routes[int(batch.sender[row])][int(route_no[draw[row]])]
            partners = route.partners
            here = (self.joins[partners] <= t[row]) & (t[row] < self.leaves[partners])
            shares = np.diff(np.concatenate(([0.0], route.cdf)))
            chosen = [int(r) for r in rec[row] if r >= 0]
            u = float(u_partner[draw[row]])
            out: list[int] = []
            for r in chosen:
                pos = int(np.nonzero(partners == r)[0][0])
                u = (u - (route.cdf[pos] - shares[pos])) / shares[pos] if shares[pos] > 0 else u
                u = min(max(u, 0.0), 1.0 - 1e-12)  # uniform within the band the draw fell in
                if here[pos]:
                    out.append(r)
                    continue
                ok = here & ~np.isin(partners, chosen + out)
                if not ok.any():
                    continue  # no member partner left: this recipient's transfer is not created
                w = np.where(ok, shares, 0.0)
                c = np.cumsum(w) / w.sum()
                pick = min(int(np.searchsorted(c, u, side="right")), len(c) - 1)
                if not ok[pick]:  # u at the very top of [0, 1) after rounding: the last member partner
                    pick = int(np.nonzero(ok)[0][-1])
                out.append(int(partners[pick]))
            rec[row] = -1
            rec[row, :len(out)] = out
            keep[row] = bool(out)
        return Studies(batch.id, t, batch.sender, rec, batch.modality, batch.priority, batch.images,
                       batch.nbytes).take(keep)

    def window(self, start: float, end: float, replication: int) -> Iterator[Studies]:
        """Day batches covering [start, end), trimmed to it."""
        first, last = int(start // DAY), int(math.ceil(end / DAY))
        for d in range(first, last):
            batch = self.day(d, replication)
            mask = (batch.time >= start) & (batch.time < end)
            yield batch if mask.all() else batch.take(mask)


def _cdf(p: np.ndarray) -> np.ndarray:
    c: np.ndarray = np.cumsum(p) / p.sum()
    c[-1] = 1.0
    return c
