"""FetchScheduler: policy examples, a virtual-clock simulation, and a stateful model check."""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from protocol.cid import CID
from protocol.errors import LocalProtocolError
from protocol.fetch import (
    BlockStalled,
    BlockWanted,
    FetchScheduler,
    ManifestCompleted,
    PeerBanned,
    Progress,
    Request,
)
from protocol.fetch_settings import FetchSettings
from protocol.manifest import Priority

ROUTINE, URGENT, STAT = Priority.ROUTINE, Priority.URGENT, Priority.STAT


def scheduler(**changes: int | float | None) -> FetchScheduler:
    """A scheduler with the generic settings these tests were written against (a window of 8, requests of any
    size), changed as a test says; the node's own settings are FetchSettings() (tested below)."""
    base = FetchSettings(window_initial=8, min_request_blocks=1)
    return FetchScheduler(replace(base, **changes))  # type: ignore[arg-type]


def cid(n: int) -> CID:
    return CID.of(f"block {n}".encode())


def mid(n: int) -> CID:
    return CID.of(f"manifest {n}".encode())


def wanted(ns: Iterable[int], size: int = 100) -> list[BlockWanted]:
    return [BlockWanted(cid(n), size) for n in ns]


def cids_of(requests: Sequence[Request]) -> list[CID]:
    return [c for r in requests for c in r.cids]


def answer(s: FetchScheduler, requests: Sequence[Request], now: float, ok: bool = True) -> None:
    for r in requests:
        for c in r.cids:
            s.block_received(r.peer, c, ok, now)


def test_fetches_everything_in_manifest_order_within_window() -> None:
    s = scheduler(window_initial=8, request_max_blocks=4)
    s.add_manifest(mid(1), wanted(range(20)), ROUTINE, have=(), now=0)
    assert s.next_requests(0) == []  # nobody holds anything yet
    assert s.progress(mid(1)) == Progress(0, 20, 0, 2000, complete=False, stalled=True)
    s.peer_available("A", mid(1), [cid(n) for n in range(20)])
    assert not s.progress(mid(1)).stalled
    first = s.next_requests(0)
    assert [len(r.cids) for r in first] == [4, 4]
    assert cids_of(first) == [cid(n) for n in range(8)]
    assert all(r.peer == "A" and r.manifest_id == mid(1) for r in first)
    assert s.next_requests(0) == []  # window full
    t = 1.0
    while not s.progress(mid(1)).complete:
        answer(s, s.next_requests(t), t)
        t += 1
    assert s.events() == [ManifestCompleted(mid(1))]
    assert s.progress(mid(1)) == Progress(20, 20, 2000, 2000, complete=True, stalled=False)
    assert s.served_by(mid(1)) == {"A": 20}
    assert s.next_requests(t) == [] and s.events() == []


def test_blocks_already_verified_are_never_requested() -> None:
    s = scheduler()
    s.add_manifest(mid(1), wanted(range(6)), ROUTINE, have={cid(0), cid(3), cid(99)}, now=0)
    assert s.progress(mid(1)).blocks_done == 2
    s.peer_available("A", mid(1), [cid(n) for n in range(6)])
    assert cids_of(s.next_requests(0)) == [cid(1), cid(2), cid(4), cid(5)]
    s.add_manifest(mid(2), wanted([7, 8]), ROUTINE, have={cid(7), cid(8)}, now=0)
    assert s.events() == [ManifestCompleted(mid(2))]
    assert s.served_by(mid(2)) == {}


def test_duplicate_blocks_in_a_manifest_count_once_and_bad_input_is_refused() -> None:
    s = scheduler()
    s.add_manifest(mid(1), wanted([1, 2, 1]), ROUTINE, have=(), now=0)
    assert s.progress(mid(1)).blocks_total == 2
    with pytest.raises(LocalProtocolError):
        s.add_manifest(mid(1), wanted([1]), ROUTINE, have=(), now=0)
    with pytest.raises(LocalProtocolError):
        s.peer_available("A", mid(1), [cid(3)])
    with pytest.raises(LocalProtocolError):
        s.progress(mid(9))
    with pytest.raises(LocalProtocolError):
        scheduler(window_min=4, window_initial=2)
    with pytest.raises(LocalProtocolError):
        scheduler(request_max_blocks=65)
    s.peer_available("A", mid(9), [cid(1)])  # unknown manifest: ignored


