"""What the HTTP listener's handlers share on top of Starlette: bounded bodies, errors, responses.

Starlette (on trio through anyio) routes and parses; this adds what the node
needs beyond it: a request body read with a size cap (a declared length over
the cap is refused before any of it is read), a bounded query and form parser,
the JSON error answer, the principal and route name a request carries, and a
response whose streamed body is written by a producer that may run its own
tasks (WADO-RS reads ahead while it sends).
"""

from __future__ import annotations

import ipaddress
import json
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import trio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Send

from meshnode.asgi import ClosingResponse
from meshnode.web.auth import Principal

SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]
#: how long a refused request's leftover body may take to arrive before its connection is closed instead
DRAIN_TIMEOUT_S = 5.0
_PRINCIPAL = "meshnode.principal"
_ROUTE = "meshnode.route"
_BODY_DONE = "meshnode.body_done"
_QUERY = "meshnode.query"

Write = Callable[[bytes], Awaitable[None]]


class HttpError(Exception):
    """Ends a request with this status and a short explanation (JSON)."""

    def __init__(self, status: int, message: str, *, headers: Mapping[str, str] | None = None, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})
        self.code = code or {400: "bad-request", 401: "unauthorised", 403: "forbidden", 404: "not-found",
                             405: "method-not-allowed", 406: "not-acceptable", 409: "conflict",
                             411: "length-required", 413: "too-large", 415: "unsupported-media-type",
                             503: "unavailable"}.get(status, "error")


def principal(request: Request) -> Principal | None:
    value = request.scope.get(_PRINCIPAL)
    return value if isinstance(value, Principal) else None


def set_principal(request: Request, value: Principal | None) -> None:
    request.scope[_PRINCIPAL] = value


def route_name(request: Request) -> str:
    return str(request.scope.get(_ROUTE, ""))


def set_route_name(request: Request, name: str) -> None:
    request.scope[_ROUTE] = name


def client(request: Request) -> str:
    """The client's address: the TCP peer's, or behind a trusted proxy the one it reported (see
    forwarded_client; WebApp puts it into the request's scope before any route runs)."""
    return request.client.host if request.client else "unknown"


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: X-Forwarded-For hops looked at, at most (a longer header: the left-most are not read)
MAX_FORWARDED_HOPS = 32


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1:text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address, proxies: Sequence[Network]) -> bool:
    return any(address.version == net.version and address in net for net in proxies)


def forwarded_client(peer: str, forwarded_for: Sequence[str], proxies: Sequence[Network]) -> str:
    """The client address of a request from TCP peer `peer` with these X-Forwarded-For header values
    ([http] trusted_proxies): only when the peer is a trusted proxy, the right-most hop that is not a trusted
    proxy itself (the hops left of it were written by the client: anyone can claim any address there); a hop
    that is not an address ends the walk at the last trusted one. Otherwise the peer."""
    address = _address(peer)
    if not proxies or address is None or not _trusted(address, proxies):
        return peer
    hops = [h for value in forwarded_for for h in value.split(",")][-MAX_FORWARDED_HOPS:]
    current = str(address)
    for hop in reversed(hops):
        found = _address(hop)
        if found is None:
            return current
        current = str(found)
        if not _trusted(found, proxies):
            return current
    return current


def query(request: Request) -> dict[str, list[str]]:
    """The query string, at most 200 fields (Starlette's QueryParams has no cap)."""
    cached = request.scope.get(_QUERY)
    if cached is None:
        raw = request.scope.get("query_string", b"").decode("latin-1")
        try:
            cached = urllib.parse.parse_qs(raw, keep_blank_values=True, max_num_fields=200)
        except ValueError as exc:
            raise HttpError(400, f"bad query string: {exc}") from None
        request.scope[_QUERY] = cached
    return dict(cached)


def is_number(text: str, most_digits: int = 18) -> bool:
    """`text` is a non-negative integer written in ASCII digits (str.isdigit alone also accepts '²' and other
    digits int() refuses), short enough for int() (which refuses over 4300 digits) and for SQLite."""
    return 0 < len(text) <= most_digits and text.isascii() and text.isdigit()


