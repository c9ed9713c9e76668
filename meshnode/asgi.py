"""What the node's two ASGI apps (control API, HTTP listener) share: types, lifespan, serving.

Both run under hypercorn's trio worker inside the node's nursery and write
the URL they bound to a small JSON file in the node directory, so CLI
commands and tests find them when the port was chosen by the OS.
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

from common.files import write_atomic

if TYPE_CHECKING:
    from trio_typing import TaskStatus

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger(__name__)


async def answer_lifespan(receive: Receive, send: Send) -> None:
    """Acknowledge startup and shutdown (the apps hold no state that needs either)."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def hypercorn_config(bind: str, keep_alive_timeout: float) -> Config:
    config = Config()
    config.bind = [bind]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.keep_alive_timeout = keep_alive_timeout
    return config


async def serve_app(app: App, config: Config, endpoint_file: Path, what: str, *,
                    task_status: TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve until cancelled; once bound, write {"url": ...} to `endpoint_file` and report the URL."""
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(partial(serve, app, config))  # type: ignore[arg-type]
        url = binds[0]
        write_atomic(endpoint_file, json.dumps({"url": url}).encode())
        log.info("%s on %s", what, url)
        task_status.started(url)
