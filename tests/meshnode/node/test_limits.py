"""Per-peer request limits and the upload cap, on trio's virtual clock."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from meshnode.node.limits import PeerLimits, UploadLimiter
from protocol.errors import LimitError


def test_peer_limits_streams_and_rate() -> None:
    limits = PeerLimits(max_streams=2, max_rate=3)
    limits.enter("p", 0.0)
    limits.enter("p", 0.0)
    with pytest.raises(LimitError, match="concurrent"):
        limits.enter("p", 0.0)
    limits.leave("p")
    limits.enter("p", 0.0)  # third token
    limits.leave("p")
    with pytest.raises(LimitError, match="rate"):
        limits.enter("p", 0.0)  # no tokens left, one slot free
    limits.enter("p", 1.0)  # refilled
    limits.enter("q", 0.0)  # other peers are not affected


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
