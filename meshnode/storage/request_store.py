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

from protocol.study_request import RequestState

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
    def save_request(self, row: RequestRow) -> bool:
        """Insert a new request; False (nothing written) when its (ID, direction) is already stored."""
        ...

    def request(self, request_id: str, direction: str) -> RequestRow | None: ...

    def delete_request(self, request_id: str, direction: str) -> None:
        """Forget a request (an outgoing one its holder never took)."""
        ...

    def requests(self, direction: str | None = None, state: RequestState | None = None,
                 limit: int = 500) -> list[RequestRow]:
        """Newest first."""
        ...

    def update_request(self, row: RequestRow, expected: RequestState) -> bool:
        """Replace the row only while it is in state `expected` (compare-and-set); True when replaced."""
        ...

    def set_response_delivered(self, request_id: str, delivered: bool) -> None: ...

    def undelivered_responses(self) -> list[RequestRow]:
        """Incoming requests whose latest response has not reached the requester yet."""
        ...


class MemoryRequestStore:
    def __init__(self) -> None:
        super().__init__()
        self._requests: dict[tuple[str, str], RequestRow] = {}

    def save_request(self, row: RequestRow) -> bool:
        key = (row.request_id, row.direction)
        if key in self._requests:
            return False
        self._requests[key] = replace(row)
        return True

    def request(self, request_id: str, direction: str) -> RequestRow | None:
        return self._requests.get((request_id, direction))

    def delete_request(self, request_id: str, direction: str) -> None:
        self._requests.pop((request_id, direction), None)

    def requests(self, direction: str | None = None, state: RequestState | None = None,
                 limit: int = 500) -> list[RequestRow]:
        rows = [r for r in self._requests.values()
                if (direction is None or r.direction == direction) and (state is None or r.state is state)]
        return sorted(rows, key=lambda r: (-r.created_ms, r.request_id))[:limit]

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

    def undelivered_responses(self) -> list[RequestRow]:
        return [r for r in self._requests.values()
                if r.direction == INCOMING and r.response and not r.response_delivered]
