"""DeliveryPolicy: one validated statement of how deliveries retry; jitter_fraction: the one way a uniform
draw becomes a retry's jitter (the node's driver and the simulator's both call it)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.backoff import Backoff
from protocol.delivery_policy import ATTEMPT_BACKSTOP, DeliveryPolicy, jitter_fraction
from protocol.errors import LocalProtocolError, MeshError
from protocol.outbox import DeliveryRecord, DeliveryState, Outbox


def test_the_nodes_policy() -> None:
    p = DeliveryPolicy()
    assert (p.backoff, p.attempt_timeout, p.max_attempts, p.jitter) == (Backoff(2.0, 2.0, 900.0), 120.0, 1000, 0.2)
    assert [p.backoff.delay(n) for n in (1, 2, 3, 10, 11)] == [2.0, 4.0, 8.0, 900.0, 900.0]


@pytest.mark.parametrize("kwargs", [
    {"attempt_timeout": 0.0}, {"attempt_timeout": -1.0}, {"attempt_timeout": math.inf},
    {"attempt_timeout": math.nan}, {"max_attempts": 0}, {"max_attempts": -3}, {"max_attempts": False},
    {"jitter": -0.1}, {"jitter": 0.51}, {"jitter": math.nan}, {"backoff": 2.0},
])
def test_impossible_policies_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(LocalProtocolError):
        DeliveryPolicy(**kwargs)  # type: ignore[arg-type]


def test_no_limit_and_no_jitter_are_policies() -> None:
    p = DeliveryPolicy(max_attempts=None, jitter=0.0)
    assert jitter_fraction(p, 0.0) == jitter_fraction(p, 1.0) == 0.0


def test_jitter_fraction_spans_the_policys_jitter() -> None:
    p = DeliveryPolicy(jitter=0.2)
    assert (jitter_fraction(p, 0.0), jitter_fraction(p, 0.5), jitter_fraction(p, 1.0)) == (-0.2, 0.0, 0.2)


@pytest.mark.parametrize("u", [-0.01, 1.01, math.nan, math.inf, -math.inf])
def test_a_draw_outside_0_1_is_refused(u: float) -> None:
    with pytest.raises(MeshError):
        jitter_fraction(DeliveryPolicy(), u)


@given(st.floats(0.0, 1.0), st.integers(1, 2000), st.floats(0.0, 0.5))
def test_every_draw_gives_a_delay_within_the_jitter(u: float, failures: int, spread: float) -> None:
    p = DeliveryPolicy(jitter=spread)
    raw = p.backoff.delay(failures)
    delay = p.backoff.delay(failures, jitter_fraction(p, u))
    assert raw * (1 - spread) - 1e-9 <= delay <= raw * (1 + spread) + 1e-9


def test_the_outbox_of_a_policy_leaves_the_attempt_deadline_to_the_driver() -> None:
    p = DeliveryPolicy(attempt_timeout=60.0, max_attempts=5)
    o: Outbox[str] = p.outbox()
    assert (o.backoff, o.attempt_timeout, o.max_attempts) == (p.backoff, 60.0 + ATTEMPT_BACKSTOP, 5)
    o.add("k", 0.0)
    assert o.due(0.0) == ["k"]
    assert o.due(60.0) == []  # the driver ends the attempt at 60 s; the Outbox only ATTEMPT_BACKSTOP later
    record = o.record("k")
    assert record is not None and record.state is DeliveryState.ATTEMPTING


def test_the_outbox_of_a_policy_restores_records() -> None:
    stored = [DeliveryRecord("k", DeliveryState.ATTEMPTING, 3, 500.0, 100.0)]
    o = DeliveryPolicy().outbox(stored)
    record = o.record("k")
    assert record is not None and (record.state, record.attempts, record.next_attempt_at) == (
        DeliveryState.PENDING, 3, 100.0)