def content_length(request: Request) -> int | None:
    value = request.headers.get("content-length", "")
    if not value:
        return None
    if not is_number(value):
        raise HttpError(400, "Content-Length must be a number")
    return int(value)


async def body_chunks(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The body as it arrives; HttpError(413) before reading if its declared length exceeds `limit`, and as
    soon as what arrived would; ClientDisconnect if the client goes away."""
    declared = content_length(request)
    if declared is not None and declared > limit:
        raise HttpError(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HttpError(413, f"request body exceeds the limit of {limit} bytes")
        if chunk:
            yield chunk
    request.scope[_BODY_DONE] = True


async def body(request: Request, limit: int) -> bytes:
    return b"".join([c async for c in body_chunks(request, limit)])


async def json_object(request: Request, limit: int) -> dict[str, Any]:
    """A JSON object body of at most `limit` bytes (an empty body is {}); HttpError(400) otherwise."""
    raw = await body(request, limit)
    try:
        value = json.loads(raw or b"{}")
    except ValueError:
        raise HttpError(400, "the body is not JSON") from None
    if not isinstance(value, dict):
        raise HttpError(400, "the body must be a JSON object")
    return value


async def form(request: Request, limit: int = 16384) -> dict[str, str]:
    """An application/x-www-form-urlencoded or JSON object body, as strings."""
    raw = await body(request, limit)
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            value = json.loads(raw or b"{}")
        except ValueError:
            raise HttpError(400, "body is not JSON") from None
        if not isinstance(value, dict):
            raise HttpError(400, "body must be a JSON object")
        return {str(k): str(v) for k, v in value.items()}
    try:
        parsed = urllib.parse.parse_qs(raw.decode("utf-8"), keep_blank_values=True, max_num_fields=50)
    except (UnicodeDecodeError, ValueError):
        raise HttpError(400, "bad form body") from None
    return {k: v[0] for k, v in parsed.items()}


async def drain(request: Request, most: int) -> bool:
    """Read and drop what is left of a refused request's body (so a client that sends all before it reads
    sees the answer), up to `most` bytes and DRAIN_TIMEOUT_S; False if more is left (close the connection)."""
    if request.scope.get(_BODY_DONE):
        return True
    try:
        declared = content_length(request)
    except HttpError:
        return False
    if declared == 0 or (declared is None and request.method in ("GET", "HEAD")):
        return True
    if declared is not None and declared > most:
        return False
    dropped = 0
    with trio.move_on_after(DRAIN_TIMEOUT_S):
        try:
            async for chunk in request.stream():
                dropped += len(chunk)
                if dropped > most:
                    return False
        except ClientDisconnect:
            pass
        except RuntimeError:  # Starlette's "Stream consumed": nothing is left
            pass
        return True
    return False


def bytes_response(status: int, data: bytes, content_type: str, headers: Mapping[str, str] | None = None) -> Response:
    return Response(data, status, headers=headers, media_type=content_type)


def json_response(status: int, value: object, content_type: str = "application/json",
                  headers: Mapping[str, str] | None = None) -> Response:
    return Response(json.dumps(value, sort_keys=True).encode(), status, headers=headers, media_type=content_type)


def error_response(error: HttpError, close: bool = False) -> Response:
    """The JSON error; `close`: the request's body was not read to its end, so the connection closes."""
    data = json.dumps({"error": error.code, "message": error.message}, sort_keys=True).encode()
    if close:
        return ClosingResponse(data, error.status, error.headers, "application/json")
    return Response(data, error.status, headers=error.headers, media_type="application/json")


class ProducedResponse(StreamingResponse):
    """A streamed response whose body `produce(write)` writes (it may run its own tasks, which an async
    generator consumed by Starlette may not); Starlette stops it when the client disconnects."""

    def __init__(self, produce: Callable[[Write], Awaitable[None]], status_code: int = 200,
                 headers: Mapping[str, str] | None = None, media_type: str | None = None) -> None:
        self.produce = produce
        self.status_code = status_code
        self.media_type = media_type
        self.background = None
        self.init_headers(headers)

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})

        async def write(data: bytes) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": True})

        await self.produce(write)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
