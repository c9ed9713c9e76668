"""A study request's states on both sides (pure: bytes, the roster and `now` in; what happened and the new
state out).

`receive_request` and `receive_response` take a delivered frame's payload and say what it is (a verified
request for this org, from the peer that signed it; a verified response from the holder peer that signed it)
or raise the error to refuse it with; `advance` and `apply_response` move the state:

    pending --approve--> approved   (the shares made; their manifests in the signed response)
    pending --decline--> declined   (with a reason)
    pending --expire---> expired    (its expires_at passed with nobody deciding)

Every other move is refused: a final state never changes again. The holder drives `advance` when a user
(or its policy) decides and when the expiry sweep runs; the requester applies the holder's signed responses
with `apply_response`, which also checks the response answers this request (same ID, same orgs) and came
from the org that was asked: a response for someone else's request, or from another org, changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from protocol.certificate import Certificate
from protocol.document import DEFAULT_SKEW, Signed, open_document
from protocol.errors import LocalProtocolError, RemoteProtocolError, WrongOrganisationError
from protocol.request_messages import decode_request_delivery, decode_response_delivery
from protocol.roster import Roster
from protocol.study_request import (
    RequestResponse,
    RequestState,
    StudyRequest,
    verify_request,
    verify_response,
)


class RequestEvent(str, Enum):
    APPROVE = "approve"
    DECLINE = "decline"
    EXPIRE = "expire"


_MOVES: dict[tuple[RequestState, RequestEvent], RequestState] = {
    (RequestState.PENDING, RequestEvent.APPROVE): RequestState.APPROVED,
    (RequestState.PENDING, RequestEvent.DECLINE): RequestState.DECLINED,
    (RequestState.PENDING, RequestEvent.EXPIRE): RequestState.EXPIRED,
}

_EVENT_OF: dict[RequestState, RequestEvent] = {
    RequestState.APPROVED: RequestEvent.APPROVE,
    RequestState.DECLINED: RequestEvent.DECLINE,
    RequestState.EXPIRED: RequestEvent.EXPIRE,
}


def advance(state: RequestState, event: RequestEvent) -> RequestState:
    """The state after `event`, or LocalProtocolError when the request cannot move so (already decided)."""
    new = _MOVES.get((state, event))
    if new is None:
        raise LocalProtocolError(f"a {state.value} request cannot {event.value}")
    return new


def expired(state: RequestState, request: StudyRequest, now: float) -> bool:
    """Whether the expiry sweep moves this request to expired now."""
    return state is RequestState.PENDING and request.expires_at < now


def apply_response(state: RequestState, request: StudyRequest, response: RequestResponse) -> RequestState:
    """The requester's state after the holder's (verified) response; RemoteProtocolError when the response
    does not answer this request or makes a move the state machine refuses, WrongOrganisationError when it
    comes from an org other than the one asked."""
    if response.request_id != request.request_id or response.requester_org != request.requester_org:
        raise RemoteProtocolError("response does not answer this request")
    if response.holder_org != request.holder_org:
        raise WrongOrganisationError(f"{response.holder_org} answered a request made to {request.holder_org}")
    if state is response.state:
        return state  # a retried delivery of the same answer
    try:
        return advance(state, _EVENT_OF[response.state])
    except LocalProtocolError as exc:
        raise RemoteProtocolError(f"response refused: {exc}") from None


# -- the bytes a peer delivers, in; what happened, out ----------------------------------------------------------


@dataclass(frozen=True)
class RequestReceived:
    """A study request the holder may store (pending): verified, from the peer that signed it, for this org."""

    request: Signed[StudyRequest]
    #: the request's signed bytes as delivered (stored as they are, never re-encoded)
    raw: bytes
    #: the signed certificate bytes it came with
    certificate: bytes
    requester: Certificate


@dataclass(frozen=True)
class ResponseReceived:
    """A verified response from the holder peer that signed it (apply it with `apply_response`)."""

    response: Signed[RequestResponse]
    raw: bytes


def receive_request(payload: bytes, *, peer_id: str, peer_org: str, own_org: str, roster: Roster, now: float,
                    skew: int = DEFAULT_SKEW) -> RequestReceived:
    """A study-request frame's payload from `peer_id` (of `peer_org`, as its hello certificate says), judged
    at `now`: RequestReceived, or the MeshError to refuse it with (nothing to store). Whether its ID was seen
    before is the store's question (RequestReplayError)."""
    delivery = decode_request_delivery(payload)
    signed = open_document(delivery.request, StudyRequest)
    cert = verify_request(signed, open_document(delivery.certificate, Certificate), roster, now, skew=skew)
    request = signed.document
    if request.requester_peer != peer_id or peer_org != request.requester_org:
        raise WrongOrganisationError("a request is delivered by the requester peer that signed it")
    if request.holder_org != own_org:
        raise WrongOrganisationError(f"request addressed to {request.holder_org}, not {own_org}")
    return RequestReceived(signed, delivery.request, delivery.certificate, cert)


def recheck_request(raw: bytes, certificate: bytes, roster: Roster, now: float, skew: int = DEFAULT_SKEW) -> None:
    """A stored request's signer judged again against the current roster before it is acted on: a node (or
    org) revoked since the request arrived raises the certificate error, and the request is not approved."""
    verify_request(open_document(raw, StudyRequest), open_document(certificate, Certificate), roster, now, skew=skew)


def receive_response(payload: bytes, *, peer_id: str, roster: Roster, now: float,
                     skew: int = DEFAULT_SKEW) -> ResponseReceived:
    """A request-response frame's payload from `peer_id`: the verified response, delivered by the holder peer
    that signed it (apply it to the request it names with `apply_response`), or the MeshError to refuse it."""
    delivery = decode_response_delivery(payload)
    signed = open_document(delivery.response, RequestResponse)
    verify_response(signed, open_document(delivery.certificate, Certificate), roster, now, skew=skew)
    if signed.document.holder_peer != peer_id:
        raise WrongOrganisationError("a response is delivered by the holder peer that signed it")
    return ResponseReceived(signed, delivery.response)
