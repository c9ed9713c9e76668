"""Outbox.reopen: a key that ended is queued again when there is something new to send (an announced study
that got a late instance), which `add` refuses (a key is never queued twice)."""

from __future__ import annotations

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
