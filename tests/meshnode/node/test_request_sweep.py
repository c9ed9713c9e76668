"""The request service's sweep (meshnode.node.requests.Requests.sweep), on trio's MockClock: a response that
could not reach the requester is delivered later (the decision is durable first), and a request nobody decided
expires at both ends; a decision on an expired request is refused."""

from __future__ import annotations

import pytest
import trio
from trio.testing import MockClock

from meshnode.node.requests import SWEEP_EVERY_S
from meshnode.storage.request_store import INCOMING, OUTGOING
from protocol.errors import LocalProtocolError
from protocol.study_request import RequestState
from tests.meshnode.node.harness import MemoryMesh
from tests.meshnode.node.request_harness import RequestMesh

PATIENT = "SYN0000001"


async def test_a_response_the_requester_missed_is_delivered_by_the_sweep(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    rm = RequestMesh(mesh)
    holder = rm.add(mesh.add("a", "RJ1", 50))
    requester = rm.add(mesh.add("r", "RGT", 51))
    row = await requester.requests.send("RJ1", patient_id=PATIENT, reason="MDT", requested_by="user:alice")
    del rm.nodes[requester.peer_id]  # the requesting node is down
    decided = await holder.requests.approve(row.request_id, [study], decided_by="user:bob")
    assert decided.state is RequestState.APPROVED and not decided.response_delivered
    assert len(holder.node.store.manifests("sent")) == 1  # the share is made and durable regardless
    assert requester.node.store.request(row.request_id, OUTGOING).state is RequestState.PENDING  # type: ignore[union-attr]
    await holder.requests.sweep()  # still down: stays undelivered
    assert holder.node.store.undelivered_responses()
    rm.nodes[requester.peer_id] = requester  # back
    await holder.requests.sweep()  # backing off from that peer: not tried again at once
    assert holder.node.store.undelivered_responses()
    await trio.sleep(SWEEP_EVERY_S)
    await holder.requests.sweep()
    assert holder.node.store.undelivered_responses() == []
    assert requester.node.store.request(row.request_id, OUTGOING).state is RequestState.APPROVED  # type: ignore[union-attr]


async def test_a_request_nobody_decides_expires_at_both_ends(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    rm = RequestMesh(mesh)
    holder = rm.add(mesh.add("a", "RJ1", 50))
    requester = rm.add(mesh.add("r", "RGT", 51))
    row = await requester.requests.send("RJ1", patient_id=PATIENT, reason="MDT", requested_by="user:alice",
                                        lifetime_s=600)
    await trio.sleep(601)
    with pytest.raises(LocalProtocolError, match="expired"):
        await holder.requests.approve(row.request_id, [study], decided_by="user:bob")
    assert holder.node.store.manifests("sent") == []  # nothing shared after the expiry
    assert holder.node.store.request(row.request_id, INCOMING).state is RequestState.EXPIRED  # type: ignore[union-attr]
    assert requester.node.store.request(row.request_id, OUTGOING).state is RequestState.EXPIRED  # type: ignore[union-attr]


async def test_the_sweep_expires_a_forgotten_request(autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    rm = RequestMesh(mesh)
    holder = rm.add(mesh.add("a", "RJ1", 50))
    requester = rm.add(mesh.add("r", "RGT", 51))
    row = await requester.requests.send("RJ1", patient_id=PATIENT, reason="MDT", requested_by="user:alice",
                                        lifetime_s=600)
    await holder.requests.sweep()
    assert holder.node.store.request(row.request_id, INCOMING).state is RequestState.PENDING  # type: ignore[union-attr]
    await trio.sleep(601)
    await holder.requests.sweep()
    mine = requester.node.store.request(row.request_id, OUTGOING)
    assert mine is not None and mine.state is RequestState.EXPIRED and mine.decided_by == "expiry"


async def test_a_response_the_requester_refuses_is_not_sent_forever(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    """The holder declines while the requester is down; the requester, still down after the expiry and its
    grace, records the request as expired unanswered; the late decline is then refused by the requester's
    state machine: recorded and audited at the holder, and not sent again."""
    from meshnode.node.requests import RESPONSE_GRACE_S

    rm = RequestMesh(mesh)
    holder = rm.add(mesh.add("a", "RJ1", 50))
    requester = rm.add(mesh.add("r", "RGT", 51))
    row = await requester.requests.send("RJ1", patient_id=PATIENT, reason="MDT", requested_by="user:alice",
                                        lifetime_s=600)
    del rm.nodes[requester.peer_id]  # down
    await holder.requests.decline(row.request_id, "not our patient", decided_by="user:bob")
    await trio.sleep(600 + RESPONSE_GRACE_S + 1)
    await requester.requests.sweep()
    assert requester.node.store.request(row.request_id, OUTGOING).state is RequestState.EXPIRED  # type: ignore[union-attr]
    rm.nodes[requester.peer_id] = requester  # back
    await holder.requests.sweep()
    assert holder.node.store.undelivered_responses() == []  # not sent again
    assert "request-response-not-taken" in [e.event.action for e in holder.node.store.audit_entries()]
    mine = requester.node.store.request(row.request_id, OUTGOING)
    assert mine is not None and mine.state is RequestState.EXPIRED


async def test_the_sweep_expires_every_overdue_request_however_many_are_pending(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    """More than one query's worth of pending requests that never expire must not hide the overdue ones
    (review 3 finding 2: the sweep read the newest 500 pending and never reached an older overdue one)."""
    from dataclasses import replace

    from meshnode.node.requests import SWEEP_BATCH
    rm = RequestMesh(mesh)
    holder = rm.add(mesh.add("a", "RJ1", 50))
    requester = rm.add(mesh.add("r", "RGT", 51))
    row = await requester.requests.send("RJ1", patient_id=PATIENT, reason="MDT", requested_by="user:alice",
                                        lifetime_s=600)
    incoming = holder.node.store.request(row.request_id, INCOMING)
    assert incoming is not None
    for i in range(SWEEP_BATCH + 10):  # newer, long-lived pending rows (as a flood from many orgs leaves)
        assert holder.node.store.save_request(replace(incoming, request_id=f"{i:032x}", requester_org=f"X{i:04d}",
                                                      created_ms=incoming.created_ms + 1000 + i,
                                                      expires_at=incoming.expires_at + 86400))
    await trio.sleep(601)
    await holder.requests.sweep()
    assert holder.node.store.request(row.request_id, INCOMING).state is RequestState.EXPIRED  # type: ignore[union-attr]
    assert requester.node.store.request(row.request_id, OUTGOING).state is RequestState.EXPIRED  # type: ignore[union-attr]


async def test_final_requests_are_purged_after_the_retention_period(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    rm = RequestMesh(mesh)
    holder = rm.add(mesh.add("a", "RJ1", 50))
    requester = rm.add(mesh.add("r", "RGT", 51))
    decided = await requester.requests.send("RJ1", patient_id=PATIENT, reason="MDT", requested_by="user:alice")
    await holder.requests.decline(decided.request_id, "not ours", decided_by="user:bob")
    waiting = await requester.requests.send("RJ1", patient_id=PATIENT, reason="MDT", requested_by="user:alice",
                                            lifetime_s=30 * 86400)
    await trio.sleep(89 * 86400)
    await holder.requests.sweep()
    assert holder.node.store.request(decided.request_id, INCOMING) is not None  # within 90 days: kept
    await trio.sleep(2 * 86400)
    await holder.requests.sweep()
    await requester.requests.sweep()
    assert holder.node.store.request(decided.request_id, INCOMING) is None
    assert requester.node.store.request(decided.request_id, OUTGOING) is None
    # the other one expired at the sweep on day 89: kept for 90 days from then; the audit keeps both
    assert holder.node.store.request(waiting.request_id, INCOMING).state is RequestState.EXPIRED  # type: ignore[union-attr]
    actions = [e.event.action for e in holder.node.store.audit_entries()]
    assert "study-request-declined" in actions and "study-request-expired" in actions


async def test_a_flood_of_requests_from_one_org_is_capped(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    """One org may have at most max_pending_per_org undecided requests at the holder: the excess is refused
    with its own error (602), stores nothing, and other orgs' requests still get in (review 3 finding 2)."""
    from meshnode.node.request_config import RequestConfig
    from protocol.errors import UnauthorisedError
    rm = RequestMesh(mesh)
    holder = rm.add(mesh.add("a", "RJ1", 50), RequestConfig(max_pending_per_org=3))
    requester = rm.add(mesh.add("r", "RGT", 51))
    other = rm.add(mesh.add("t", "RAJ", 52))
    sent = [await requester.requests.send("RJ1", patient_id=PATIENT, reason="MDT", requested_by="user:eve")
            for _ in range(3)]
    with pytest.raises(UnauthorisedError, match="too-many-pending-requests"):  # 602, rebuilt at the requester
        await requester.requests.send("RJ1", patient_id=PATIENT, reason="MDT", requested_by="user:eve")
    assert len(holder.node.store.requests(INCOMING)) == 3 and len(requester.node.store.requests(OUTGOING)) == 3
    assert await other.requests.send("RJ1", patient_id=PATIENT, reason="MDT", requested_by="user:carol")
    await holder.requests.decline(sent[0].request_id, "no", decided_by="user:bob")  # room again
    assert await requester.requests.send("RJ1", patient_id=PATIENT, reason="MDT", requested_by="user:eve")