def test_window_grows_on_time_and_halves_on_failure_and_timeout() -> None:
    s = scheduler(
        window_min=2, window_initial=4, window_max=6, request_max_blocks=64, request_timeout=10, queue_target=None
    )
    s.add_manifest(mid(1), wanted(range(100)), ROUTINE, have=(), now=0)
    s.peer_available("A", mid(1), [cid(n) for n in range(100)])
    (r,) = s.next_requests(0)
    assert len(r.cids) == 4
    answer(s, [r], 1)
    assert s.window("A") == 6  # +1 per block, capped at window_max
    (r,) = s.next_requests(1)
    assert len(r.cids) == 6
    s.request_failed("A", r.cids, 2)
    assert s.window("A") == 3
    (r,) = s.next_requests(2)
    assert r.cids[0] == cid(4)  # failed blocks are requeued in manifest order
    s.block_received("A", r.cids[0], True, 5)  # on time: window 4; progress pushes the deadline to 15
    assert s.next_requests(14.9) == [Request("A", mid(1), (cid(7), cid(8)))]
    assert s.next_requests(15) == []  # 5 and 6 expire (window 2), 7 and 8 still fill it
    assert s.window("A") == 2 and s.in_flight_count("A") == 2
    again = s.next_requests(24.9)  # 7 and 8 expire too; requeued blocks go first
    assert s.window("A") == 2 and cids_of(again) == [cid(5), cid(6)]
    s.request_failed("A", again[0].cids, 25)
    assert s.window("A") == 2  # never below window_min


def test_a_block_arriving_after_its_request_expired_is_kept_without_reward() -> None:
    s = scheduler(window_min=1, window_initial=2, request_timeout=10)
    s.add_manifest(mid(1), wanted(range(2)), ROUTINE, have=(), now=0)
    s.peer_available("A", mid(1), [cid(0), cid(1)])
    assert cids_of(s.next_requests(0)) == [cid(0), cid(1)]
    s.peer_available("B", mid(1), [cid(0), cid(1)])
    assert s.next_requests(10) == [Request("A", mid(1), (cid(0),)), Request("B", mid(1), (cid(1),))]
    assert s.block_received("A", cid(1), True, 11)  # the old request's answer: good data
    assert s.window("A") == 1 and s.progress(mid(1)).blocks_done == 1
    assert s.in_flight() == {cid(0): "A", cid(1): "B"}  # B's slot is held until B answers
    assert not s.block_received("B", cid(1), True, 12)
    assert s.window("B") == 3 and s.in_flight() == {cid(0): "A"}
    assert s.served_by(mid(1)) == {"A": 1}


def test_urgent_overtakes_routine_without_cancelling() -> None:
    s = scheduler(window_initial=8, request_max_blocks=4)
    s.add_manifest(mid(1), wanted(range(100)), ROUTINE, have=(), now=0)
    for peer in "AB":
        s.peer_available(peer, mid(1), [cid(n) for n in range(100)])
    routine = s.next_requests(0)
    assert len(cids_of(routine)) == 16
    s.add_manifest(mid(2), wanted(range(1000, 1030)), URGENT, have=(), now=1)
    for peer in "AB":
        s.peer_available(peer, mid(2), [cid(n) for n in range(1000, 1030)])
    assert s.next_requests(1) == []  # in-flight routine requests are not cancelled
    answer(s, routine[:2], 2)  # A's window frees up (and grows)
    urgent = s.next_requests(2)
    assert urgent and all(r.manifest_id == mid(2) for r in urgent)
    assert cids_of(urgent) == [cid(n) for n in range(1000, 1000 + len(cids_of(urgent)))]
    # A stat manifest added now goes ahead of the rest of the urgent one.
    s.add_manifest(mid(3), wanted([2000, 2001]), STAT, have=(), now=3)
    s.peer_available("B", mid(3), [cid(2000), cid(2001)])
    answer(s, routine[2:], 3)
    nxt = s.next_requests(3)
    assert nxt[0] == Request("B", mid(3), (cid(2000), cid(2001)))
    assert all(r.manifest_id == mid(2) for r in nxt[1:])


def test_earlier_manifest_first_within_a_priority() -> None:
    s = scheduler(window_initial=4, request_max_blocks=4)
    s.add_manifest(mid(1), wanted(range(4)), URGENT, have=(), now=0)
    s.add_manifest(mid(2), wanted(range(10, 14)), URGENT, have=(), now=0)
    s.peer_available("A", mid(2), [cid(n) for n in range(10, 14)])
    s.peer_available("A", mid(1), [cid(n) for n in range(4)])
    assert [r.manifest_id for r in s.next_requests(0)] == [mid(1)]


