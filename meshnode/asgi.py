"""What the node's two Starlette apps (control API, HTTP listener) share: an endpoint type, serving.

Both run under hypercorn's trio worker inside the node's nursery (Starlette
runs on trio through anyio) and write the URL they bound to a small JSON file
in the node directory, so CLI commands and tests find them when the port was
chosen by the OS.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import request_response
from starlette.types import ASGIApp, Receive, Scope, Send

from meshnode.files import write_atomic

if TYPE_CHECKING:
    from trio_typing import TaskStatus

log = logging.getLogger(__name__)

# the HTTP listener's hand-written plumbing (until it moves to Starlette too)
Message = dict[str, Any]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


async def answer_lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


class AnyMethod:
    """A request -> response endpoint that Starlette hands every method (a function endpoint gets only
    those listed, and a wrong one a plain-text 405): the app answers a wrong method in its own error format."""

    def __init__(self, endpoint: Callable[[Request], Awaitable[Response]]) -> None:
        self.app = request_response(endpoint)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


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
