"""FetchScheduler and the path to a holder: a peer reached through a relay is a slower source.

Direct peers are offered work first; a relayed peer gets blocks no direct peer holds and spare work while
the direct peers' windows are full, within its own smaller cap (FetchSettings.relayed_window_max). The path
may change at any time (a relayed connection upgraded to direct by hole punching, or the reverse).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import replace

import pytest

from protocol.cid import CID
from protocol.errors import LocalProtocolError
from protocol.fetch import (
    BlockWanted,
    FetchScheduler,
    ManifestCompleted,
    PeerBanned,
    Request,
)
from protocol.fetch_settings import FetchSettings
from protocol.manifest import Priority

M = CID.of(b"a manifest fetched over two paths")


def cid(n: int) -> CID:
    return CID.of(f"path block {n}".encode())


def scheduler(n: int, **changes: float | None) -> FetchScheduler:
    """The node's settings with requests of any size and no rate cap unless a test says otherwise."""
    base = FetchSettings(min_request_blocks=1, request_max_blocks=8, queue_target=None)
    s = FetchScheduler(replace(base, **changes))  # type: ignore[arg-type]
    s.add_manifest(M, [BlockWanted(cid(i), 1 << 20) for i in range(n)], Priority.ROUTINE, have=(), now=0)
    return s


def blocks(ns: Iterable[int]) -> list[CID]:
    return [cid(i) for i in ns]


def run(s: FetchScheduler, seconds_per_block: dict[str, float], latency: dict[str, float],
        first: list[Request] | None = None) -> float:
    """A virtual-clock driver: each request is answered, block by block, at its peer's latency and rate (the
    peer serves one request at a time, in order), starting with `first` if the test issued them already.
    Returns when the manifest completed."""
    busy_until: dict[str, float] = {}
    queue: list[tuple[float, int, str, CID]] = []
    seq = 0
    now = 0.0

    def issue(requests: list[Request]) -> None:
        nonlocal seq
        for r in requests:
            t = max(busy_until.get(r.peer, 0.0), now + latency[r.peer])
            for c in r.cids:
                t += seconds_per_block[r.peer]
                heapq.heappush(queue, (t, seq, r.peer, c))
                seq += 1
            busy_until[r.peer] = t

    issue(s.next_requests(now) if first is None else first)
    while queue:
        now, _, peer, c = heapq.heappop(queue)
        s.block_received(peer, c, True, now)
        if ManifestCompleted(M) in s.events():
            return now
        issue(s.next_requests(now))
    raise AssertionError(f"stuck at {s.progress(M)}")


def test_a_direct_holder_is_offered_work_before_a_relayed_one() -> None:
    """The relayed holder became known first, yet the direct one gets the first blocks, a full window; the
    relayed one gets the next ones, up to its cap. (Before the change: R was given blocks 0..31.)"""
    s = scheduler(200)
    s.peer_available("R", M, blocks(range(200)), relayed=True)
    s.peer_available("D", M, blocks(range(200)), relayed=False)
    requests = s.next_requests(0)
    first = requests[0]
    assert first.peer == "D" and first.cids == tuple(blocks(range(8)))
    to_d = [c for r in requests if r.peer == "D" for c in r.cids]
    to_r = [c for r in requests if r.peer == "R" for c in r.cids]
    assert to_d == blocks(range(32))  # the direct peer's whole first window, in manifest order
    assert to_r == blocks(range(32, 40)) and s.effective_window("R") == 8 == FetchSettings().relayed_window_max
    assert s.window("R") == 32  # the AIMD window is kept; only what the relayed path is given is capped
    assert (s.relayed("R"), s.relayed("D"), s.relayed("X")) == (True, False, None)


