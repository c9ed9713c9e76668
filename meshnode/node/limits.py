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