def test_two_holders_both_get_requests_and_a_block_is_never_in_flight_twice() -> None:
    s = scheduler(window_initial=4, request_max_blocks=4)
    s.add_manifest(mid(1), wanted(range(10)), ROUTINE, have=(), now=0)
    for peer in "AB":
        s.peer_available(peer, mid(1), [cid(n) for n in range(10)])
    requests = s.next_requests(0)
    assert {r.peer for r in requests} == {"A", "B"}
    issued = cids_of(requests)
    assert len(issued) == len(set(issued)) == 8


def test_bad_block_bans_the_peer_and_the_block_is_fetched_elsewhere() -> None:
    s = scheduler(window_initial=2, request_max_blocks=2)
    s.add_manifest(mid(1), wanted(range(4)), ROUTINE, have=(), now=0)
    s.peer_available("evil", mid(1), [cid(n) for n in range(4)])
    (r,) = s.next_requests(0)
    s.peer_available("good", mid(1), [cid(n) for n in range(4)])
    s.block_received("evil", r.cids[0], False, 1)
    events = s.events()
    assert events[0] == PeerBanned("evil", "sent 1 block(s) that did not match their CID")
    assert "evil" in s.banned() and s.window("evil") is None
    s.peer_available("evil", mid(1), [cid(0)])  # ignored from now on
    s.block_received("evil", r.cids[1], True, 1)  # a late good block is still good data
    again = s.next_requests(1)
    assert {x.peer for x in again} == {"good"} and cid(0) in cids_of(again)
    answer(s, again, 2)
    answer(s, s.next_requests(2), 3)
    assert s.progress(mid(1)).complete
    assert s.served_by(mid(1)) == {"good": 3, "evil": 1}


def test_below_max_strikes_the_peer_is_not_asked_for_that_block_again() -> None:
    s = scheduler(window_initial=4, request_max_blocks=1, max_strikes=2)
    s.add_manifest(mid(1), wanted(range(3)), ROUTINE, have=(), now=0)
    s.peer_available("A", mid(1), [cid(n) for n in range(3)])
    first = s.next_requests(0)
    s.block_received("A", cid(0), False, 1)
    assert s.strikes("A") == 1 and s.banned() == {} and s.window("A") == 2
    assert s.events() == [BlockStalled(mid(1), cid(0))]
    answer(s, first[1:], 1)
    assert s.next_requests(1) == []
    assert s.stalled_blocks(mid(1)) == (cid(0),)
    s.block_received("A", cid(1), False, 2)  # a second corrupt block, even unsolicited
    assert isinstance(s.events()[-1], PeerBanned)


def test_absent_block_is_fetched_elsewhere_or_stalls() -> None:
    s = scheduler(window_initial=2, request_max_blocks=2)
    s.add_manifest(mid(1), wanted(range(2)), ROUTINE, have=(), now=0)
    s.peer_available("A", mid(1), [cid(0), cid(1)])
    s.peer_available("B", mid(1), [cid(1)])
    (r,) = s.next_requests(0)
    assert r.peer == "A"
    s.block_absent("A", cid(0), 1)
    s.block_absent("A", cid(1), 1)
    assert s.events() == [BlockStalled(mid(1), cid(0))]
    assert s.progress(mid(1)).stalled
    assert s.next_requests(1) == [Request("B", mid(1), (cid(1),))]
    s.peer_available("C", mid(1), [cid(0)])
    assert not s.progress(mid(1)).stalled
    assert s.next_requests(1) == [Request("C", mid(1), (cid(0),))]


def test_peer_lost_requeues_its_blocks_and_forgets_it() -> None:
    s = scheduler(window_initial=4, request_max_blocks=4)
    s.add_manifest(mid(1), wanted(range(4)), ROUTINE, have=(), now=0)
    s.peer_available("A", mid(1), [cid(n) for n in range(4)])
    s.next_requests(0)
    s.peer_available("B", mid(1), [cid(n) for n in range(4)])
    assert s.next_requests(0) == []
    s.peer_lost("A", 1)
    assert s.window("A") is None and s.in_flight() == {}
    assert s.next_requests(1) == [Request("B", mid(1), tuple(cid(n) for n in range(4)))]
    s.peer_lost("B", 2)
    assert s.events() == [BlockStalled(mid(1), cid(0))]