def test_multi_source_takes_most_blocks_from_the_direct_holder() -> None:
    """Both hold everything; the relayed path is slower. Both serve (multi-source), the direct most; marking
    the same peer direct would have given it more of the study."""
    rates = {"D": 0.01, "R": 0.03}
    latency = {"D": 0.02, "R": 0.1}
    shares = {}
    for relayed in (True, False):
        s = scheduler(400)
        s.peer_available("D", M, blocks(range(400)))
        s.peer_available("R", M, blocks(range(400)), relayed=relayed)
        run(s, rates, latency)
        shares[relayed] = s.served_by(M)
    assert sum(shares[True].values()) == 400
    assert shares[True]["R"] > 0 and shares[True]["D"] > 0.75 * 400
    assert shares[True]["R"] < shares[False]["R"]


def test_relayed_holders_alone_complete_within_their_cap() -> None:
    s = scheduler(100, relayed_window_max=4)
    s.peer_available("R1", M, blocks(range(100)), relayed=True)
    s.peer_available("R2", M, blocks(range(0, 100, 2)), relayed=True)
    first = s.next_requests(0)
    assert first and all(s.in_flight_count(r.peer) == 4 for r in first)
    run(s, {"R1": 0.02, "R2": 0.02}, {"R1": 0.1, "R2": 0.1}, first)
    assert s.progress(M).complete and sum(s.served_by(M).values()) == 100 and set(s.served_by(M)) == {"R1", "R2"}


def test_blocks_only_a_relayed_holder_has_are_fetched_from_it() -> None:
    """The direct holder has the even blocks; the odd ones come from the relayed holder, the direct one
    preferred for the rest."""
    s = scheduler(120)
    s.peer_available("D", M, blocks(range(0, 120, 2)))
    s.peer_available("R", M, blocks(range(120)), relayed=True)
    first = s.next_requests(0)
    assert {c for r in first if r.peer == "R" for c in r.cids} <= set(blocks(range(1, 120, 2))) | set(
        blocks(range(64, 120)))
    run(s, {"D": 0.01, "R": 0.03}, {"D": 0.02, "R": 0.1}, first)
    served = s.served_by(M)
    assert served["R"] >= 60 and served["D"] > 0 and sum(served.values()) == 120


def test_an_upgrade_to_direct_lifts_the_cap() -> None:
    s = scheduler(200)
    s.peer_available("P", M, blocks(range(200)), relayed=True)
    t = 0.0
    for _ in range(3):  # blocks on time grow the AIMD window while the path caps what is in flight
        requests = s.next_requests(t)
        assert s.in_flight_count("P") <= 8
        t += 0.1
        for r in requests:
            for c in r.cids:
                s.block_received("P", c, True, t)
    assert s.window("P") == 32 + 24 and s.effective_window("P") == 8
    s.set_relayed("P", False)  # hole punching succeeded
    assert s.effective_window("P") == 56
    assert sum(len(r.cids) for r in s.next_requests(t)) == 56


def test_a_path_flipping_mid_request_cancels_nothing_and_fetches_each_block_once() -> None:
    s = scheduler(200)
    s.peer_available("P", M, blocks(range(200)))
    s.peer_available("D", M, blocks(range(200)))
    first = s.next_requests(0)
    in_flight = s.in_flight()
    assert s.in_flight_count("P") == 32
    s.set_relayed("P", True)  # the direct connection died, the peer is reached through a relay now
    assert s.in_flight() == in_flight and s.next_requests(0.01) == []  # nothing cancelled, nothing more to P
    received: list[CID] = []
    t = 0.1
    # P answers 28 of its 32: 4 still in flight, under the cap of 8, so it may be given 4 more
    p_blocks = [c for r in first if r.peer == "P" for c in r.cids]
    for c in p_blocks[:28]:
        assert s.block_received("P", c, True, t)
        received.append(c)
    more = s.next_requests(t)
    assert sum(len(r.cids) for r in more if r.peer == "P") == 4
    s.set_relayed("P", False)  # and back: upgraded again while 8 are in flight
    s.set_relayed("P", True)
    s.set_relayed("P", False)
    assert s.in_flight_count("P") == 8
    requests = first + more
    while not s.progress(M).complete:
        t += 0.1
        for r in requests:
            for c in r.cids:
                if c not in received:
                    s.block_received(r.peer, c, True, t)
                    received.append(c)
        requests = s.next_requests(t)
        s.set_relayed("P", not s.relayed("P"))
    assert len(received) == len(set(received)) == 200
    assert sum(s.served_by(M).values()) == 200


