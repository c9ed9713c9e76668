"""Hostile study requests and prior queries over real libp2p against a real node process (the request
protocols are served past the node's gate, with their frame limits, exactly as the exchange protocols are).

Org RXH (certified, never a holder's friend) plays the attacker from this process (tests/adversary/hostile.py);
B (RJ1) holds a study and answers prior queries from RGT only."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator

import pytest
from libp2p.peer.id import ID

from common.p2p.streams import request
from meshnode.demo.mesh import MeshDemo
from meshnode.demo.workspace import Workspace
from protocol.errors import LimitError, WrongOrganisationError
from protocol.exchange_messages import UNAUTHORISED, Ack, Hello, Refused, decode_ack_reply
from protocol.manifest import Priority, Purpose
from protocol.request_messages import (
    PRIOR_QUERY_PROTOCOL,
    REQUEST_LIMITS,
    STUDY_REQUEST_PROTOCOL,
    PriorQuery,
    RequestDelivery,
    decode_prior_reply,
    encode_delivery,
    encode_prior_query,
)
from protocol.study_request import StudyRequest
from tests.adversary.hostile import EXCHANGE_TIMEOUT, SECURITY_ALERT, STREAM_ENDED, Client, client_for, in_thread

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NHS = "9434765919"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshDemo]:
    demo = MeshDemo(Workspace(tmp_path_factory.mktemp("requests")))
    try:
        nodes = demo.setup([("b", "RJ1", "Org B")], start=False)
        with open(nodes["b"].home / "node.toml", "a", encoding="utf-8") as f:
            f.write('\n[prior_query]\nallow = ["RGT"]\n')
        demo.start(nodes["b"])
        demo.identity.add_node("x", "RXH", "Royal Example Hospital")  # the attacker: certified, never started
        yield demo
    finally:
        demo.close()


async def call(client: Client, peer: ID, protocol_id: str, payload: bytes, *, max_request: int | None = None) -> bytes:
    limits = REQUEST_LIMITS[protocol_id]
    return await request(client.host, peer, protocol_id, payload, max_request=max_request or limits.request,
                         max_response=limits.response, timeout=EXCHANGE_TIMEOUT)


def signed(client: Client, **kw: object) -> bytes:
    now = int(time.time())
    values: dict[str, object] = dict(
        request_id=secrets.token_bytes(16), requester_org=client.org, requester_peer=client.peer_id,
        holder_org="RJ1", nhs_number=NHS, patient_id="", date_from="", date_to="", modality="", reason="MDT",
        priority=Priority.URGENT, purpose=Purpose.CARE, requested_by="user:mallory", created_at=now,
        expires_at=now + 3600)
    values.update(kw)
    return StudyRequest(**values).sign(client.key).encode()  # type: ignore[arg-type]


async def test_hostile_requests_over_libp2p_are_refused_and_store_nothing(mesh: MeshDemo) -> None:
    b = mesh.node("b")
    async with client_for(mesh.node("x")) as x:
        peer = await x.connect(b)
        cert = x.certificate.encode()
        # before hello: refused unread, whatever it says
        raw = await call(x, peer, STUDY_REQUEST_PROTOCOL, encode_delivery(RequestDelivery(signed(x), cert)))
        assert decode_ack_reply(raw) == UNAUTHORISED
        assert isinstance(await x.hello(peer), Hello)
        # a request claiming to come from another organisation
        raw = await call(x, peer, STUDY_REQUEST_PROTOCOL,
                         encode_delivery(RequestDelivery(signed(x, requester_org="RGT"), cert)))
        reply = decode_ack_reply(raw)
        assert isinstance(reply, Refused) and reply.code == WrongOrganisationError.code
        # a frame over the protocol's maximum: refused from its length prefix (or the stream is reset)
        huge = encode_delivery(RequestDelivery(b"x" * REQUEST_LIMITS[STUDY_REQUEST_PROTOCOL].request, cert))
        try:
            reply = decode_ack_reply(await call(x, peer, STUDY_REQUEST_PROTOCOL, huge, max_request=len(huge)))
            assert isinstance(reply, Refused) and reply.code == LimitError.code
        except STREAM_ENDED:
            pass
        # a prior query from an org the holder does not name
        raw = await call(x, peer, PRIOR_QUERY_PROTOCOL, encode_prior_query(PriorQuery(NHS)))
        assert decode_prior_reply(raw) == UNAUTHORISED
        # an honest request is taken once; its replay is refused
        honest = encode_delivery(RequestDelivery(signed(x), cert))
        assert decode_ack_reply(await call(x, peer, STUDY_REQUEST_PROTOCOL, honest)) == Ack()
        replay = decode_ack_reply(await call(x, peer, STUDY_REQUEST_PROTOCOL, honest))
        assert isinstance(replay, Refused) and replay.code == 506
    incoming = await in_thread(mesh.cli, b, "request", "list", "--direction", "incoming")
    assert [(r["requester_org"], r["requested_by"]) for r in incoming] == [("RXH", "user:mallory")]
    audit = await in_thread(mesh.audit, b)
    refused = [e for e in audit if e["action"] == "study-request-refused" and e["actor"] == x.peer_id]
    assert len(refused) == 2 and all(e["event_code"] == SECURITY_ALERT for e in refused)
    assert [e for e in audit if e["action"] == "prior-query-refused" and e["actor"] == x.peer_id]