def test_removed_manifest_is_dropped_and_late_blocks_ignored() -> None:
    s = scheduler(window_initial=2, request_max_blocks=2, queue_target=None)
    s.add_manifest(mid(1), wanted(range(10)), ROUTINE, have=(), now=0)
    s.add_manifest(mid(2), wanted(range(20, 24)), ROUTINE, have=(), now=0)
    s.peer_available("A", mid(1), [cid(n) for n in range(10)])
    s.peer_available("A", mid(2), [cid(n) for n in range(20, 24)])
    (r,) = s.next_requests(0)
    s.remove_manifest(mid(1))
    s.remove_manifest(mid(1))  # idempotent
    assert s.next_requests(0) == []  # slots stay taken until the answers arrive
    assert not s.block_received("A", r.cids[0], True, 1)
    s.block_absent("A", r.cids[1], 1)
    assert cids_of(s.next_requests(1)) == [cid(20), cid(21), cid(22)]  # window grew by the on-time block
    with pytest.raises(LocalProtocolError):
        s.progress(mid(1))


def test_shared_block_fetched_once_counts_for_both() -> None:
    s = scheduler(window_initial=8, request_max_blocks=8)
    s.add_manifest(mid(1), wanted([1, 2, 3]), ROUTINE, have=(), now=0)
    s.add_manifest(mid(2), wanted([3, 4]), URGENT, have=(), now=0)
    s.peer_available("A", mid(1), [cid(1), cid(2), cid(3)])
    s.peer_available("A", mid(2), [cid(3), cid(4)])
    requests = s.next_requests(0)
    assert requests == [Request("A", mid(2), (cid(3), cid(4))), Request("A", mid(1), (cid(1), cid(2)))]
    answer(s, requests, 1)
    assert sorted(e.manifest_id for e in s.events() if isinstance(e, ManifestCompleted)) == sorted([mid(1), mid(2)])
    assert s.served_by(mid(1)) == {"A": 3} and s.served_by(mid(2)) == {"A": 2}
    # A manifest added later that shares a fetched block starts with it done.
    s.add_manifest(mid(3), wanted([3, 5]), ROUTINE, have=(), now=2)
    assert s.progress(mid(3)).blocks_done == 1


def test_requests_stay_large_while_work_is_in_flight() -> None:
    s = scheduler(window_initial=16, window_max=16, request_max_blocks=8, min_request_blocks=8,
                       queue_target=None)
    start(s, mid(1), wanted(range(40)), ["A"])
    first = s.next_requests(0)
    assert [len(r.cids) for r in first] == [8, 8]
    answer(s, [Request("A", mid(1), first[0].cids[:3])], 0.1)
    assert s.next_requests(0.1) == []  # 3 free slots: wait for a request's worth
    answer(s, [Request("A", mid(1), first[0].cids[3:])], 0.2)
    assert [len(r.cids) for r in s.next_requests(0.2)] == [8]


def test_a_peer_with_nothing_in_flight_always_gets_work_and_small_windows_halve_the_threshold() -> None:
    s = scheduler(window_min=1, window_initial=4, window_max=4, request_max_blocks=8, min_request_blocks=8,
                       queue_target=None)
    start(s, mid(1), wanted(range(3)), ["A"])
    assert [len(r.cids) for r in s.next_requests(0)] == [3]  # fewer than 8 left: sent anyway
    s = scheduler(window_min=1, window_initial=4, window_max=4, request_max_blocks=8, min_request_blocks=8,
                       queue_target=None)
    start(s, mid(1), wanted(range(20)), ["A"])
    (req,) = s.next_requests(0)
    assert len(req.cids) == 4
    answer(s, [Request("A", mid(1), req.cids[:1])], 0.1)
    assert s.next_requests(0.1) == []
    answer(s, [Request("A", mid(1), req.cids[1:2])], 0.2)
    assert [len(r.cids) for r in s.next_requests(0.2)] == [2]  # half of a 4-block window


@pytest.mark.parametrize("least", [0, 9])
def test_min_request_blocks_out_of_range_is_refused(least: int) -> None:
    with pytest.raises(LocalProtocolError):
        scheduler(request_max_blocks=8, min_request_blocks=least)


# -- a virtual-clock simulation ---------------------------------------------------


