"""A study request's states on both sides (pure: the request, the response and `now` in; the new state out).

    pending --approve--> approved   (the shares made; their manifests in the signed response)
    pending --decline--> declined   (with a reason)
    pending --expire---> expired    (its expires_at passed with nobody deciding)

Every other move is refused: a final state never changes again. The holder drives `advance` when a user
(or its policy) decides and when the expiry sweep runs; the requester applies the holder's signed responses
with `apply_response`, which also checks the response answers this request (same ID, same orgs) and came
from the org that was asked: a response for someone else's request, or from another org, changes nothing.
"""

from __future__ import annotations

from enum import Enum

from protocol.errors import LocalProtocolError, RemoteProtocolError, WrongOrganisationError
from protocol.study_request import RequestResponse, RequestState, StudyRequest


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
