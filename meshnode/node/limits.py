"""Per-peer limits on inbound work (protocol.admission, driven here), the upload cap, and request-byte budgets."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio

from protocol.admission import Admission, AdmissionSettings, Lane, Verdict
from protocol.errors import LimitError


class PeerLimits:
    """The node's driver of protocol.admission.Admission: a request the policy says WAIT for waits here
    (for a slot of its lane, at most `patience` seconds) instead of being refused.

    Each lane queues up to half the stream limit behind it: an honest node opens at most OUTBOUND_SLOTS
    (48 data, 32 control) streams to a peer, below the stream limit, so only a peer that ignores that (a
    flood) waits at all. Past the queue a request is refused; a wait that gets no slot within its patience
    is scored like a refusal (LimitError either way); the peer is cut off once they add up. Without both,
    the muxer's 128 streams per connection would let a flood hold every slot forever with a score of 0."""

    def __init__(self, max_streams: int, max_rate: float, settings: AdmissionSettings | None = None) -> None:
        self.admission = Admission(settings or AdmissionSettings(
            max_streams=max_streams, max_waiting=max_streams // 2, rate=float(max_rate), burst=2.0 * max_rate))
        self._freed: dict[str, trio.Event] = {}
        #: peers cut off by admission control since this node started (counted by the caller that cuts off)
        self.disconnected = 0

    @property
    def max_streams(self) -> int:
        return self.admission.settings.max_streams

    async def enter(self, peer: str, lane: Lane, now: Callable[[], float], patience: float) -> None:
        """Admit one inbound request (taking a slot of its lane): at once, or after waiting for a slot;
        LimitError when the policy refuses it or no slot came free within `patience` seconds."""
        decision = self.admission.request(peer, lane, now())
        if decision.verdict is Verdict.ADMIT:
            return
        if decision.verdict is Verdict.REFUSE:
            raise LimitError(decision.reason)
        admitted = False
        timed_out = False
        try:
            with trio.move_on_after(patience) as scope:
                while True:
                    freed = self._freed.setdefault(peer, trio.Event())
                    if self.admission.retry(peer, lane).verdict is Verdict.ADMIT:
                        admitted = True
                        return
                    await freed.wait()
            timed_out = scope.cancelled_caught
        finally:
            if not admitted:
                if timed_out:  # scored: a wait that never got a slot counts as a refusal
                    self.admission.time_out(peer, lane, now())
                else:  # cancelled from outside (the node is stopping): not the peer's doing
                    self.admission.give_up(peer, lane)
                self._wake(peer)
        raise LimitError(f"no slot for this request within {patience:g} s (too many concurrent requests)")

    def leave(self, peer: str, lane: Lane) -> None:
        self.admission.leave(peer, lane)
        self._wake(peer)

    def should_disconnect(self, peer: str, now: float) -> bool:
        return self.admission.should_disconnect(peer, now)

    def forget(self, peer: str) -> None:
        self.admission.forget(peer)

    def counters(self) -> dict[str, int]:
        """Since this node started: requests admitted, queued for a slot, refused; peers cut off."""
        a = self.admission
        return {"admitted": a.admitted, "waited": a.waited, "refused": a.refused, "disconnected": self.disconnected,
                "peers_tracked": len(a)}

    def _wake(self, peer: str) -> None:
        event = self._freed.pop(peer, None)
        if event is not None:
            event.set()


#: Streams this node opens to one peer at once, per lane: below the peer's admission limit (64 per lane by
#: default), so a burst of this node's own honest work waits here rather than queueing at the peer.
OUTBOUND_SLOTS = {Lane.DATA: 48, Lane.CONTROL: 32}


class OutboundSlots:
    """How many request streams this node has open to each peer, per lane, capped (the client's side of
    admission control: an honest node never asks more of a peer at once than the peer admits)."""

    def __init__(self, slots: dict[Lane, int] | None = None) -> None:
        self.slots = dict(slots or OUTBOUND_SLOTS)
        self._limiters: dict[tuple[str, Lane], trio.CapacityLimiter] = {}

    def __len__(self) -> int:
        return len(self._limiters)

    def in_use(self, peer: str, lane: Lane) -> int:
        limiter = self._limiters.get((peer, lane))
        return int(limiter.borrowed_tokens) if limiter is not None else 0

    @asynccontextmanager
    async def slot(self, peer: str, lane: Lane) -> AsyncIterator[None]:
        key = (peer, lane)
        limiter = self._limiters.setdefault(key, trio.CapacityLimiter(self.slots[lane]))
        borrower = object()  # each use is its own borrower: one task may hold several slots
        await limiter.acquire_on_behalf_of(borrower)
        try:
            yield
        finally:
            limiter.release_on_behalf_of(borrower)
            stats = limiter.statistics()
            if not stats.borrowed_tokens and not stats.tasks_waiting and self._limiters.get(key) is limiter:
                del self._limiters[key]  # nothing held or waited for: the table stays as small as the work


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
