"""Outbox.reopen: a key that ended is queued again when there is something new to send (an announced study
that got a late instance), which `add` refuses (a key is never queued twice)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.backoff import Backoff
from protocol.outbox import DeliveryState, Outbox

KEY = ("1.2.3", "stroke")


def delivered(outbox: Outbox[tuple[str, str]]) -> None:
    outbox.add(KEY, 0.0)
    assert outbox.due(0.0) == [KEY]
    outbox.failed(KEY, 1.0)
    assert outbox.due(100.0) == [KEY]
    outbox.succeeded(KEY, 101.0)


def test_a_delivered_key_is_pending_again_with_its_attempts_reset() -> None:
    outbox: Outbox[tuple[str, str]] = Outbox(backoff=Backoff(base=2.0))
    delivered(outbox)
    assert not outbox.add(KEY, 110.0)  # add never queues a key twice
    assert outbox.reopen(KEY, 110.0, not_before=140.0)
    record = outbox.record(KEY)
    assert record is not None and (record.state, record.attempts, record.next_attempt_at) == (
        DeliveryState.PENDING, 0, 140.0)
    assert outbox.due(139.0) == [] and outbox.due(140.0) == [KEY]
    outbox.failed(KEY, 141.0)  # the first failure after the reopen backs off from the start
    assert outbox.record(KEY).next_attempt_at == 143.0  # type: ignore[union-attr]


def test_a_failed_key_reopens_and_an_unknown_one_is_added() -> None:
    outbox: Outbox[tuple[str, str]] = Outbox(max_attempts=1)
    outbox.add(KEY, 0.0)
    outbox.due(0.0)
    outbox.failed(KEY, 1.0)
    assert outbox.record(KEY).state is DeliveryState.FAILED  # type: ignore[union-attr]
    assert outbox.reopen(KEY, 5.0)
    assert outbox.due(5.0) == [KEY]
    other = ("1.2.4", "stroke")
    assert outbox.reopen(other, 5.0, not_before=9.0)
    assert outbox.record(other).next_attempt_at == 9.0  # type: ignore[union-attr]


def test_a_pending_key_is_only_pushed_later_and_an_attempt_is_left_alone() -> None:
    outbox: Outbox[tuple[str, str]] = Outbox()
    outbox.add(KEY, 0.0, not_before=30.0)
    assert not outbox.reopen(KEY, 1.0, not_before=10.0)  # never earlier
    assert outbox.record(KEY).next_attempt_at == 30.0  # type: ignore[union-attr]
    assert not outbox.reopen(KEY, 2.0, not_before=50.0)
    assert outbox.record(KEY).next_attempt_at == 50.0  # type: ignore[union-attr]
    assert outbox.due(50.0) == [KEY]
    assert not outbox.reopen(KEY, 51.0, not_before=90.0)
    record = outbox.record(KEY)
    assert record is not None and record.state is DeliveryState.ATTEMPTING and record.attempts == 1
    outbox.changes()
    outbox.succeeded(KEY, 52.0)
    assert [r.state for r in outbox.changes()] == [DeliveryState.DELIVERED]


ops = st.lists(
    st.tuples(
        st.sampled_from(["add", "reopen", "due", "ok", "fail", "fail-permanent", "restart"]),
        st.sampled_from([KEY, ("1.2.4", "rgt")]),
        st.sampled_from([0.0, 0.5, 2.0, 30.0, 400.0]),
        st.sampled_from([None, 0.0, 10.0, 100.0]),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(ops)
def test_reopen_in_any_sequence(steps: list[tuple[str, tuple[str, str], float, float | None]]) -> None:
    o: Outbox[tuple[str, str]] = Outbox(attempt_timeout=100.0, max_attempts=3)
    now = 0.0
    for op, key, dt, later in steps:
        now += dt
        not_before = None if later is None else now + later
        before = o.record(key)
        if op == "add":
            o.add(key, now, not_before=not_before)
        elif op == "reopen":
            reopened = o.reopen(key, now, not_before=not_before)
            after = o.record(key)
            assert after is not None
            if before is None or before.state in (DeliveryState.DELIVERED, DeliveryState.FAILED):
                assert reopened and (after.state, after.attempts) == (DeliveryState.PENDING, 0)
                assert after.next_attempt_at == (now if not_before is None else max(now, not_before))
            elif before.state is DeliveryState.PENDING:
                assert not reopened and after.state is DeliveryState.PENDING
                assert after.next_attempt_at == max(before.next_attempt_at, now if not_before is None else not_before)
            else:
                assert not reopened and after == before, "an attempt in progress is left alone"
        elif op == "due":
            o.due(now)
        elif op == "ok":
            o.succeeded(key, now)
        elif op in ("fail", "fail-permanent"):
            o.failed(key, now, permanent=op == "fail-permanent")
        else:
            o = Outbox.restore(o.snapshot(), attempt_timeout=100.0, max_attempts=3)
        after = o.record(key)
        if before is not None and before.state is DeliveryState.DELIVERED and op != "reopen":
            assert after == before, "a delivered key changes only when reopened"
        for record in o.snapshot():
            assert 0 <= record.attempts <= 3


def test_attempts_cut_short_by_restarts_never_exceed_max_attempts() -> None:
    """Found by the sequence test above: claim, restart, claim, restart ... claimed a delivery a fourth time
    of max_attempts=3. Interrupted attempts count (a delivery that crashes the node must not loop); the
    last one interrupted ends FAILED, for a person to retry."""
    o: Outbox[tuple[str, str]] = Outbox(attempt_timeout=100.0, max_attempts=3)
    o.add(KEY, 0.0)
    for attempt in (1, 2, 3):
        assert o.due(0.0) == [KEY]
        o = Outbox.restore(o.snapshot(), attempt_timeout=100.0, max_attempts=3)
        record = o.record(KEY)
        assert record is not None and record.attempts == attempt
    assert record.state is DeliveryState.FAILED and "last allowed attempt" in record.last_error
    assert o.due(1000.0) == []
