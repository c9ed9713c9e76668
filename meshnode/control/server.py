"""Serve the control app with hypercorn's trio worker inside the node's nursery."""

from __future__ import annotations

import json
import logging
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from meshnode.control.app import ControlApp
from meshnode.control.token import ENDPOINT_FILE
from meshnode.files import write_atomic

if TYPE_CHECKING:
    from trio_typing import TaskStatus

log = logging.getLogger(__name__)


async def serve_control(
    app: ControlApp, home: Path, port: int = 0, *, task_status: TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """Listen on 127.0.0.1 only; write the URL to control.json once bound."""
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.keep_alive_timeout = 30
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(partial(serve, app, config))  # type: ignore[arg-type]
        url = binds[0]
        write_atomic(home / ENDPOINT_FILE, json.dumps({"url": url}).encode())
        log.info("control API on %s", url)
        task_status.started(url)
