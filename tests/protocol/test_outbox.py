"""Outbox: retries with deterministic backoff over a virtual clock, and persistence across a restart."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.backoff import Backoff
from protocol.cid import CID
from protocol.errors import LocalProtocolError, SchemaError
from protocol.outbox import (
    AnnounceOutbox,
    DeliveryKey,
    DeliveryKind,
    DeliveryRecord,
    DeliveryState,
    Outbox,
)

M1, M2 = CID.of(b"manifest 1"), CID.of(b"manifest 2")
RXX = DeliveryKey(DeliveryKind.ANNOUNCE, M1, "RXX")
TELE = DeliveryKey(DeliveryKind.ANNOUNCE, M1, "TELE")
RECEIPT = DeliveryKey(DeliveryKind.RECEIPT, M2, "RGT")


def test_delivered_first_time() -> None:
    o = AnnounceOutbox()
    assert o.add(RXX, 100.0) and not o.add(RXX, 101.0)
    assert o.due(99.0) == []
    assert o.due(100.0) == [RXX]
    assert o.record(RXX) == DeliveryRecord(RXX, DeliveryState.ATTEMPTING, 1, 400.0, 100.0)
    assert o.due(100.0) == []  # claimed: not handed out twice
    o.succeeded(RXX, 101.0)
    assert o.record(RXX) == DeliveryRecord(RXX, DeliveryState.DELIVERED, 1, 101.0, 101.0)
    assert o.next_due() is None and o.due(10_000.0) == []


def test_transient_failures_back_off_then_succeed() -> None:
    o = AnnounceOutbox()
    o.add(RXX, 0.0)
    now = 0.0
    attempts_at = []
    for _ in range(12):
        (key,) = o.due(now)
        attempts_at.append(now)
        o.failed(key, now, error="org unreachable")
        now = o.next_due() or 0.0
        assert o.due(now - 0.001) == []
    assert [b - a for a, b in zip(attempts_at, attempts_at[1:])] == [2, 4, 8, 16, 32, 64, 128, 256, 512, 900, 900]
    record = o.record(RXX)
    assert record is not None and record.state is DeliveryState.PENDING and record.last_error == "org unreachable"
    assert o.due(now) == [RXX]
    o.succeeded(RXX, now)
    assert o.record(RXX).state is DeliveryState.DELIVERED  # type: ignore[union-attr]


def test_permanent_failure_and_operator_retry() -> None:
    o = AnnounceOutbox()
    o.add(RXX, 0.0)
    o.due(0.0)
    o.failed(RXX, 1.0, permanent=True, error="refused: wrong-organisation")
    assert o.record(RXX) == DeliveryRecord(
        RXX, DeliveryState.FAILED, 1, 1.0, 1.0, "refused: wrong-organisation"
    )
    assert o.due(1e9) == [] and o.next_due() is None
    o.retry(RXX, 5.0)
    assert o.due(5.0) == [RXX] and o.record(RXX).attempts == 1  # type: ignore[union-attr]


def test_max_attempts_makes_failure_permanent() -> None:
    o = AnnounceOutbox(max_attempts=3)
    o.add(RXX, 0.0)
    now = 0.0
    for _ in range(3):
        o.due(now)
        o.failed(RXX, now)
        now += 1000
    assert o.record(RXX).state is DeliveryState.FAILED  # type: ignore[union-attr]


def test_attempt_that_never_reports_back_times_out() -> None:
    o = AnnounceOutbox(attempt_timeout=60.0)
    o.add(RXX, 0.0)
    o.due(0.0)
    assert o.next_due() == 60.0
    assert o.due(59.0) == []
    assert o.due(60.0) == []  # timed out now: a transient failure, due after 2 s
    record = o.record(RXX)
    assert record == DeliveryRecord(RXX, DeliveryState.PENDING, 1, 62.0, 60.0, "attempt timed out")
    o.succeeded(RXX, 61.0)  # the lost attempt's late report is ignored
    assert o.record(RXX) == record
    assert o.due(62.0) == [RXX]


def test_due_order_limit_wake_and_remove() -> None:
    o = AnnounceOutbox()
    o.add(TELE, 5.0)
    o.add(RXX, 3.0)
    o.add(RECEIPT, 4.0)
    assert o.due(10.0, limit=2) == [RXX, RECEIPT]
    o.failed(RXX, 10.0)
    o.failed(RECEIPT, 10.0, jitter=0.5)
    assert o.record(RECEIPT).next_attempt_at == 13.0  # type: ignore[union-attr]
    o.wake([RXX, TELE], 10.5)  # RXX's org came online; TELE was not yet attempted (already due)
    assert o.due(10.5) == [TELE, RXX]
    o.remove(TELE)
    o.remove(TELE)
    assert o.record(TELE) is None and {r.key for r in o.snapshot()} == {RXX, RECEIPT}


def test_snapshot_restore_survives_a_restart() -> None:
    o = AnnounceOutbox()
    for key in (RXX, TELE, RECEIPT):
        o.add(key, 0.0)
    o.due(0.0)
    o.succeeded(RXX, 1.0)
    o.failed(TELE, 1.0)  # due at 3.0
    # RECEIPT is mid-attempt when the node stops.
    stored = o.snapshot()
    restarted = AnnounceOutbox.restore(stored)
    assert isinstance(restarted, AnnounceOutbox)
    assert restarted.record(RXX) == o.record(RXX)
    assert restarted.due(2.0) == [RECEIPT]  # the interrupted attempt is due again at once
    assert restarted.record(RECEIPT).attempts == 2  # type: ignore[union-attr]
    assert restarted.due(3.0) == [TELE]
    with pytest.raises(LocalProtocolError):
        AnnounceOutbox.restore(stored + stored[:1])


def test_changes_report_only_what_changed() -> None:
    o = AnnounceOutbox()
    o.add(RXX, 0.0)
    o.add(TELE, 0.0)
    assert [r.key for r in o.changes()] == [RXX, TELE]
    assert o.changes() == []
    o.due(0.0, limit=1)
    o.succeeded(RXX, 1.0)
    assert o.changes() == [o.record(RXX)]


def test_generic_over_any_hashable_key() -> None:
    o: Outbox[tuple[str, str]] = Outbox(backoff=Backoff(base=1.0, factor=3.0, cap=10.0))
    o.add(("m", "org"), 0.0)
    o.due(0.0)
    o.failed(("m", "org"), 0.0)
    assert o.next_due() == 1.0


def test_delivery_key_checks_the_org() -> None:
    with pytest.raises(SchemaError):
        DeliveryKey(DeliveryKind.RECALL, M1, "not an org")
    assert sorted([TELE, RECEIPT, RXX]) == [RXX, TELE, RECEIPT]


def test_bad_parameters() -> None:
    with pytest.raises(LocalProtocolError):
        Outbox(attempt_timeout=0)
    with pytest.raises(LocalProtocolError):
        Outbox(max_attempts=0)


ops = st.lists(
    st.tuples(
        st.sampled_from(["add", "due", "ok", "fail", "fail-permanent", "wake", "retry", "restart"]),
        st.sampled_from([RXX, TELE, RECEIPT]),
        st.sampled_from([0.0, 0.5, 2.0, 30.0, 400.0]),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(ops)
def test_any_sequence_keeps_the_state_machine_sound(steps: list[tuple[str, DeliveryKey, float]]) -> None:
    o = AnnounceOutbox(attempt_timeout=100.0)
    now = 0.0
    for op, key, dt in steps:
        now += dt
        before = o.record(key)
        if op == "add":
            o.add(key, now)
        elif op == "due":
            for k in o.due(now):
                assert o.record(k).state is DeliveryState.ATTEMPTING  # type: ignore[union-attr]
        elif op == "ok":
            o.succeeded(key, now)
        elif op in ("fail", "fail-permanent"):
            o.failed(key, now, permanent=op == "fail-permanent")
        elif op == "wake":
            o.wake([key], now)
        elif op == "retry":
            o.retry(key, now)
        else:
            o = AnnounceOutbox.restore(o.snapshot(), attempt_timeout=100.0)
        after = o.record(key)
        if before is not None and before.state is DeliveryState.DELIVERED:
            assert after == before, "a delivered key never changes"
        if after is not None and after.state is DeliveryState.PENDING and before is not None and op == "fail":
            if before.state is DeliveryState.ATTEMPTING:
                assert after.next_attempt_at == now + Backoff().delay(after.attempts)
        for record in o.snapshot():
            assert record.attempts >= 0
            if record.state is DeliveryState.ATTEMPTING:
                assert record.next_attempt_at == record.updated_at + 100.0
    # Whatever happened, a restart changes nothing but interrupted attempts.
    restored = AnnounceOutbox.restore(o.snapshot(), attempt_timeout=100.0)
    for record in o.snapshot():
        again = restored.record(record.key)
        assert again is not None
        if record.state is DeliveryState.ATTEMPTING:
            assert again.state is DeliveryState.PENDING and again.next_attempt_at <= now
        else:
            assert again == record
