"""The flow-level network: closed-form transfer times, equal and max-min shares, lazy hub links."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulations.engine.clock import EventQueue
from simulations.engine.network import Flow, Link, Network


def drain(q: EventQueue) -> None:
    while len(q):
        q.pop_and_run()


def test_one_flow_takes_size_over_rate() -> None:
    q = EventQueue()
    net = Network(q)
    done: list[float] = []
    net.start([Link("a.up", 12.5e6), Link("b.down", 125e6)], 250e6, lambda f, t: done.append(t))
    drain(q)
    assert done == [pytest.approx(250e6 / 12.5e6)]


@pytest.mark.parametrize("n", [1, 2, 3, 7, 20])
def test_n_equal_flows_share_a_link_equally(n: int) -> None:
    q = EventQueue()
    net = Network(q)
    link = Link("shared", 10e6)
    done: list[float] = []
    flows = [net.start([link, Link(f"d{i}", 1e9)], 50e6, lambda f, t: done.append(t)) for i in range(n)]
    assert [f.rate for f in flows] == pytest.approx([10e6 / n] * n)
    drain(q)
    assert done == pytest.approx([n * 50e6 / 10e6] * n)


def test_a_late_flow_slows_the_first_then_both_finish_as_computed() -> None:
    q = EventQueue()
    net = Network(q)
    link = Link("l", 10.0)
    ends: dict[str, float] = {}
    net.start([link], 100.0, lambda f, t: ends.__setitem__("a", t))
    q.at(5.0, lambda _, t: net.start([link], 20.0, lambda f, t2: ends.__setitem__("b", t2)))
    drain(q)
    # a alone for 5 s (50 bytes), then both at 5 B/s: b ends at 9 s, a has 30 left at 10 B/s: 12 s
    assert ends == {"b": pytest.approx(9.0), "a": pytest.approx(12.0)}


def test_max_min_fairness_textbook_case() -> None:
    q = EventQueue()
    net = Network(q)
    l1, l2 = Link("l1", 10.0), Link("l2", 4.0)
    both = net.start([l1, l2], 1e9, lambda f, t: None)
    only1 = net.start([l1], 1e9, lambda f, t: None)
    only2 = net.start([l2], 1e9, lambda f, t: None)
    assert (both.rate, only1.rate, only2.rate) == pytest.approx((2.0, 8.0, 2.0))


def test_flow_cap_is_respected_and_leaves_the_rest_to_others() -> None:
    q = EventQueue()
    net = Network(q)
    link = Link("l", 10.0)
    capped = net.start([link], 1e9, lambda f, t: None, cap=1.0)
    other = net.start([link], 1e9, lambda f, t: None)
    assert (capped.rate, other.rate) == pytest.approx((1.0, 9.0))


def test_capacity_change_mid_flow() -> None:
    q = EventQueue()
    net = Network(q)
    link = Link("l", 10.0)
    done: list[float] = []
    net.start([link], 100.0, lambda f, t: done.append(t))
    q.at(4.0, lambda _, t: net.set_capacity(link, 2.0))
    drain(q)
    assert done == [pytest.approx(4.0 + 60.0 / 2.0)]


def test_abort_returns_the_bytes_moved_and_frees_the_link() -> None:
    q = EventQueue()
    net = Network(q)
    link = Link("l", 10.0)
    a = net.start([link], 100.0, lambda f, t: pytest.fail("aborted flow completed"))
    b = net.start([link], 100.0, lambda f, t: None)
    q.at(4.0, lambda _, t: setattr(a, "data", net.abort(a)))
    q.at(4.0 + 1e-9, lambda _, t: None)
    while len(q) and q.next_time() <= 4.0 + 1e-9:
        q.pop_and_run()
    assert a.data == pytest.approx(20.0) and b.rate == pytest.approx(10.0)


def test_milestones_fire_at_the_exact_byte() -> None:
    q = EventQueue()
    net = Network(q)
    hits: list[tuple[int, float]] = []
    net.start([Link("l", 10.0)], 100.0, lambda f, t: None, milestones=(5.0, 50.0),
              on_milestone=lambda f, i, t: hits.append((i, t)))
    drain(q)
    assert hits == [(0, pytest.approx(0.5)), (1, pytest.approx(5.0))]


@settings(max_examples=120, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 1), st.floats(1.0, 1e4)), min_size=1, max_size=25),
       st.lists(st.floats(1.0, 100.0), min_size=6, max_size=6), st.floats(1.0, 500.0))
def test_lazy_hub_link_gives_the_same_rates_as_a_strict_one(flows: list[tuple[int, int, float]],
                                                            caps: list[float], hub_cap: float) -> None:
    """Whether the hub's link couples its flows lazily or always, max-min rates are the same."""
    rates = []
    for lazy in (True, False):
        q = EventQueue()
        net = Network(q)
        access = [Link(f"a{i}", c) for i, c in enumerate(caps)]
        hub = Link("hub", hub_cap, lazy=lazy)
        started: list[Flow] = []
        for org, via_hub, size in flows:
            links = [access[org], hub] if via_hub else [access[org], access[(org + 1) % 6]]
            started.append(net.start(links, size * 1e6, lambda f, t: None))
        rates.append([f.rate for f in started])
        for f in started[::2]:
            net.abort(f)
        rates.append([f.rate for f in started if f.active])
    assert rates[0] == pytest.approx(rates[2], rel=1e-6)
    assert rates[1] == pytest.approx(rates[3], rel=1e-6)
    hub_total = sum(r for r, (_, via, _) in zip(rates[2], flows) if via)
    assert hub_total <= hub_cap * (1 + 1e-6)


def test_a_saturated_hub_link_keeps_the_timer_queue_small_and_the_results_exact() -> None:
    """Every departure changes every rate on a saturated hub link; skipped timers are compacted away."""
    ends: dict[bool, list[float]] = {}
    for lazy in (True, False):
        q = EventQueue()
        net = Network(q)
        net.compact_after = 200
        hub = Link("hub", 100.0, lazy=lazy)
        done: list[float] = []
        for i in range(300):
            q.at(i * 0.01, lambda _, t, i=i: net.start([Link(f"a{i}", 50.0), hub], 10.0 + i % 7,
                                                       lambda f, t2: done.append(t2)))
        peak = 0
        while len(q):
            q.pop_and_run()
            peak = max(peak, len(q))
        ends[lazy] = done
        if lazy:
            assert net.compactions > 0 and peak < 2000
    assert len(ends[True]) == 300
    assert ends[True] == pytest.approx(ends[False], rel=1e-9)


def test_a_timer_that_fires_a_hair_early_at_a_late_time_completes_the_flow() -> None:
    q = EventQueue(start=3.0e7)
    net = Network(q)
    done: list[float] = []
    flow = net.start([Link("l", 1e9)], 1.0, lambda f, t: done.append(t))
    q.now = 3.0e7 + 1.0
    flow.t_last = q.now
    flow.remaining = 1e-6  # above the tolerance (1e-9 bytes), yet 1e-15 s away: the clock cannot resolve it
    net._done((flow, flow.version), q.now)
    assert done == [3.0e7 + 1.0] and not flow.active
