"""Outbox inputs for batch senders (the PACS forwarder) and debounced items: claim the due keys of one
destination, put back an attempt that never took place (its destination was unreachable) without counting
it, and queue an item not due before a given time."""

from __future__ import annotations

from protocol.backoff import Backoff
from protocol.outbox import DeliveryRecord, DeliveryState, Outbox

A1, A2, B1 = ("pacsA", "i1"), ("pacsA", "i2"), ("pacsB", "i1")


def test_due_claims_only_the_keys_of_one_destination() -> None:
    o: Outbox[tuple[str, str]] = Outbox()
    for key in (A1, B1, A2):
        o.add(key, 0.0)
    assert o.due(0.0, where=lambda k: k[0] == "pacsA") == [A1, A2]
    assert o.record(B1) == DeliveryRecord(B1, DeliveryState.PENDING, 0, 0.0, 0.0)
    assert o.due(0.0) == [B1]


def test_postponed_attempt_is_not_counted_and_waits_until_given_time() -> None:
    o: Outbox[tuple[str, str]] = Outbox(backoff=Backoff(base=2.0), max_attempts=2)
    o.add(A1, 0.0)
    for i in range(5):  # unreachable five times: never failed for good, attempts not spent
        assert o.due(10.0 * i) == [A1]
        o.postpone(A1, 10.0 * i, until=10.0 * i + 7, error="PACS unreachable")
        assert o.record(A1) == DeliveryRecord(A1, DeliveryState.PENDING, 0, 10.0 * i + 7, 10.0 * i,
                                              "PACS unreachable")
        assert o.due(10.0 * i + 6.9) == []
    assert o.due(47.0) == [A1]
    o.failed(A1, 47.0, error="refused")  # a real attempt counts
    assert o.record(A1).attempts == 1  # type: ignore[union-attr]


def test_postpone_defers_a_pending_key_and_ignores_ended_ones() -> None:
    o: Outbox[tuple[str, str]] = Outbox()
    o.add(A1, 0.0)
    o.postpone(A1, 1.0, until=30.0)
    assert o.next_due() == 30.0
    o.postpone(A1, 2.0, until=20.0)  # never earlier than it was
    assert o.next_due() == 30.0
    assert o.due(30.0) == [A1]
    o.succeeded(A1, 31.0)
    o.postpone(A1, 32.0, until=99.0)
    assert o.record(A1).state is DeliveryState.DELIVERED  # type: ignore[union-attr]


def test_add_not_before() -> None:
    o: Outbox[tuple[str, str]] = Outbox()
    assert o.add(A1, 5.0, not_before=65.0)
    assert o.record(A1) == DeliveryRecord(A1, DeliveryState.PENDING, 0, 65.0, 5.0)
    assert o.due(64.0) == [] and o.due(65.0) == [A1]


def test_due_ranks_before_age() -> None:
    o: Outbox[tuple[str, str]] = Outbox()
    o.add(A1, 0.0)
    o.add(A2, 5.0)  # younger but more urgent
    o.add(B1, 1.0)
    rank = {A1: 2, A2: 0, B1: 2}
    assert o.due(10.0, limit=2, rank=rank.__getitem__) == [A2, A1]
    assert o.due(10.0, rank=rank.__getitem__) == [B1]
