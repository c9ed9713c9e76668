"""protocol.admission: every verdict, the decay that forgives a burst, and state that stays bounded."""

from __future__ import annotations

import pytest

from protocol.admission import Admission, AdmissionSettings, Lane, Verdict, lane_of
from protocol.errors import LocalProtocolError
from protocol.exchange_messages import (
    ANNOUNCE_PROTOCOL,
    BLOCKS_PROTOCOL,
    HAVE_PROTOCOL,
    HELLO_PROTOCOL,
    RECALL_PROTOCOL,
    RECEIPT_PROTOCOL,
)


def small(**kw: float) -> Admission:
    values: dict[str, float] = {"max_streams": 2, "max_waiting": 2, "rate": 10.0, "burst": 10.0,
                                "abuse_threshold": 5.0, "abuse_half_life": 10.0, "max_peers": 8}
    values.update(kw)
    return Admission(AdmissionSettings(**values))  # type: ignore[arg-type]


def test_lanes() -> None:
    assert {lane_of(p) for p in (ANNOUNCE_PROTOCOL, HAVE_PROTOCOL, BLOCKS_PROTOCOL)} == {Lane.DATA}
    assert {lane_of(p) for p in (HELLO_PROTOCOL, RECEIPT_PROTOCOL, RECALL_PROTOCOL)} == {Lane.CONTROL}
    assert lane_of("/something/else/1.0.0") is Lane.DATA


def test_over_the_stream_limit_waits_then_is_admitted_in_turn() -> None:
    a = small()
    assert [a.request("p", Lane.DATA, 0).verdict for _ in range(4)] == [Verdict.ADMIT, Verdict.ADMIT,
                                                                       Verdict.WAIT, Verdict.WAIT]
    assert a.retry("p", Lane.DATA).verdict is Verdict.WAIT  # no slot yet
    a.leave("p", Lane.DATA)
    assert a.retry("p", Lane.DATA).verdict is Verdict.ADMIT
    assert (a.active("p", Lane.DATA), a.waiting("p", Lane.DATA)) == (2, 1)
    # a newcomer does not overtake the one still waiting, even with a slot free
    a.leave("p", Lane.DATA)
    assert a.request("p", Lane.DATA, 0).verdict is Verdict.WAIT
    a.give_up("p", Lane.DATA)
    a.give_up("p", Lane.DATA)
    assert a.waiting("p", Lane.DATA) == 0 and a.refused == 0
    with pytest.raises(LocalProtocolError):
        a.retry("p", Lane.DATA)


def test_each_lane_bounds_its_queue_and_refuses_past_it() -> None:
    a = small(rate=1000.0, burst=1000.0)
    verdicts = [a.request("p", Lane.DATA, 0).verdict for _ in range(5)]
    assert verdicts == [Verdict.ADMIT] * 2 + [Verdict.WAIT] * 2 + [Verdict.REFUSE]
    control = [a.request("p", Lane.CONTROL, 0).verdict for _ in range(5)]  # its own slots and queue
    assert control == [Verdict.ADMIT] * 2 + [Verdict.WAIT] * 2 + [Verdict.REFUSE]
    assert a.refused == 2 and a.abuse("p", 0) == pytest.approx(2.0)


def test_a_wait_that_times_out_is_scored_as_a_refusal() -> None:
    """Holding every slot and the queue with requests that never complete is a flood, even within the queue:
    each wait that gets no slot in time adds to the score, and enough of them cut the peer off."""
    a = small(rate=1000.0, burst=1000.0, max_waiting=1000, abuse_threshold=5.0)
    for _ in range(2):
        assert a.request("p", Lane.CONTROL, 0).verdict is Verdict.ADMIT
    for _ in range(5):
        assert a.request("p", Lane.CONTROL, 0).verdict is Verdict.WAIT
    assert a.refused == 0 and not a.should_disconnect("p", 0)
    for i in range(5):
        assert a.time_out("p", Lane.CONTROL, 0).verdict is Verdict.REFUSE
    assert a.waiting("p", Lane.CONTROL) == 0 and a.refused == 5 and a.should_disconnect("p", 0)
    a.give_up("p", Lane.CONTROL)  # a wait cancelled from outside is not scored (and nothing underflows)
    assert a.abuse("p", 0) == pytest.approx(5.0)


def test_rate_refuses_past_the_bucket_and_refills() -> None:
    a = small(max_streams=1000, rate=10.0, burst=10.0)
    decisions = [a.request("p", Lane.DATA, 0) for _ in range(11)]
    assert [d.verdict for d in decisions[:10]] == [Verdict.ADMIT] * 10
    assert decisions[10].verdict is Verdict.REFUSE and "rate" in decisions[10].reason
    assert a.request("p", Lane.DATA, 0.5).verdict is Verdict.ADMIT  # 5 tokens back after half a second
    assert a.request("q", Lane.DATA, 0).verdict is Verdict.ADMIT  # other peers are not affected


def test_sustained_refusals_disconnect_a_burst_of_them_is_forgiven() -> None:
    a = small(max_streams=1000, rate=1.0, burst=1.0, abuse_threshold=5.0, abuse_half_life=10.0)
    a.request("p", Lane.DATA, 0)
    for _ in range(4):
        a.request("p", Lane.DATA, 0)  # four refusals
    assert not a.should_disconnect("p", 0)
    assert a.abuse("p", 20) == pytest.approx(1.0)  # two half-lives later: a quarter of it
    for _ in range(4):
        a.request("p", Lane.DATA, 20)  # one token came back long ago: 1 admitted, 3 refused -> score 4
    assert not a.should_disconnect("p", 20)
    a.request("p", Lane.DATA, 20)
    assert a.should_disconnect("p", 20)  # five refusals at once: sustained


def test_state_stays_bounded_after_many_peers_and_requests() -> None:
    a = small(max_peers=8)
    for i in range(10_000):
        peer = f"p{i % 500}"
        now = i * 0.01
        if a.request(peer, Lane.DATA, now).verdict is Verdict.ADMIT:
            a.leave(peer, Lane.DATA)
        assert len(a) <= 8
    # idle, recovered peers are forgotten on prune
    tracked = len(a)
    assert a.prune(1e6) == tracked and len(a) == 0


def test_busy_peers_are_never_forgotten() -> None:
    a = small(max_peers=2)
    assert a.request("busy", Lane.DATA, 0).verdict is Verdict.ADMIT
    for i in range(50):
        a.request(f"idle{i}", Lane.DATA, i)
        a.leave(f"idle{i}", Lane.DATA)
    assert a.active("busy", Lane.DATA) == 1 and len(a) <= 2


def test_settings_are_checked() -> None:
    with pytest.raises(LocalProtocolError):
        AdmissionSettings(max_streams=0)
    with pytest.raises(LocalProtocolError):
        AdmissionSettings(abuse_half_life=0)
