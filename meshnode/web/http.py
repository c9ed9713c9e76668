"""ASGI plumbing for the HTTP listener: requests with bounded bodies, responses, errors.

Small on purpose: hypercorn speaks HTTP; this turns an ASGI scope into a
Request (query, headers, cookies, body with a size cap) and sends complete
or streamed responses.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

from meshnode.asgi import Message as Message  # re-exported for the web modules
from meshnode.asgi import Receive as Receive
from meshnode.asgi import Scope as Scope
from meshnode.asgi import Send as Send
from meshnode.web.auth import Principal

Headers = list[tuple[bytes, bytes]]

SECURITY_HEADERS: Headers = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]


class HttpError(Exception):
    """Ends a request with this status and a short explanation (JSON)."""

    def __init__(self, status: int, message: str, *, headers: Headers | None = None, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []
        self.code = code or {400: "bad-request", 401: "unauthorised", 403: "forbidden", 404: "not-found",
                             405: "method-not-allowed", 406: "not-acceptable", 409: "conflict",
                             411: "length-required", 413: "too-large", 415: "unsupported-media-type",
                             503: "unavailable"}.get(status, "error")


class ClientDisconnected(Exception):
    """The client went away while we were reading its request body."""


@dataclass
class Request:
    scope: Scope
    receive: Receive
    path_params: dict[str, str] = field(default_factory=dict)
    principal: Principal | None = None
    route_name: str = ""
    _consumed: bool = False
    _body_done: bool = False

    @property
    def method(self) -> str:
        return str(self.scope["method"])

    @property
    def path(self) -> str:
        return str(self.scope["path"])

    @property
    def client(self) -> str:
        client = self.scope.get("client")
        return str(client[0]) if client else "unknown"

    @property
    def scheme(self) -> str:
        return str(self.scope.get("scheme", "http"))

    @property
    def headers(self) -> dict[str, str]:
        cached = self.scope.get("_meshnode_headers")
        if cached is None:
            cached = {}
            for k, v in self.scope.get("headers", []):
                key = k.decode("latin-1").lower()
                value = v.decode("latin-1")
                cached[key] = f"{cached[key]}, {value}" if key in cached else value
            self.scope["_meshnode_headers"] = cached
        return dict(cached)

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)

    @property
    def query(self) -> dict[str, list[str]]:
        raw = self.scope.get("query_string", b"").decode("latin-1")
        try:
            return urllib.parse.parse_qs(raw, keep_blank_values=True, strict_parsing=False, max_num_fields=200)
        except ValueError as exc:
            raise HttpError(400, f"bad query string: {exc}") from None

    def cookie(self, name: str) -> str | None:
        for part in self.header("cookie").split(";"):
            key, sep, value = part.strip().partition("=")
            if sep and key == name:
                return value
        return None

    @property
    def content_length(self) -> int | None:
        value = self.header("content-length")
        if not value:
            return None
        if not value.isdigit():
            raise HttpError(400, "Content-Length must be a number")
        return int(value)

    async def chunks(self, limit: int) -> AsyncIterator[bytes]:
        """The body as it arrives; HttpError(413) as soon as it would exceed `limit` bytes."""
        if self._consumed:
            raise HttpError(500, "request body read twice")
        self._consumed = True
        declared = self.content_length
        if declared is not None and declared > limit:
            raise HttpError(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes")
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self._body_done = True
                raise ClientDisconnected()
            chunk = message.get("body", b"")
            size += len(chunk)
            if not message.get("more_body"):
                self._body_done = True
            if size > limit:
                raise HttpError(413, f"request body exceeds the limit of {limit} bytes")
            if chunk:
                yield chunk
            if self._body_done:
                return

    async def drain(self, most: int) -> bool:
        """Read and drop what is left of the body (so a client that sends all before it reads sees
        our answer), up to `most` bytes; False if more is left (the connection should then close)."""
        if self._body_done or (not self._consumed and self.method in ("GET", "HEAD")
                               and not self.content_length):
            return True
        self._consumed = True
        dropped = 0
        while dropped <= most:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self._body_done = True
                return True
            dropped += len(message.get("body", b""))
            if not message.get("more_body"):
                self._body_done = True
                return True
        return False

    async def body(self, limit: int) -> bytes:
        return b"".join([c async for c in self.chunks(limit)])

    async def form(self, limit: int = 16384) -> dict[str, str]:
        """An application/x-www-form-urlencoded or JSON object body, as strings."""
        raw = await self.body(limit)
        if self.header("content-type").startswith("application/json"):
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


async def start_response(send: Send, status: int, content_type: str, headers: Iterable[tuple[bytes, bytes]] = (),
                         length: int | None = None) -> None:
    out: Headers = [(b"content-type", content_type.encode("latin-1")), *SECURITY_HEADERS, *headers]
    if length is not None:
        out.append((b"content-length", str(length).encode()))
    await send({"type": "http.response.start", "status": status, "headers": out})


async def send_body(send: Send, data: bytes, more: bool = True) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": more})


async def send_bytes(send: Send, status: int, data: bytes, content_type: str,
                     headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    await start_response(send, status, content_type, headers, len(data))
    await send_body(send, data, more=False)


async def send_json(send: Send, status: int, value: object, content_type: str = "application/json",
                    headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    await send_bytes(send, status, json.dumps(value, sort_keys=True).encode(), content_type, headers)


async def send_error(send: Send, error: HttpError, close: bool = False) -> None:
    headers = [*error.headers, *([(b"connection", b"close")] if close else [])]
    await send_json(send, error.status, {"error": error.code, "message": error.message}, headers=headers)
