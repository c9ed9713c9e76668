"""Per-peer request limits and the upload cap, on trio's virtual clock."""

from __future__ import annotations

import pytest
import trio
import trio.lowlevel
import trio.testing

from meshnode.node.limits import OutboundSlots, PeerLimits, UploadLimiter
from protocol.admission import AdmissionSettings, Lane
from protocol.errors import LimitError


def test_peer_limits_queue_half_the_stream_limit_by_default() -> None:
    settings = PeerLimits(64, 500).admission.settings
    assert (settings.max_streams, settings.max_waiting, settings.rate, settings.burst) == (64, 32, 500, 1000)


def test_peer_limits_wait_for_a_slot_refuse_past_the_queue_and_time_out() -> None:
    """The driver of protocol.admission: over the stream limit a request waits (no error) until a slot is
    left; past the data queue it is refused; a wait longer than its patience ends in LimitError, and is
    scored as a refusal (before: never scored, so silent streams could hold every slot at score 0)."""

    async def main() -> list[str]:
        limits = PeerLimits(2, 100, AdmissionSettings(max_streams=2, max_waiting=2, rate=100, burst=200))
        log: list[str] = []

        async def one(name: str, hold: float) -> None:
            try:
                await limits.enter("p", Lane.DATA, trio.current_time, patience=5)
            except LimitError as exc:
                log.append(f"{name} refused: {exc}")
                return
            log.append(f"{name} in at {trio.current_time():g}")
            await trio.sleep(hold)
            limits.leave("p", Lane.DATA)

        async with trio.open_nursery() as nursery:
            for i in range(5):  # 2 admitted, 2 queued, the fifth refused
                nursery.start_soon(one, f"r{i}", 1.0)
                await trio.lowlevel.checkpoint()
        async with trio.open_nursery() as nursery:  # two held for 10 s: the third gives up after 5 s
            for i in range(3):
                nursery.start_soon(one, f"s{i}", 10.0)
                await trio.lowlevel.checkpoint()
        counters = limits.counters()
        assert limits.admission.abuse("p", trio.current_time()) > 1.0  # both refusals count, decayed a little
        log.append(f"waited {counters['waited']} refused {counters['refused']}")
        return log

    log = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    log[3:5] = sorted(log[3:5])  # the two waiters are both admitted at 1 s, in either order
    assert log == ["r0 in at 0", "r1 in at 0", "r4 refused: too many concurrent requests", "r2 in at 1", "r3 in at 1",
                   "s0 in at 2", "s1 in at 2",
                   "s2 refused: no slot for this request within 5 s (too many concurrent requests)",
                   "waited 3 refused 2"]


async def _sends(limiter: UploadLimiter, sizes: list[int]) -> list[float]:
    """When each send may start (consume returns), for sends one after another."""
    out = []
    for n in sizes:
        await limiter.consume(n)
        out.append(trio.current_time())
    return out


def test_upload_cap_charges_before_sending() -> None:
    async def main() -> list[float]:
        return await _sends(UploadLimiter(1.0), [1_000_000, 500_000, 500_000])

    times = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    # nothing goes out before the cap has room for it: the first 1 MB at 1 MB/s waits 1 s
    assert times == pytest.approx([1.0, 1.5, 2.0])


def test_upload_cap_is_shared_by_concurrent_senders_and_does_not_bank_idle_time() -> None:
    async def main() -> tuple[list[float], list[float]]:
        limiter = UploadLimiter(2.0)
        done: list[float] = []

        async def one() -> None:
            await limiter.consume(1_000_000)
            done.append(trio.current_time())

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(one)
        await trio.sleep(10)  # idle: no credit builds up
        later = await _sends(limiter, [2_000_000])
        return done, later

    done, later = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert sorted(done) == pytest.approx([0.5, 1.0, 1.5, 2.0])  # 4 MB at 2 MB/s however many senders
    assert later == pytest.approx([13.0])  # 2 MB a full second after the idle spell, not at once


def test_no_cap() -> None:
    async def main() -> list[float]:
        return await _sends(UploadLimiter(0), [10_000_000])

    assert trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0)) == [0.0]


def test_outbound_slots_cap_a_burst_per_peer_and_lane_and_forget_idle_peers() -> None:
    """A node's own burst (200 requests to one peer at once) waits for its own slots: never more streams
    open to the peer than it admits; other peers and the control lane are not held up; nothing is kept after."""

    async def main() -> tuple[int, int, int]:
        slots = OutboundSlots({Lane.DATA: 4, Lane.CONTROL: 2})
        peak = 0
        control_done_at: list[float] = []

        async def data(peer: str) -> None:
            nonlocal peak
            async with slots.slot(peer, Lane.DATA):
                peak = max(peak, slots.in_use("p", Lane.DATA))
                await trio.sleep(1)

        async def control() -> None:
            async with slots.slot("p", Lane.CONTROL):
                control_done_at.append(trio.current_time())

        async with trio.open_nursery() as nursery:
            for _ in range(200):
                nursery.start_soon(data, "p")
            nursery.start_soon(data, "q")
            nursery.start_soon(control)
        assert control_done_at == [0.0]  # a receipt is not stuck behind the data burst
        return peak, int(trio.current_time()), len(slots)

    peak, seconds, tracked = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert (peak, seconds, tracked) == (4, 50, 0)
