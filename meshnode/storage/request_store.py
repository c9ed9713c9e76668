"""Study requests at both ends (protocol.study_request): what this node asked other organisations for
(`outgoing`) and what others asked it for (`incoming`), with each request's state, who decided, and the
signed documents themselves.

Part of MetadataStore (SQLite: sqlite_requests.py; memory: MemoryRequestStore below). Rows are keyed by
(request ID, direction); saving a request whose key exists is refused (a replay stores nothing), and a
decision is a compare-and-set on the state (of two users approving and declining at once, one wins).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

from protocol.errors import UnauthorisedError
from protocol.study_request import RequestState

class TooManyPendingRequestsError(UnauthorisedError):
    """The requesting org already has as many undecided requests here as the holder allows: refused."""

    code = 602
    name = "too-many-pending-requests"


#: a listing's page cursor: (created_ms, request_id) of the last row of the previous page
Cursor = tuple[int, str]

OUTGOING = "outgoing"
INCOMING = "incoming"
DIRECTIONS = (OUTGOING, INCOMING)


@dataclass(frozen=True)
class RequestRow:
    request_id: str  # 32 hex digits
    direction: str  # OUTGOING (this node asked) or INCOMING (this node is asked)
    requester_org: str
    holder_org: str
    state: RequestState
    #: the signed request, as it was signed
    raw: bytes
    #: the requester's certificate it came with (incoming), to answer it later
    certificate: bytes
    created_ms: int
    expires_at: int
    #: JSON list of the manifest IDs (text) of the shares an approval made
    manifests: str = "[]"
    reason: str = ""
    decided_by: str = ""
    updated_ms: int = 0
    #: the latest signed response (b"": none yet)
    response: bytes = b""
    #: incoming: the latest response reached the requester (outgoing: always true)
    response_delivered: bool = True


class RequestStore(Protocol):
    def save_request(self, row: RequestRow, max_pending_per_org: int = 0) -> bool:
        """Insert a new request; False (nothing written) when its (ID, direction) is already stored. With
        `max_pending_per_org`, an incoming request whose requester org already has that many pending incoming
        requests is refused (TooManyPendingRequestsError, nothing written), checked in the same transaction."""
        ...

    def request(self, request_id: str, direction: str) -> RequestRow | None: ...

    def delete_request(self, request_id: str, direction: str) -> None:
        """Forget a request (an outgoing one its holder never took)."""
        ...

    def requests(self, direction: str | None = None, state: RequestState | None = None,
                 limit: int = 500, before: Cursor | None = None) -> list[RequestRow]:
        """Newest first (created_ms, then request ID, descending); `before`: only rows after that cursor."""
        ...

    def expired_requests(self, direction: str, expires_before: int, limit: int = 500) -> list[RequestRow]:
        """Pending requests of `direction` whose expires_at is before `expires_before` (seconds), oldest
        expiry first: what the sweep expires, however many other requests are pending."""
        ...

    def purge_requests(self, updated_before_ms: int) -> int:
        """Delete final (decided or expired) requests last changed before `updated_before_ms` whose response,
        if any, has reached the requester; the number deleted (the audit log keeps their history)."""
        ...

    def update_request(self, row: RequestRow, expected: RequestState) -> bool:
        """Replace the row only while it is in state `expected` (compare-and-set); True when replaced."""
        ...

    def set_response_delivered(self, request_id: str, delivered: bool) -> None: ...

    def undelivered_responses(self, limit: int = 100) -> list[RequestRow]:
        """Incoming requests whose latest response has not reached the requester yet (least recently
        changed first, at most `limit`)."""
        ...


class MemoryRequestStore:
    def __init__(self) -> None:
        super().__init__()
        self._requests: dict[tuple[str, str], RequestRow] = {}

    def save_request(self, row: RequestRow, max_pending_per_org: int = 0) -> bool:
        key = (row.request_id, row.direction)
        if key in self._requests:
            return False
        if max_pending_per_org and row.direction == INCOMING and sum(
                1 for r in self._requests.values() if r.direction == INCOMING and r.state is RequestState.PENDING
                and r.requester_org == row.requester_org) >= max_pending_per_org:
            raise TooManyPendingRequestsError(f"{row.requester_org} has {max_pending_per_org} undecided requests "
                                              "here already; wait for them to be decided")
        self._requests[key] = replace(row)
        return True

    def request(self, request_id: str, direction: str) -> RequestRow | None:
        return self._requests.get((request_id, direction))

    def delete_request(self, request_id: str, direction: str) -> None:
        self._requests.pop((request_id, direction), None)

    def requests(self, direction: str | None = None, state: RequestState | None = None,
                 limit: int = 500, before: Cursor | None = None) -> list[RequestRow]:
        rows = [r for r in self._requests.values()
                if (direction is None or r.direction == direction) and (state is None or r.state is state)
                and (before is None or (r.created_ms, r.request_id) < before)]
        return sorted(rows, key=lambda r: (r.created_ms, r.request_id), reverse=True)[:limit]

    def expired_requests(self, direction: str, expires_before: int, limit: int = 500) -> list[RequestRow]:
        rows = [r for r in self._requests.values() if r.direction == direction
                and r.state is RequestState.PENDING and r.expires_at < expires_before]
        return sorted(rows, key=lambda r: (r.expires_at, r.request_id))[:limit]

    def purge_requests(self, updated_before_ms: int) -> int:
        gone = [k for k, r in self._requests.items() if r.state is not RequestState.PENDING
                and r.updated_ms < updated_before_ms and (r.direction == OUTGOING or r.response_delivered)]
        for k in gone:
            del self._requests[k]
        return len(gone)

    def update_request(self, row: RequestRow, expected: RequestState) -> bool:
        key = (row.request_id, row.direction)
        current = self._requests.get(key)
        if current is None or current.state is not expected:
            return False
        self._requests[key] = replace(row)
        return True

    def set_response_delivered(self, request_id: str, delivered: bool) -> None:
        key = (request_id, INCOMING)
        if key in self._requests:
            self._requests[key] = replace(self._requests[key], response_delivered=delivered)

    def undelivered_responses(self, limit: int = 100) -> list[RequestRow]:
        rows = [r for r in self._requests.values()
                if r.direction == INCOMING and r.response and not r.response_delivered]
        return sorted(rows, key=lambda r: (r.updated_ms, r.request_id))[:limit]
