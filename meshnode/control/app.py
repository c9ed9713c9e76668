"""The node's local control API: a small JSON-over-HTTP Starlette app on 127.0.0.1.

Every request needs `Authorization: Bearer <token>` with the token from the
node folder's control.token (mode 0600), checked before routing. Routes map
to async handlers that take the parsed JSON body (a JSON object, at most
MAX_BODY bytes: a larger declared length is refused before any of it is
read) and return a JSON-serialisable value; a MeshError becomes a JSON error
with its wire code and a 4xx status.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, Router
from starlette.types import Receive, Scope, Send

from meshnode.asgi import AnyMethod, ClosingResponse
from meshnode.control.token import token_matches
from protocol.errors import LimitError, MeshError, NotFoundError, RemoteProtocolError, UnauthorisedError

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20
Handler = Callable[[dict[str, Any]], Awaitable[object]]


def _status_for(exc: MeshError) -> int:
    if isinstance(exc, UnauthorisedError):
        return 403
    if isinstance(exc, NotFoundError):
        return 404
    return 400


def _json(status: int, payload: object) -> Response:
    return Response(json.dumps(payload, sort_keys=True).encode(), status, media_type="application/json")


def _error(exc: MeshError, status: int | None = None, *, unread: bool = False) -> Response:
    """`unread`: answered before the body was read to its end (the connection then closes)."""
    data = json.dumps({"error": exc.name, "code": exc.code, "message": str(exc)}, sort_keys=True).encode()
    if unread:
        return ClosingResponse(data, status or _status_for(exc), media_type="application/json")
    return Response(data, status or _status_for(exc), media_type="application/json")


async def _json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object ({} when empty); LimitError past MAX_BODY, declared or sent."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > MAX_BODY:
        raise LimitError("request body too large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise LimitError("request body too large")
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        body = json.loads(raw) if raw else {}
    except ValueError as exc:
        raise RemoteProtocolError(f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise RemoteProtocolError("body must be a JSON object")
    return body


class ControlApp:
    def __init__(self, token: str, routes: dict[tuple[str, str], Handler]) -> None:
        self.token = token
        by_path: dict[str, dict[str, Handler]] = {}
        for (method, path), handler in routes.items():
            by_path.setdefault(path, {})[method] = handler
        # a wrong method is answered like an unknown route (404), by _endpoint
        self.router = Router([Route(path, AnyMethod(self._endpoint(handlers)))
                              for path, handlers in by_path.items()], default=self._not_found, redirect_slashes=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            auth = Headers(scope=scope).get("authorization", "")
            if not auth.startswith("Bearer ") or not token_matches(self.token, auth[7:].strip()):
                await _error(UnauthorisedError("missing or wrong token"), 401, unread=True)(scope, receive, send)
                return
        await self.router(scope, receive, send)

    @staticmethod
    def _endpoint(handlers: dict[str, Handler]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            handler = handlers.get(request.method)
            if handler is None:
                return _error(NotFoundError(f"no route {request.method} {request.url.path}"), unread=True)
            try:
                body = await _json_object(request)
            except LimitError as exc:
                return _error(exc, 413, unread=True)
            except MeshError as exc:
                return _error(exc, 400)
            try:
                return _json(200, await handler(body))
            except MeshError as exc:
                return _error(exc)
        return endpoint

    @staticmethod
    async def _not_found(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await _error(NotFoundError(f"no route {scope['path']}"), unread=True)(scope, receive, send)
