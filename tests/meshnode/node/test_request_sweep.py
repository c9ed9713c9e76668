"""The request service's sweep (meshnode.node.requests.Requests.sweep), on trio's MockClock: a response that
could not reach the requester is delivered later (the decision is durable first), and a request nobody decided
expires at both ends; a decision on an expired request is refused."""

from __future__ import annotations

import pytest
import trio
from trio.testing import MockClock

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
