"""Serve the control app with hypercorn's trio worker inside the node's nursery."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import trio

from meshnode.asgi import hypercorn_config, serve_app
from meshnode.control.app import ControlApp
from meshnode.control.token import ENDPOINT_FILE

if TYPE_CHECKING:
    from trio_typing import TaskStatus


async def serve_control(
    app: ControlApp, home: Path, port: int = 0, *, task_status: TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """Listen on 127.0.0.1 only; write the URL to control.json once bound."""
    config = hypercorn_config(f"127.0.0.1:{port}", keep_alive_timeout=30)
    await serve_app(app, config, home / ENDPOINT_FILE, "control API", task_status=task_status)
