"""Admission of a peer's inbound requests: tell a flood from a burst of honest work.

Pure bookkeeping (no I/O, no clock: `now` is a parameter); meshnode.node.limits drives it for the
node's libp2p gate, and waits where it says WAIT.

Three mechanisms, each sized for honest concurrency rather than against it:

- A token bucket per peer: `rate` requests a second sustained, up to `burst` at once after a quiet
  spell. A request with no token left is refused (REFUSE): that is a flood, whatever its shape.
- Concurrency per peer and lane: at most `max_streams` requests of a lane handled at once. A request
  beyond them WAITs for a slot (the stream stays open, nothing of it is read) instead of being refused:
  back-pressure an honest client feels as latency, never as an error. Each lane bounds its queue
  (`max_waiting`) and refuses past it; the queue is sized above what an honest node ever opens to one
  peer (meshnode.node.limits.OUTBOUND_SLOTS: 48 data, 32 control streams, below `max_streams`), so an
  honest node never even waits. A wait that ends without a slot (`time_out`: its patience ran out) is
  scored like a refusal: holding the slots and the queue with silent streams is a flood too.
- A disconnect only for sustained abuse: every refusal adds one to the peer's abuse score, which
  decays with a half-life of `abuse_half_life` seconds; the peer is cut off when the score reaches
  `abuse_threshold`. A peer refused now and then (a burst that overran) is forgiven; one refused
  tens of times in a few seconds is not.

A peer's state is forgotten once it is idle and fully recovered (full bucket, score near zero), and at
most `max_peers` are tracked: the state never grows with the number of requests or of peers seen.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

from protocol.errors import LocalProtocolError
from protocol.exchange_messages import (
    ANNOUNCE_PROTOCOL,
    BLOCKS_PROTOCOL,
    FORWARD_REPORT_PROTOCOL,
    HAVE_PROTOCOL,
    HELLO_PROTOCOL,
    RECALL_PROTOCOL,
    RECEIPT_PROTOCOL,
)


class Lane(enum.Enum):
    DATA = "data"  # announce, have, blocks: work a peer asks of this node
    CONTROL = "control"  # hello, receipt, recall, forward report: tiny; a queue of its own, so data work never delays them


LANES: dict[str, Lane] = {
    ANNOUNCE_PROTOCOL: Lane.DATA, HAVE_PROTOCOL: Lane.DATA, BLOCKS_PROTOCOL: Lane.DATA,
    HELLO_PROTOCOL: Lane.CONTROL, RECEIPT_PROTOCOL: Lane.CONTROL, RECALL_PROTOCOL: Lane.CONTROL,
    FORWARD_REPORT_PROTOCOL: Lane.CONTROL,
}


def lane_of(protocol_id: str) -> Lane:
    """The lane of an exchange protocol; any other protocol is data (the stricter lane)."""
    return LANES.get(protocol_id, Lane.DATA)


class Verdict(enum.Enum):
    ADMIT = "admit"  # a slot is taken: call `leave` when the request ends
    WAIT = "wait"  # queued: call `retry` when a slot may be free, or `give_up`
    REFUSE = "refuse"  # refused (counted towards the abuse score); `reason` says why


@dataclass(frozen=True)
class AdmissionSettings:
    #: requests of one lane handled at once, per peer
    max_streams: int = 64
    #: requests of one lane queued behind those, per peer; refused (and scored) past it
    max_waiting: int = 64
    #: requests a second, sustained, per peer; and how many at once after a quiet spell
    rate: float = 500.0
    burst: float = 1000.0
    #: refusals (decaying) before a peer is disconnected, and their half-life in seconds
    abuse_threshold: float = 20.0
    abuse_half_life: float = 10.0
    #: peers whose state is kept at once (only certified peers reach admission)
    max_peers: int = 4096

    def __post_init__(self) -> None:
        if self.max_streams < 1 or self.max_waiting < 0 or not self.rate > 0 or not self.burst >= 1 \
                or not self.abuse_threshold >= 1 or not self.abuse_half_life > 0 or self.max_peers < 1:
            raise LocalProtocolError("admission settings: need max_streams >= 1, max_waiting >= 0, rate > 0, "
                                     "burst >= 1, abuse_threshold >= 1, abuse_half_life > 0, max_peers >= 1")


@dataclass
class PeerAdmission:
    tokens: float
    updated: float
    active: dict[Lane, int] = field(default_factory=dict)
    waiting: dict[Lane, int] = field(default_factory=dict)
    score: float = 0.0
    scored_at: float = 0.0

    def busy(self) -> bool:
        return any(self.active.values()) or any(self.waiting.values())


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str = ""


class Admission:
    """Per-peer admission state of one node. Every ADMIT is paired with `leave`, every WAIT with
    `retry` (until it admits or refuses) or `give_up`."""

    def __init__(self, settings: AdmissionSettings | None = None) -> None:
        self.settings = settings or AdmissionSettings()
        self._peers: dict[str, PeerAdmission] = {}
        #: totals since this node started, for status and metrics
        self.admitted = 0
        self.waited = 0
        self.refused = 0

    def __len__(self) -> int:
        return len(self._peers)

    def request(self, peer: str, lane: Lane, now: float) -> Decision:
        """A new inbound request: it takes a token, then a slot of its lane, or waits, or is refused."""
        s = self.settings
        p = self._peers.get(peer)
        if p is None:
            if len(self._peers) >= s.max_peers:
                self.prune(now)
            p = self._peers[peer] = PeerAdmission(tokens=s.burst, updated=now, scored_at=now)
        p.tokens = min(s.burst, p.tokens + max(0.0, now - p.updated) * s.rate)
        p.updated = now
        if p.tokens < 1:
            return self._refuse(p, now, "request rate above the limit")
        p.tokens -= 1
        if p.active.get(lane, 0) < s.max_streams and not p.waiting.get(lane, 0):
            return self._admit(p, lane)
        if p.waiting.get(lane, 0) >= s.max_waiting:
            return self._refuse(p, now, "too many concurrent requests")
        p.waiting[lane] = p.waiting.get(lane, 0) + 1
        self.waited += 1
        return Decision(Verdict.WAIT)

    def retry(self, peer: str, lane: Lane) -> Decision:
        """A waiting request asks again (a slot of its lane may be free): ADMIT or still WAIT."""
        p = self._peers.get(peer)
        if p is None or not p.waiting.get(lane, 0):
            raise LocalProtocolError("retry without a waiting request")
        if p.active.get(lane, 0) >= self.settings.max_streams:
            return Decision(Verdict.WAIT)
        p.waiting[lane] -= 1
        return self._admit(p, lane)

    def give_up(self, peer: str, lane: Lane) -> None:
        """A waiting request stops waiting (timed out, cancelled, the stream ended)."""
        p = self._peers.get(peer)
        if p is not None and p.waiting.get(lane, 0) > 0:
            p.waiting[lane] -= 1

    def time_out(self, peer: str, lane: Lane, now: float) -> Decision:
        """A waiting request got no slot within its patience: it stops waiting, and is scored as a refusal
        (a peer keeping every slot and the queue full with requests it never completes is flooding)."""
        self.give_up(peer, lane)
        p = self._peers.get(peer)
        if p is None:
            return Decision(Verdict.REFUSE, "no slot in time")
        return self._refuse(p, now, "no slot in time (too many concurrent requests)")

    def leave(self, peer: str, lane: Lane) -> None:
        """An admitted request ended: its slot is free."""
        p = self._peers.get(peer)
        if p is not None and p.active.get(lane, 0) > 0:
            p.active[lane] -= 1

    def waiting(self, peer: str, lane: Lane) -> int:
        p = self._peers.get(peer)
        return p.waiting.get(lane, 0) if p is not None else 0

    def active(self, peer: str, lane: Lane) -> int:
        p = self._peers.get(peer)
        return p.active.get(lane, 0) if p is not None else 0

    def abuse(self, peer: str, now: float) -> float:
        """The peer's abuse score now (refusals, decayed)."""
        p = self._peers.get(peer)
        return self._decayed(p, now) if p is not None else 0.0

    def should_disconnect(self, peer: str, now: float) -> bool:
        return self.abuse(peer, now) >= self.settings.abuse_threshold

    def forget(self, peer: str) -> None:
        self._peers.pop(peer, None)

    def prune(self, now: float) -> int:
        """Forget every idle peer whose bucket is full again and whose score has decayed below one half;
        if that frees nothing, the idle peer seen longest ago. Returns how many were forgotten."""
        s = self.settings
        gone = [peer for peer, p in self._peers.items() if not p.busy()
                and p.tokens + max(0.0, now - p.updated) * s.rate >= s.burst and self._decayed(p, now) < 0.5]
        if not gone and len(self._peers) >= s.max_peers:
            idle = [(p.updated, peer) for peer, p in self._peers.items() if not p.busy()]
            gone = [min(idle)[1]] if idle else []
        for peer in gone:
            del self._peers[peer]
        return len(gone)

    def _admit(self, p: PeerAdmission, lane: Lane) -> Decision:
        p.active[lane] = p.active.get(lane, 0) + 1
        self.admitted += 1
        return Decision(Verdict.ADMIT)

    def _refuse(self, p: PeerAdmission, now: float, reason: str) -> Decision:
        p.score = self._decayed(p, now) + 1
        p.scored_at = now
        self.refused += 1
        return Decision(Verdict.REFUSE, reason)

    def _decayed(self, p: PeerAdmission, now: float) -> float:
        elapsed = max(0.0, now - p.scored_at)
        return p.score * math.pow(0.5, elapsed / self.settings.abuse_half_life)
