"""Per-peer limits on inbound work: concurrent streams and a request-rate token bucket."""

from __future__ import annotations

from dataclasses import dataclass

import trio

from protocol.errors import LimitError

STRIKES_BEFORE_DISCONNECT = 20


@dataclass
class _Bucket:
    tokens: float
    updated: float
    open_streams: int = 0
    strikes: int = 0


class PeerLimits:
    """Pure bookkeeping (the caller passes `now`); one instance per node."""

    def __init__(self, max_streams: int, max_rate: float) -> None:
        self.max_streams = max_streams
        self.max_rate = max_rate
        self._peers: dict[str, _Bucket] = {}

    def enter(self, peer: str, now: float) -> None:
        """Admit one inbound request, or raise LimitError (and count a strike)."""
        b = self._peers.setdefault(peer, _Bucket(float(self.max_rate), now))
        b.tokens = min(float(self.max_rate), b.tokens + (now - b.updated) * self.max_rate)
        b.updated = now
        if b.open_streams >= self.max_streams or b.tokens < 1:
            b.strikes += 1
            raise LimitError("too many concurrent requests" if b.open_streams >= self.max_streams
                             else "request rate above the limit")
        b.tokens -= 1
        b.open_streams += 1

    def leave(self, peer: str) -> None:
        b = self._peers.get(peer)
        if b is not None and b.open_streams > 0:
            b.open_streams -= 1

    def should_disconnect(self, peer: str) -> bool:
        b = self._peers.get(peer)
        return b is not None and b.strikes >= STRIKES_BEFORE_DISCONNECT

    def forget(self, peer: str) -> None:
        self._peers.pop(peer, None)


class UploadLimiter:
    """Caps the bytes per second this node serves (0: no cap), shared by every peer.

    Used to model a hospital's real uplink on one machine (benchmarks, emulation). Call `consume`
    before sending: it waits until the cap has room for those bytes, so nothing goes out early.
    """

    def __init__(self, mb_per_s: float) -> None:
        self.rate = mb_per_s * 1_000_000
        self._next_free = 0.0

    async def consume(self, nbytes: int) -> None:
        if self.rate <= 0 or nbytes <= 0:
            return
        now = trio.current_time()
        start = max(now, self._next_free)
        self._next_free = start + nbytes / self.rate
        if self._next_free > now:
            await trio.sleep_until(self._next_free)


class ByteBudget:
    """Bytes of inbound request frames in flight (being read, or held while their request is handled),
    per peer and node-wide.

    A frame's bytes are reserved from its 4-byte length prefix, before any of its body is read, and
    released when its exchange ends. A peer over its own budget is refused at once (LimitError: it is
    the peer's doing). When the node-wide budget is full the reader waits for room (bounded by the
    exchange's timeout), so many peers at once slow each other down instead of exhausting memory.
    Either budget admits one frame larger than itself when nothing else is in flight, so the largest
    frame a protocol permits (an announce, up to 48 MiB) is never refused for its size alone.
    """

    def __init__(self, per_peer: int, total: int) -> None:
        self.per_peer = per_peer
        self.total = total
        self.in_flight = 0
        self.peak = 0
        self._peers: dict[str, int] = {}
        self._freed = trio.Event()

    def of(self, peer: str) -> int:
        """Bytes reserved by one peer (waiting or in flight)."""
        return self._peers.get(peer, 0)

    async def acquire(self, peer: str, n: int) -> None:
        """Reserve n bytes for `peer`; LimitError over its budget, waits while the node's is full."""
        held = self._peers.get(peer, 0)
        if held and held + n > self.per_peer:
            raise LimitError(f"{held} request bytes already in flight from this peer (limit {self.per_peer})")
        self._peers[peer] = held + n  # counted while waiting: a peer cannot queue more than its budget
        try:
            while self.in_flight and self.in_flight + n > self.total:
                await self._freed.wait()
        except BaseException:
            self._release_peer(peer, n)
            raise
        self.in_flight += n
        self.peak = max(self.peak, self.in_flight)

    def release(self, peer: str, n: int) -> None:
        """Give back what acquire(peer, n) reserved (synchronous: safe in a cancelled finally)."""
        self._release_peer(peer, n)
        self.in_flight -= n
        self._freed.set()
        self._freed = trio.Event()

    def _release_peer(self, peer: str, n: int) -> None:
        left = self._peers.get(peer, 0) - n
        if left > 0:
            self._peers[peer] = left
        else:
            self._peers.pop(peer, None)
