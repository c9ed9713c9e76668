"""What a run measures, aggregated as it goes: histograms, counters, sampled per-transfer rows.

Delivery times and times to first image go into log-spaced histograms (200
bins per decade, 1 ms .. 10^7 s, so a percentile read from one is within
0.6 % of the exact value) per priority and modality; the exact values of the
sampled transfers go to the per-transfer records. Nothing here keeps a row
per study in memory unless that row is written out.

Every delivered transfer also goes into a histogram of its recipient
organisation and one of its link class (the bottleneck access rate,
min(sender uplink, recipient downlink), nominal: `LINK_CLASSES`), so
per-organisation percentiles cover every transfer, not only the sampled
records (memory: organisations x NBINS ints).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import NamedTuple

from simulations.engine.state import Status, Transfer
from simulations.timeline import Interval

BINS_PER_DECADE = 200
LOW_DECADE = -3
HIGH_DECADE = 7
NBINS = (HIGH_DECADE - LOW_DECADE) * BINS_PER_DECADE

#: link classes of a transfer's bottleneck access rate, min(sender up, recipient down), in bits/s: name, lower bound
LINK_CLASSES = (("<100Mbit/s", 0.0), ("100Mbit/s-1Gbit/s", 100e6), (">=1Gbit/s", 1e9))


def link_class(rate: float) -> int:
    """The index in LINK_CLASSES of a bottleneck access rate in bytes/s (a lower bound belongs to its class)."""
    bits = rate * 8.0
    k = 0
    for i, (_, low) in enumerate(LINK_CLASSES):
        if bits >= low:
            k = i
    return k


class Record(NamedTuple):
    """One transfer (study x recipient) as written to transfers-rK.csv; times in s, -1 when it did not happen."""

    study: int
    sender: int
    recipient: int
    modality: int
    priority: int
    images: int
    bytes: float
    arrival: float
    announced: float
    first_image: float
    delivered: float
    status: int
    reason: str
    from_sender: float
    from_peers: float
    from_hub: float
    wasted: float
    duplicate: float
    control: float
    announce_attempts: int
    affected_by_fault: bool
    bogus: bool


FIELDS = Record._fields


def bin_of(seconds: float) -> int:
    if seconds <= 10.0**LOW_DECADE:
        return 0
    return min(NBINS - 1, int((math.log10(seconds) - LOW_DECADE) * BINS_PER_DECADE))


@dataclass
class OutageStats:
    what: str  # node | hub
    org: int
    start: float
    end: float
    cause: str
    affected: int = 0
    delivered: int = 0
    failed: int = 0
    last_delivered: float = -1.0


@dataclass
class Counters:
    transfers: int = 0
    delivered: int = 0
    failed: int = 0
    in_flight: int = 0
    warmup_excluded: int = 0
    bytes_delivered: float = 0.0
    bytes_received: float = 0.0  # every data byte that reached a recipient (delivered or wasted)
    wasted: float = 0.0
    duplicate: float = 0.0
    control: float = 0.0
    from_sender: float = 0.0
    from_peers: float = 0.0
    from_hub: float = 0.0
    jain_sum: float = 0.0
    jain_sq: float = 0.0
    jain_n: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


class Recorder:
    def __init__(self, modalities: int, warmup: float, record_fraction: float, sampled: bool,
                 outages: list[tuple[str, int, Interval]], fair_rate: list[list[float]] | None = None) -> None:
        self.warmup = warmup
        self.fraction = record_fraction
        self.keep_rows = sampled
        self.delivery: dict[tuple[int, int], list[int]] = {}
        self.first_image: dict[tuple[int, int], list[int]] = {}
        self.delivery_by_org: dict[int, list[int]] = {}  # recipient organisation -> delivery-time histogram
        self.delivery_by_link: dict[int, list[int]] = {}  # LINK_CLASSES index -> delivery-time histogram
        self.modalities = modalities
        self.c = Counters()
        self.rows: list[Record] = []
        self.outages = [OutageStats(w, o, iv.start, iv.end, iv.cause) for w, o, iv in outages]
        self._by_org: dict[int, list[OutageStats]] = {}
        for st in self.outages:
            self._by_org.setdefault(st.org, []).append(st)
        for sts in self._by_org.values():
            sts.sort(key=lambda s: s.start)
        self._starts = {org: [s.start for s in sts] for org, sts in self._by_org.items()}
        self.fair_rate = fair_rate  # [sender][recipient] bottleneck rate, for per-transfer fairness
        self.link_class = None if fair_rate is None else [[link_class(r) for r in row] for row in fair_rate]
        self.bogus_fetched = 0
        self.bogus_bytes = 0.0
        self.bans: list[tuple[float, str, str]] = []  # (time, banned peer, by whom)
        self.corrupt_blocks = 0  # corrupt blocks received and rejected by the node's check (verify_block)
        self.corrupt_bytes = 0.0  # their bytes
        self.dropped_requests = 0
        self.request_timeouts = 0
        self.corrupt_accepted = 0  # corrupt blocks the check took for the block: 0 unless the check is broken
        self.hub_design = False
        self.fallbacks = 0  # hybrid: fetches that added the hub as a holder
        self.live: dict[Transfer, None] = {}
        self.own_open = 0

    def _hist(self, table: dict[tuple[int, int], list[int]], priority: int, modality: int) -> list[int]:
        h = table.get((priority, modality))
        if h is None:
            h = table[(priority, modality)] = [0] * NBINS
        return h

    def open(self, transfers: list[Transfer]) -> None:
        """New transfers: tracked until resolved (what is left at the end is in flight)."""
        for t in transfers:
            self.live[t] = None
            if t.study.recorded and not t.study.bogus:
                self.own_open += 1

    def resolve(self, t: Transfer, status: Status, now: float, reason: str = "") -> None:
        if t.resolved:
            return
        self.live.pop(t, None)
        if t.study.recorded and not t.study.bogus:
            self.own_open -= 1
        t.status = status
        t.reason = reason
        s = t.study
        if status is Status.DELIVERED:
            t.delivered_at = now
        if s.bogus:
            if status is Status.DELIVERED:
                self.bogus_fetched += 1
                self.bogus_bytes += s.nbytes
            return
        if not s.recorded:
            return
        self._count(t, now)

    def _count(self, t: Transfer, now: float) -> None:
        s = t.study
        c = self.c
        if s.time < self.warmup:
            c.warmup_excluded += 1
        else:
            c.transfers += 1
            c.wasted += t.wasted
            c.duplicate += t.duplicate
            c.control += t.control
            c.from_sender += t.from_sender
            c.from_peers += t.from_peers
            c.from_hub += t.from_hub
            c.bytes_received += t.from_sender + t.from_peers + t.from_hub + t.wasted + t.duplicate
            if t.status is Status.DELIVERED:
                c.delivered += 1
                c.bytes_delivered += s.nbytes
                elapsed = now - s.time
                b = bin_of(elapsed)
                self._hist(self.delivery, s.priority, s.modality)[b] += 1
                h = self.delivery_by_org.get(t.recipient)
                if h is None:
                    h = self.delivery_by_org[t.recipient] = [0] * NBINS
                h[b] += 1
                if self.link_class is not None:
                    k = self.link_class[s.sender][t.recipient]
                    h = self.delivery_by_link.get(k)
                    if h is None:
                        h = self.delivery_by_link[k] = [0] * NBINS
                    h[b] += 1
                if t.first_image_at >= 0:
                    self._hist(self.first_image, s.priority, s.modality)[bin_of(t.first_image_at - s.time)] += 1
                if self.fair_rate is not None and t.fetch_started >= 0 and now > t.fetch_started:
                    x = (s.nbytes / (now - t.fetch_started)) / self.fair_rate[s.sender][t.recipient]
                    c.jain_sum += x
                    c.jain_sq += x * x
                    c.jain_n += 1
            elif t.status is Status.FAILED:
                c.failed += 1
                c.reasons[t.reason] = c.reasons.get(t.reason, 0) + 1
            else:
                c.in_flight += 1
        self._outages(t, now)
        if self.keep_rows and _sampled(s.id, t.recipient, self.fraction):
            self.rows.append(row(t))

    def _outages(self, t: Transfer, now: float) -> None:
        s = t.study
        orgs = (s.sender, t.recipient, -1) if self.hub_design else (s.sender, t.recipient)
        end = now if t.status is not Status.IN_FLIGHT else math.inf
        for org in orgs:
            starts = self._starts.get(org)
            if not starts:
                continue
            i = bisect.bisect_right(starts, end) - 1
            sts = self._by_org[org]
            while i >= 0 and sts[i].end > s.time:
                st = sts[i]
                if st.start < end:
                    t.affected = True
                    st.affected += 1
                    if t.status is Status.DELIVERED:
                        st.delivered += 1
                        st.last_delivered = max(st.last_delivered, now)
                    elif t.status is Status.FAILED:
                        st.failed += 1
                i -= 1

    def finish(self, now: float) -> None:
        """The end of the run: whatever is not resolved is still in flight."""
        for t in self.live:
            if t.study.recorded and not t.study.bogus:
                self._count(t, now)
        self.live.clear()


def _sampled(study: int, recipient: int, fraction: float) -> bool:
    if fraction >= 1.0:
        return True
    h = (study * 0x9E3779B97F4A7C15 + recipient * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFF
    return h < fraction * 0x1000000000000


def row(t: Transfer) -> Record:
    s = t.study
    return Record(s.id, s.sender, t.recipient, s.modality, s.priority, s.images, s.nbytes, s.time, t.announced_at,
            t.first_image_at, t.delivered_at, int(t.status), t.reason, t.from_sender, t.from_peers, t.from_hub,
            t.wasted, t.duplicate, t.control, t.attempts, t.affected, s.bogus)
