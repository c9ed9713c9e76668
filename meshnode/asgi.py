"""What the node's two Starlette apps (control API, HTTP listener) share: an endpoint type, serving.

Both run under hypercorn's trio worker inside the node's nursery (Starlette
runs on trio through anyio) and write the URL they bound to a small JSON file
in the node directory, so CLI commands and tests find them when the port was
chosen by the OS.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import request_response
from starlette.types import ASGIApp, Receive, Scope, Send

from common.files import write_atomic

if TYPE_CHECKING:
    from trio_typing import TaskStatus

log = logging.getLogger(__name__)


class AnyMethod:
    """A request -> response endpoint that Starlette hands every method (a function endpoint gets only
    those listed, and a wrong one a plain-text 405): the app answers a wrong method in its own error format."""

    def __init__(self, endpoint: Callable[[Request], Awaitable[Response]]) -> None:
        self.app = request_response(endpoint)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


class ClosingResponse(Response):
    """An answer sent before the request body was read (too large, or not worth reading), closing the
    connection. While it is sent, what the client still sends is received and dropped: hypercorn queues
    the body for the app, and with that queue full it could never deliver the end of the response (the
    app and the server would wait on each other); the connection closes once the response is out."""

    def __init__(self, content: bytes, status_code: int, headers: Mapping[str, str] | None = None,
                 media_type: str | None = None) -> None:
        super().__init__(content, status_code, {**(headers or {}), "connection": "close"}, media_type)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def discard() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(discard)
            await super().__call__(scope, receive, send)
            nursery.cancel_scope.cancel()


def hypercorn_config(bind: str, keep_alive_timeout: float) -> Config:
    config = Config()
    config.bind = [bind]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.keep_alive_timeout = keep_alive_timeout
    return config


async def serve_app(app: ASGIApp, config: Config, endpoint_file: Path, what: str, *,
                    task_status: TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve until cancelled; once bound, write {"url": ...} to `endpoint_file` and report the URL."""
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(partial(serve, app, config))  # type: ignore[arg-type]
        url = binds[0]
        write_atomic(endpoint_file, json.dumps({"url": url}).encode())
        log.info("%s on %s", what, url)
        task_status.started(url)