def simulate(
    s: FetchScheduler, rates: dict[str, float], manifests: Sequence[CID], *,
    latency: float = 0.02, corrupt: frozenset[str] = frozenset(), arrivals: Sequence[tuple[float, CID, list[BlockWanted], Priority]] = (),
    limit: float = 10_000.0,
) -> dict[CID, float]:
    """Each peer serves its queue of blocks one at a time at `rate` blocks/s; returns completion times."""
    now = 0.0
    busy = dict.fromkeys(rates, 0.0)
    queue: list[tuple[float, int, str, CID]] = []
    pending_arrivals = sorted(arrivals, key=lambda a: a[0])
    done: dict[CID, float] = {}
    seq = 0
    while now < limit:
        while pending_arrivals and pending_arrivals[0][0] <= now:
            _, manifest_id, blocks, priority = pending_arrivals.pop(0)
            s.add_manifest(manifest_id, blocks, priority, have=(), now=now)
            for peer in rates:
                s.peer_available(peer, manifest_id, [b.cid for b in blocks])
        for event in s.events():
            if isinstance(event, ManifestCompleted):
                done[event.manifest_id] = now
        if len(done) == len(manifests) + len(arrivals):
            return done
        for request in s.next_requests(now):
            for c in request.cids:
                busy[request.peer] = max(busy[request.peer], now + latency / 2) + 1 / rates[request.peer]
                heapq.heappush(queue, (busy[request.peer] + latency / 2, seq, request.peer, c))
                seq += 1
        next_times = [queue[0][0]] if queue else []
        next_times += [pending_arrivals[0][0]] if pending_arrivals else []
        if not next_times:
            break
        now = min(next_times)
        while queue and queue[0][0] <= now:
            _, _, peer, c = heapq.heappop(queue)
            s.block_received(peer, c, peer not in corrupt, now)
    raise AssertionError(f"simulation did not finish: {done}")


def start(s: FetchScheduler, manifest_id: CID, blocks: list[BlockWanted], peers: Iterable[str], priority: Priority = ROUTINE) -> None:
    s.add_manifest(manifest_id, blocks, priority, have=(), now=0)
    for peer in peers:
        s.peer_available(peer, manifest_id, [b.cid for b in blocks])


def test_simulation_three_peers_share_by_speed() -> None:
    s = scheduler()
    rates = {"fast": 400.0, "medium": 200.0, "slow": 100.0}
    start(s, mid(1), wanted(range(1400)), rates)
    done = simulate(s, rates, [mid(1)])
    served = s.served_by(mid(1))
    assert sum(served.values()) == 1400
    assert served["fast"] > served["medium"] > served["slow"] > 0
    assert served["fast"] > 1.6 * served["medium"] and served["medium"] > 1.6 * served["slow"]
    assert done[mid(1)] < 1400 / 700 * 1.1  # close to the sum of the rates


def test_simulation_large_requests_still_share_by_speed_and_finish_near_the_sum_of_rates() -> None:
    s = scheduler(window_initial=32, window_max=64, request_max_blocks=8, min_request_blocks=8)
    rates = {"fast": 400.0, "slow": 100.0}
    start(s, mid(1), wanted(range(1000)), rates)
    done = simulate(s, rates, [mid(1)])
    served = s.served_by(mid(1))
    assert served["fast"] > 2.5 * served["slow"] > 0
    assert done[mid(1)] < 1000 / 500 * 1.15


def lone_transfer(s: FetchScheduler, blocks: int, rate: float, rtt: float, *, per_response: bool) -> float:
    """One peer serving `rate` blocks/s over `rtt`; blocks reported one by one, or a whole response at once
    when its last block is in (as a driver that makes a response durable in one go reports them)."""
    start(s, mid(1), wanted(range(blocks)), ["A"])
    now, events, busy, done = 0.0, [], 0.0, 0
    while done < blocks:
        for r in s.next_requests(now):
            times = []
            for c in r.cids:
                busy = max(busy, now + rtt / 2) + 1 / rate
                times.append((busy + rtt / 2, c))
            if per_response:
                times = [(times[-1][0], c) for _, c in times]
            events += times
        events.sort()
        now = events[0][0]
        while events and events[0][0] <= now:
            _, c = events.pop(0)
            s.block_received("A", c, True, now)
            done += 1
    return now


def test_blocks_reported_a_response_at_a_time_keep_the_window_open() -> None:
    ideal = 134 / 25 + 0.028
    for settings in ({}, {"window_initial": 32, "window_max": 64, "min_request_blocks": 16}):
        one_by_one = lone_transfer(scheduler(**settings), 134, 25.0, 0.028, per_response=False)
        batched = lone_transfer(scheduler(**settings), 134, 25.0, 0.028, per_response=True)
        assert one_by_one < ideal * 1.02
        assert batched < ideal * 1.06, (settings, batched, ideal)  # a batch's blocks count for the rate


def test_simulation_twice_as_fast_serves_more() -> None:
    s = scheduler()
    rates = {"a": 100.0, "b": 200.0}
    start(s, mid(1), wanted(range(600)), rates)
    simulate(s, rates, [mid(1)])
    served = s.served_by(mid(1))
    assert served["b"] > 1.6 * served["a"]


