"""The node's local control API: a small JSON-over-HTTP ASGI app on 127.0.0.1.

Every request needs `Authorization: Bearer <token>` with the token from the
node folder's control.token (mode 0600). Routes map to async handlers that
take the parsed JSON body and return a JSON-serialisable value; a MeshError
becomes a JSON error with its wire code and a 4xx status.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from meshnode.asgi import Receive, Scope, Send, answer_lifespan
from meshnode.control.token import token_matches
from protocol.errors import MeshError, NotFoundError, UnauthorisedError

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20
Handler = Callable[[dict[str, Any]], Awaitable[object]]


def _status_for(exc: MeshError) -> int:
    if isinstance(exc, UnauthorisedError):
        return 403
    if isinstance(exc, NotFoundError):
        return 404
    return 400


class ControlApp:
    def __init__(self, token: str, routes: dict[tuple[str, str], Handler]) -> None:
        self.token = token
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        status, payload = await self._handle(scope, receive)
        body = json.dumps(payload, sort_keys=True).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def _handle(self, scope: Scope, receive: Receive) -> tuple[int, object]:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        auth = headers.get("authorization", "")
        if not auth.startswith("Bearer ") or not token_matches(self.token, auth[7:].strip()):
            return 401, {"error": "unauthorised", "code": UnauthorisedError.code, "message": "missing or wrong token"}
        handler = self.routes.get((scope["method"], scope["path"]))
        if handler is None:
            return 404, {"error": "not-found", "code": NotFoundError.code, "message": f"no route {scope['path']}"}
        chunks, size = [], 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY:
                return 413, {"error": "limit-exceeded", "code": 200, "message": "request body too large"}
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        try:
            raw = b"".join(chunks)
            body = json.loads(raw) if raw else {}
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
        except ValueError as exc:
            return 400, {"error": "bad-request", "code": 102, "message": str(exc)}
        try:
            return 200, await handler(body)
        except MeshError as exc:
            return _status_for(exc), {"error": exc.name, "code": exc.code, "message": str(exc)}
