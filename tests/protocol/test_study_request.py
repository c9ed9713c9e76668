"""Study requests and their responses (protocol.study_request), their state machine
(protocol.request_lifecycle), the holder's policy (protocol.request_policy) and the request protocols'
messages (protocol.request_messages): round trips, every refusal the bytes alone can prove, every state x
event."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import cbor
from protocol.cid import CID
from protocol.document import open_document
from protocol.errors import (
    DecodeError,
    DocumentError,
    DocumentExpiredError,
    LimitError,
    LocalProtocolError,
    MeshError,
    RemoteProtocolError,
    SchemaError,
    SignatureError,
    WrongOrganisationError,
)
from protocol.manifest import Priority, Purpose
from protocol.request_lifecycle import RequestEvent, advance, apply_response, expired
from protocol.request_messages import (
    MAX_PRIOR_STUDIES,
    PriorQuery,
    PriorReply,
    PriorStudy,
    RequestDelivery,
    decode_prior_query,
    decode_prior_reply,
    decode_request_delivery,
    encode_delivery,
    encode_prior_query,
    encode_prior_reply,
)
from protocol.request_policy import PolicyAction, RequestRule, prior_query_allowed, request_action
from protocol.study_request import (
    MAX_LIFETIME,
    RequestResponse,
    RequestState,
    StudyRequest,
    verify_request,
    verify_response,
)
from tests.protocol.factories import DAY, NODE_A, NODE_B, NOW, make_roster, sign_certificate

NHS = "9434765919"  # a valid NHS number (modulus 11)


def make_request(**kw: object) -> StudyRequest:
    values: dict[str, object] = dict(
        request_id=bytes(range(16)), requester_org="RGT", requester_peer=NODE_A.peer_id, holder_org="RXX",
        nhs_number=NHS, patient_id="", date_from="20250101", date_to="20251231", modality="CT",
        reason="stroke follow-up", priority=Priority.URGENT, purpose=Purpose.CARE, requested_by="user:alice",
        created_at=NOW, expires_at=NOW + DAY)
    values.update(kw)
    return StudyRequest(**values)  # type: ignore[arg-type]


def make_response(**kw: object) -> RequestResponse:
    values: dict[str, object] = dict(
        request_id=bytes(range(16)), requester_org="RGT", holder_org="RXX", holder_peer=NODE_B.peer_id,
        state=RequestState.APPROVED, manifests=(CID.of(b"m1"),), reason="", decided_by="user:bob", at=NOW + 60)
    values.update(kw)
    return RequestResponse(**values)  # type: ignore[arg-type]


def test_a_request_round_trips_and_its_signature_names_its_label() -> None:
    signed = make_request().sign(NODE_A)
    opened = open_document(signed.encode(), StudyRequest)
    assert opened.document == make_request()
    assert opened.envelope.type == "dicom-mesh/study-request/v1"


def test_a_request_cannot_be_opened_as_a_response_or_the_other_way() -> None:
    with pytest.raises(MeshError):
        open_document(make_request().sign(NODE_A).encode(), RequestResponse)
    with pytest.raises(MeshError):
        open_document(make_response().sign(NODE_B).encode(), StudyRequest)


def test_a_request_signed_by_another_peer_than_it_names_is_refused() -> None:
    with pytest.raises(DocumentError):
        make_request().sign(NODE_B)


def test_a_flipped_byte_breaks_the_signature() -> None:
    raw = bytearray(make_request().sign(NODE_A).encode())
    raw[-3] ^= 1
    with pytest.raises((SignatureError, DecodeError)):
        open_document(bytes(raw), StudyRequest)


@pytest.mark.parametrize("change", [
    {"nhs_number": "9434765918"},  # wrong check digit
    {"nhs_number": "", "patient_id": ""},  # names no patient
    {"date_from": "2025-01-01"},
    {"date_from": "20251231", "date_to": "20250101"},
    {"modality": "ct;drop"},
    {"reason": " "},
    {"requested_by": ""},
    {"holder_org": "RGT"},  # asks itself
    {"expires_at": NOW},
    {"expires_at": NOW + MAX_LIFETIME + 1},
    {"request_id": b"short"},
])
def test_a_malformed_request_is_refused(change: dict[str, object]) -> None:
    with pytest.raises(SchemaError):
        make_request(**change)


def test_unknown_fields_and_oversized_reasons_are_refused_on_decode() -> None:
    body = make_request().to_body()
    with pytest.raises(SchemaError):
        StudyRequest.from_body({**body, "extra": 1})
    with pytest.raises(LimitError):
        StudyRequest.from_body({**body, "reason": "x" * 1025})


def test_a_response_must_fit_its_state() -> None:
    with pytest.raises(SchemaError):
        make_response(state=RequestState.PENDING)
    with pytest.raises(SchemaError):
        make_response(manifests=())  # an approval names its shares
    with pytest.raises(SchemaError):
        make_response(state=RequestState.DECLINED, reason="")  # a decline says why
    with pytest.raises(SchemaError):
        make_response(state=RequestState.DECLINED, reason="no", manifests=(CID.of(b"m"),))
    assert open_document(make_response().sign(NODE_B).encode(), RequestResponse).document == make_response()


def test_verify_request_checks_org_expiry_and_date() -> None:
    roster = make_roster()
    cert_a = sign_certificate(NODE_A, org="RGT")
    signed = make_request().sign(NODE_A)
    assert verify_request(signed, cert_a, roster, NOW + 10).org_code == "RGT"
    with pytest.raises(DocumentExpiredError):
        verify_request(signed, cert_a, roster, NOW + 2 * DAY)
    with pytest.raises(DocumentError):
        verify_request(signed, cert_a, roster, NOW - 3600)  # made in the future
    # a node of another org naming RGT as the requester
    with pytest.raises(WrongOrganisationError):
        verify_request(signed, sign_certificate(NODE_A, org="TELE"), roster, NOW + 10)
    with pytest.raises(MeshError):  # revoked
        verify_request(signed, cert_a, make_roster(revoked=[cert_a.document.serial]), NOW + 10)
    response = make_response().sign(NODE_B)
    with pytest.raises(WrongOrganisationError):
        verify_response(response, sign_certificate(NODE_B, org="TELE", serial_no=2), roster, NOW + 100)


@pytest.mark.parametrize("state", list(RequestState))
@pytest.mark.parametrize("event", list(RequestEvent))
def test_every_state_and_event(state: RequestState, event: RequestEvent) -> None:
    if state is RequestState.PENDING:
        assert advance(state, event).value == {"approve": "approved", "decline": "declined",
                                               "expire": "expired"}[event.value]
    else:
        with pytest.raises(LocalProtocolError):
            advance(state, event)


def test_expiry_only_moves_a_pending_request_past_its_expiry() -> None:
    request = make_request()
    assert not expired(RequestState.PENDING, request, request.expires_at)
    assert expired(RequestState.PENDING, request, request.expires_at + 1)
    assert not expired(RequestState.APPROVED, request, request.expires_at + 1)


def test_apply_response_checks_it_answers_this_request_from_the_org_asked() -> None:
    request = make_request()
    assert apply_response(RequestState.PENDING, request, make_response()) is RequestState.APPROVED
    assert apply_response(RequestState.APPROVED, request, make_response()) is RequestState.APPROVED  # again
    with pytest.raises(RemoteProtocolError):
        apply_response(RequestState.PENDING, request, make_response(request_id=bytes(16)))
    with pytest.raises(WrongOrganisationError):
        apply_response(RequestState.PENDING, request, make_response(holder_org="TELE"))
    with pytest.raises(RemoteProtocolError):  # a decided request never changes again
        apply_response(RequestState.DECLINED, request, make_response())


def test_the_first_matching_policy_rule_decides_and_the_default_queues() -> None:
    stroke = RequestRule(frozenset({"RGT", "RJ1"}), PolicyAction.AUTO_APPROVE,
                         frozenset({Priority.URGENT, Priority.STAT}), frozenset({Purpose.CARE}))
    nobody = RequestRule(frozenset({"*"}), PolicyAction.REFUSE, purposes=frozenset({Purpose.RESEARCH}))
    rules = [stroke, nobody]
    assert request_action(rules, make_request()) == (PolicyAction.AUTO_APPROVE, 0)
    assert request_action(rules, make_request(priority=Priority.ROUTINE)) == (PolicyAction.QUEUE, None)
    assert request_action(rules, make_request(purpose=Purpose.RESEARCH)) == (PolicyAction.REFUSE, 1)
    assert request_action([], make_request()) == (PolicyAction.QUEUE, None)
    assert not prior_query_allowed([], "RGT")
    assert prior_query_allowed(["RGT"], "RGT") and not prior_query_allowed(["RGT"], "TELE")
    assert prior_query_allowed(["*"], "TELE")


def test_messages_round_trip_and_refuse_oversized_documents() -> None:
    delivery = RequestDelivery(b"r" * 100, b"c" * 10)
    assert decode_request_delivery(encode_delivery(delivery)) == delivery
    with pytest.raises(LimitError):
        decode_request_delivery(encode_delivery(RequestDelivery(b"r" * (StudyRequest.MAX_BYTES + 1), b"c")))
    assert decode_prior_query(encode_prior_query(PriorQuery(NHS))) == PriorQuery(NHS)
    with pytest.raises(SchemaError):
        decode_prior_query(cbor.encode({"nhs_number": "1234567890"}))
    reply = PriorReply((PriorStudy("1.2.3", "20250101", ("CT",), "CT HEAD", 2, 40),), truncated=True)
    assert decode_prior_reply(encode_prior_reply(reply)) == reply
    too_many = cbor.encode({"ok": True, "truncated": False, "studies": [
        {"study": "1.2.3", "date": "", "modalities": [], "description": "", "series": 0, "instances": 0}
    ] * (MAX_PRIOR_STUDIES + 1)})
    with pytest.raises(LimitError):
        decode_prior_reply(too_many)
    with pytest.raises(SchemaError):  # a reply never carries more than study-level metadata
        decode_prior_reply(cbor.encode({"ok": True, "truncated": False, "studies": [
            {"study": "1.2.3", "date": "", "modalities": [], "description": "", "series": 0, "instances": 0,
             "patient_name": "DOE^JOHN"}]}))


@given(st.text(max_size=64), st.sampled_from(list(Priority)), st.sampled_from(list(Purpose)))
def test_any_valid_request_round_trips_canonically(patient: str, priority: Priority, purpose: Purpose) -> None:
    try:
        request = make_request(patient_id=patient, priority=priority, purpose=purpose)
    except SchemaError:
        return
    try:
        signed = request.sign(NODE_A)
    except MeshError:
        return  # e.g. control characters its own decoder refuses
    assert open_document(signed.encode(), StudyRequest).document == request
    assert dataclasses.replace(request) == request


def test_the_largest_messages_fit_their_frames_and_the_spec_states_the_limits() -> None:
    from pathlib import Path

    from protocol.exchange_messages import MAX_CERT_BYTES
    from protocol.request_messages import REQUEST_LIMITS, PRIOR_QUERY_PROTOCOL, STUDY_REQUEST_PROTOCOL

    widest = PriorStudy("1." + "2" * 62, "20250101", tuple(f"M{i:02d}" * 4 for i in range(16)), "D" * 64,
                        1 << 20, 1 << 30)
    reply = encode_prior_reply(PriorReply((widest,) * MAX_PRIOR_STUDIES, truncated=True))
    assert len(reply) <= REQUEST_LIMITS[PRIOR_QUERY_PROTOCOL].response
    assert decode_prior_reply(reply) == PriorReply((widest,) * MAX_PRIOR_STUDIES, truncated=True)
    biggest = encode_delivery(RequestDelivery(b"r" * StudyRequest.MAX_BYTES, b"c" * MAX_CERT_BYTES))
    assert len(biggest) <= REQUEST_LIMITS[STUDY_REQUEST_PROTOCOL].request
    spec = (Path(__file__).resolve().parents[2] / "docs" / "protocol" / "requests.md").read_text(encoding="utf-8")
    for protocol_id, limits in REQUEST_LIMITS.items():
        row = next(line for line in spec.splitlines() if line.startswith(f"| `{protocol_id}` |"))
        assert f"{limits.request:,} bytes" in row and f"{limits.response:,} bytes" in row


def test_receive_request_and_response_from_bytes() -> None:
    """The pure edge: a delivered payload, the roster and now in; a verified request or response out, or the
    error to refuse it with."""
    from protocol.request_lifecycle import receive_request, receive_response
    from protocol.request_messages import ResponseDelivery

    roster = make_roster()
    cert_a, cert_b = sign_certificate(NODE_A, org="RGT"), sign_certificate(NODE_B, org="RXX", serial_no=2)
    raw = make_request().sign(NODE_A).encode()
    payload = encode_delivery(RequestDelivery(raw, cert_a.encode()))
    got = receive_request(payload, peer_id=NODE_A.peer_id, peer_org="RGT", own_org="RXX", roster=roster, now=NOW + 10)
    assert got.raw == raw and got.request.document == make_request() and got.requester.org_code == "RGT"
    with pytest.raises(WrongOrganisationError):  # delivered by another peer than the one that signed it
        receive_request(payload, peer_id=NODE_B.peer_id, peer_org="RGT", own_org="RXX", roster=roster, now=NOW + 10)
    with pytest.raises(WrongOrganisationError):  # addressed to another org
        receive_request(payload, peer_id=NODE_A.peer_id, peer_org="RGT", own_org="TELE", roster=roster, now=NOW + 10)
    with pytest.raises(DocumentExpiredError):
        receive_request(payload, peer_id=NODE_A.peer_id, peer_org="RGT", own_org="RXX", roster=roster,
                        now=NOW + 2 * DAY)
    response = make_response().sign(NODE_B).encode()
    delivered = encode_delivery(ResponseDelivery(response, cert_b.encode()))
    assert receive_response(delivered, peer_id=NODE_B.peer_id, roster=roster, now=NOW + 100).raw == response
    with pytest.raises(WrongOrganisationError):
        receive_response(delivered, peer_id=NODE_A.peer_id, roster=roster, now=NOW + 100)