def test_a_banned_relayed_peer_stays_banned_whatever_its_path() -> None:
    s = scheduler(60)
    s.peer_available("D", M, blocks(range(0, 60, 2)))
    s.peer_available("R", M, blocks(range(60)), relayed=True)
    requests = s.next_requests(0)
    to_r = [c for r in requests if r.peer == "R" for c in r.cids]
    assert to_r
    s.block_received("R", to_r[0], False, 0.1)  # a block that does not match its CID
    assert PeerBanned in [type(e) for e in s.events()] and "R" in s.banned()
    assert s.relayed("R") is None and not any(p == "R" for p in s.in_flight().values())
    s.set_relayed("R", False)  # an upgrade to direct does not bring it back
    s.peer_available("R", M, blocks(range(60)), relayed=False)
    assert s.relayed("R") is None and all(r.peer == "D" for r in s.next_requests(0.2))
    assert s.progress(M).stalled  # the odd blocks had only R


def test_the_path_is_said_by_whoever_introduces_the_peer() -> None:
    """set_relayed on a peer the scheduler does not know changes nothing; a peer whose connection was lost
    comes back on whatever path its new availability says (direct by default)."""
    s = scheduler(10)
    s.set_relayed("P", True)
    s.peer_available("P", M, blocks(range(10)))
    assert s.relayed("P") is False
    s.peer_available("P", M, blocks(range(10)), relayed=True)
    s.peer_available("P", M, blocks(range(10)))  # None: as it was
    assert s.relayed("P") is True
    s.peer_lost("P", 1.0)
    s.peer_available("P", M, blocks(range(10)))
    assert s.relayed("P") is False


def test_relayed_window_max_must_be_positive() -> None:
    with pytest.raises(LocalProtocolError):
        FetchSettings(relayed_window_max=0)
    assert FetchSettings(relayed_window_max=1).relayed_window_max == 1


def test_a_relayed_holder_starts_on_the_blocks_only_it_has() -> None:
    """The direct holder has the first half, the relayed one everything: the relayed one is given the second
    half from the start (only it can serve that), not the blocks just past the direct one's window, so the
    slow path is not left with the only-relayed blocks at the end."""
    s = scheduler(200)
    s.peer_available("D", M, blocks(range(100)))
    s.peer_available("R", M, blocks(range(200)), relayed=True)
    first = s.next_requests(0)
    assert [c for r in first if r.peer == "R" for c in r.cids] == blocks(range(100, 108))
    assert [c for r in first if r.peer == "D" for c in r.cids] == blocks(range(32))
    done = run(s, {"D": 0.01, "R": 0.03}, {"D": 0.02, "R": 0.1}, first)
    assert s.served_by(M)["R"] >= 100 and done < 100 * 0.03 + 1.0


def test_an_unknown_path_keeps_the_last_known_one() -> None:
    """Review i16 MAJOR 4: the node said "direct" for a relayed holder whose circuit had dropped (no open
    connection), and the scheduler handed it its grown window over the relay. None now keeps the path."""
    s = scheduler(200)
    s.peer_available("R", M, blocks(range(200)), relayed=True)
    t = 0.0
    for _ in range(3):
        for r in s.next_requests(t):
            t += 0.01
            for c in r.cids:
                s.block_received(r.peer, c, True, t)
    assert s.window("R") is not None and s.window("R") > 8  # type: ignore[operator]
    s.set_relayed("R", None)  # no open connection: not known
    assert s.relayed("R") is True
    assert sum(len(r.cids) for r in s.next_requests(t) if r.peer == "R") <= 8
    s.peer_available("R", M, blocks(range(200)), relayed=None)
    assert s.relayed("R") is True