def test_simulation_corrupt_peer_is_banned_and_transfer_completes() -> None:
    s = scheduler()
    rates = {"honest": 100.0, "liar": 1000.0}
    start(s, mid(1), wanted(range(200)), rates)
    simulate(s, rates, [mid(1)], corrupt=frozenset({"liar"}))
    assert s.served_by(mid(1)) == {"honest": 200}
    assert list(s.banned()) == ["liar"]


def test_simulation_urgent_study_overtakes_a_routine_transfer() -> None:
    s = scheduler()
    rates = {"sender": 200.0, "other": 200.0}
    start(s, mid(1), wanted(range(2000)), rates)
    done = simulate(s, rates, [mid(1)], arrivals=[(1.0, mid(2), wanted(range(5000, 5100)), URGENT)])
    assert done[mid(2)] < done[mid(1)]
    # Behind at most one window of routine blocks per peer: ~128 blocks at 400/s, then 100 at 400/s.
    assert done[mid(2)] - 1.0 < (128 + 100) / 400 * 1.2


# -- stateful model check ---------------------------------------------------------

UNIVERSE = 14
HONEST = "H"
OTHERS = ("P", "Q")
PEERS = (HONEST, *OTHERS)


class FetchMachine(RuleBasedStateMachine):
    """Random interleavings of every input against a model of what each peer holds.

    The honest peer H holds every block of every manifest and never lies; P
    and Q hold some and may send bad blocks, say absent, or fail requests.
    """

    @initialize(disk=st.sets(st.integers(0, UNIVERSE - 1), max_size=3), max_strikes=st.integers(1, 2),
                min_request=st.integers(1, 3))
    def setup(self, disk: set[int], max_strikes: int, min_request: int) -> None:
        self.s = scheduler(window_min=1, window_initial=2, window_max=5, request_max_blocks=3,
                                max_strikes=max_strikes, request_timeout=5.0, min_request_blocks=min_request,
                                relayed_window_max=2)
        self.min_request = min_request
        self.now = 0.0
        self.stored = {cid(n) for n in disk}  # verified on "disk"
        self.live: dict[CID, list[CID]] = {}
        self.key: dict[CID, tuple[int, int]] = {}  # (priority rank, order added)
        self.avail: dict[tuple[str, CID], set[CID]] = {}  # (peer, manifest) -> blocks it holds
        self.added = 0
        self.completions: Counter[CID] = Counter()
        self.outstanding: list[tuple[str, list[CID]]] = []  # what the "driver" still expects
        self.banned: set[str] = set()
        self.max_strikes = max_strikes
        self.strikes: Counter[str] = Counter()

    # -- model helpers

    def available(self, peer: str, manifest_id: CID, cids: Iterable[CID]) -> None:
        cids = list(cids)
        self.s.peer_available(peer, manifest_id, cids)
        if peer not in self.banned:
            self.avail.setdefault((peer, manifest_id), set()).update(cids)

    def forget(self, peer: str, c: CID | None = None) -> None:
        for (p, _), held in self.avail.items():
            if p == peer:
                if c is None:
                    held.clear()
                else:
                    held.discard(c)

    def drain(self) -> None:
        for ev in self.s.events():
            if isinstance(ev, ManifestCompleted):
                self.completions[ev.manifest_id] += 1
                event("a manifest completed")
            elif isinstance(ev, PeerBanned):
                assert ev.peer not in self.banned and ev.peer != HONEST
                self.banned.add(ev.peer)
                self.forget(ev.peer)
                event("a peer was banned")
            else:
                event("a manifest stalled")

    def pending_held(self, peer: str) -> list[tuple[tuple[int, int], int]]:
        """(manifest key, position) of every block the peer could be asked for now."""
        in_flight = self.s.in_flight()
        return [
            (self.key[m], pos)
            for m, order in self.live.items()
            for pos, c in enumerate(order)
            if c in self.avail.get((peer, m), ()) and c not in self.stored and c not in in_flight
        ]

    def directly_held(self, manifest_id: CID, c: CID) -> bool:
        return any(self.s.relayed(q) is False and c in self.avail.get((q, manifest_id), ()) for q in PEERS)

    # -- rules

    @rule(blocks=st.lists(st.integers(0, UNIVERSE - 1), min_size=1, max_size=8),
          priority=st.sampled_from(list(Priority)), holders=st.sets(st.sampled_from(OTHERS)))
    def add(self, blocks: list[int], priority: Priority, holders: set[str]) -> None:
        self.added += 1
        manifest_id = mid(self.added)
        order = list(dict.fromkeys(cid(n) for n in blocks))
        self.s.add_manifest(manifest_id, wanted(blocks), priority, have=self.stored & set(order), now=self.now)
        self.live[manifest_id] = order
        self.key[manifest_id] = (priority.rank, self.added)
        self.available(HONEST, manifest_id, order)
        for peer in sorted(holders):
            self.available(peer, manifest_id, order[::2])
        self.drain()

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        manifest_id = data.draw(st.sampled_from(sorted(self.live)))
        del self.live[manifest_id]
        for peer in PEERS:
            self.avail.pop((peer, manifest_id), None)
        self.s.remove_manifest(manifest_id)
        self.drain()

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data(), peer=st.sampled_from(OTHERS))
    def offer(self, data: st.DataObject, peer: str) -> None:
        """A peer says it now holds more (a later HAVE reply), often blocks behind where it was."""
        manifest_id = data.draw(st.sampled_from(sorted(self.live)))
        order = self.live[manifest_id]
        self.available(peer, manifest_id, data.draw(st.lists(st.sampled_from(order), unique=True)))
        self.drain()

    @rule(peer=st.sampled_from(PEERS))
    def lose(self, peer: str) -> None:
        self.s.peer_lost(peer, self.now)
        self.forget(peer)
        if peer == HONEST:  # it reconnects and says what it holds again
            for manifest_id, order in self.live.items():
                self.available(HONEST, manifest_id, order)
        self.drain()

    @rule(peer=st.sampled_from(PEERS), relayed=st.booleans())
    def path(self, peer: str, relayed: bool) -> None:
        """The peer's connection goes through a relay, or is upgraded to direct (even mid-request)."""
        known = self.s.window(peer) is not None
        self.s.set_relayed(peer, relayed)
        assert self.s.relayed(peer) == (relayed if known else None)

    @rule(dt=st.sampled_from([0.0, 0.5, 3.0, 6.0]))
    def schedule(self, dt: float) -> None:
        self.now += dt
        requests = self.s.next_requests(self.now)
        self.drain()
        in_flight = self.s.in_flight()
        issued = cids_of(requests)
        assert len(issued) == len(set(issued)), "a block requested twice in one call"
        worst: dict[str, tuple[tuple[int, int], int]] = {}
        for request in requests:
            assert request.peer not in self.banned
            assert 1 <= len(request.cids) <= 3
            held = self.avail.get((request.peer, request.manifest_id), set())
            for c in request.cids:
                assert c not in self.stored, "requested a block already verified"
                assert c in held, "requested a block the peer did not offer under that manifest"
                assert in_flight[c] == request.peer
                pick = (self.key[request.manifest_id], self.live[request.manifest_id].index(c))
                if not (self.s.relayed(request.peer) and self.directly_held(request.manifest_id, c)):
                    worst[request.peer] = max(worst.get(request.peer, pick), pick)
            assert self.s.in_flight_count(request.peer) <= (self.s.effective_window(request.peer) or 0)
            assert (self.s.effective_window(request.peer) or 0) <= (self.s.window(request.peer) or 0)
            self.outstanding.append((request.peer, list(request.cids)))
            if self.s.relayed(request.peer):
                # direct peers come first: any direct holder of a block a relayed peer was given has no room left
                assert self.s.in_flight_count(request.peer) <= 2
                for c in request.cids:
                    for other in PEERS:
                        if self.s.relayed(other) is False and c in self.avail.get((other, request.manifest_id), ()):
                            room = (self.s.effective_window(other) or 0) - self.s.in_flight_count(other)
                            least = min(self.min_request, max(1, (self.s.effective_window(other) or 0) // 2))
                            assert self.s.in_flight_count(other) > 0 and room < least, (other, c)
        for peer in PEERS:
            left = self.pending_held(peer)
            ordered = left
            if self.s.relayed(peer):  # a relayed peer takes the blocks no direct peer holds first, in order
                ordered = [(k, pos) for k, pos in left
                           if not any(self.key[m] == k and self.directly_held(m, order[pos])
                                      for m, order in self.live.items())]
            if peer in worst:  # priority, then order added, then manifest order
                assert all(item > worst[peer] for item in ordered), (peer, worst[peer], ordered)
            window = self.s.effective_window(peer)
            if window is not None:
                busy = self.s.in_flight_count(peer)
                least = min(self.min_request, max(1, window // 2))
                if busy == 0 or window - busy >= least:
                    assert left == [], "a peer with a request's worth of free slots was not given work"

    @precondition(lambda self: bool(self.outstanding))
    @rule(data=st.data(), kind=st.sampled_from(["good", "good", "bad", "absent", "fail"]))
    def respond(self, data: st.DataObject, kind: str) -> None:
        i = data.draw(st.integers(0, len(self.outstanding) - 1))
        peer, remaining = self.outstanding[i]
        if peer == HONEST and kind in ("bad", "absent"):
            kind = "good"
        self.now += 0.1
        if kind == "fail":
            self.s.request_failed(peer, remaining, self.now)
            del self.outstanding[i]
        else:
            c = remaining.pop(0)
            if not remaining:
                del self.outstanding[i]
            if kind == "good":
                self.s.block_received(peer, c, True, self.now)
                self.stored.add(c)
            elif kind == "bad":
                self.s.block_received(peer, c, False, self.now)
                self.forget(peer, c)
                self.strikes[peer] += 1
                self.drain()
                assert (peer in self.banned) == (self.strikes[peer] >= self.max_strikes)
            else:
                self.s.block_absent(peer, c, self.now)
                self.forget(peer, c)
        self.drain()

    # -- invariants

    @invariant()
    def completion_reported_once_and_progress_true(self) -> None:
        if not hasattr(self, "s"):
            return
        assert all(n == 1 for n in self.completions.values())
        for manifest_id, order in self.live.items():
            p = self.s.progress(manifest_id)
            done = sum(1 for c in order if c in self.stored)
            assert p.blocks_done == done and p.blocks_total == len(order)
            assert p.complete == (done == len(order)) == (self.completions[manifest_id] == 1)
            unheld = [
                c for c in order
                if c not in self.stored and not any(c in self.avail.get((q, manifest_id), ()) for q in PEERS)
            ]
            assert p.stalled == bool(unheld)

    @invariant()
    def an_idle_scheduler_has_nothing_to_do(self) -> None:
        """idle() lets a driver skip next_requests (the simulator does): it must then issue nothing, even much
        later (no request left to expire), and have no event to report."""
        if not hasattr(self, "s") or not self.s.idle():
            return
        assert self.s.next_requests(self.now + 1e6) == []
        assert self.s.events() == [] and self.s.in_flight() == {} and self.s.idle()

    @invariant()
    def banned_peers_get_nothing(self) -> None:
        if not hasattr(self, "s"):
            return
        assert set(self.s.banned()) == self.banned
        assert not set(self.s.in_flight().values()) & self.banned

    def teardown(self) -> None:
        """From any state, the honest peer alone completes every live manifest."""
        if not hasattr(self, "s"):
            return
        for _ in range(200):
            if all(self.s.progress(m).complete for m in self.live):
                return
            self.now += 1.0
            for request in self.s.next_requests(self.now):
                for c in request.cids:
                    if request.peer == HONEST:
                        self.s.block_received(HONEST, c, True, self.now)
                        self.stored.add(c)
                    else:
                        self.s.block_absent(request.peer, c, self.now)
        raise AssertionError("an honest holder did not complete the live manifests")


TestFetchMachine = FetchMachine.TestCase
TestFetchMachine.settings = settings(
    max_examples=250, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def test_idle_only_without_manifests_requests_or_events() -> None:
    s = scheduler(request_timeout=10.0)
    assert s.idle()
    s.add_manifest(mid(1), wanted([1, 2]), ROUTINE, have=(), now=0.0)
    assert not s.idle()  # a manifest to fetch
    s.peer_available("A", mid(1), [cid(1), cid(2)])
    requests = s.next_requests(0.0)
    assert cids_of(requests) == [cid(1), cid(2)]
    s.block_received("A", cid(1), True, 1.0)
    s.remove_manifest(mid(1))
    assert not s.idle()  # cid(2) is still outstanding at A: its timeout must still run
    s.block_received("A", cid(2), True, 2.0)  # a late answer for a removed manifest
    assert s.idle()
    s.add_manifest(mid(2), wanted([4]), ROUTINE, have=[cid(4)], now=3.0)  # complete at once
    s.remove_manifest(mid(2))
    assert not s.idle()  # nothing to fetch, but its ManifestCompleted is not drained yet
    assert s.events() == [ManifestCompleted(mid(2))]
    assert s.idle()
    assert s.next_requests(100.0) == [] and s.events() == []
    s.block_received("A", cid(3), False, 101.0)  # a bad block with no manifest still strikes (and may ban)
    assert not s.idle() or s.strikes("A") < s.max_strikes
