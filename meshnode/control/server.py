"""Serve the control app with hypercorn's trio worker inside the node's nursery."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import trio

from meshnode.asgi import hypercorn_config, serve_app
from meshnode.control.app import ControlApp
from meshnode.control.token import ENDPOINT_FILE
from protocol.errors import ConfigError

if TYPE_CHECKING:
    from trio_typing import TaskStatus


async def serve_control(
    app: ControlApp, home: Path, port: int = 0, *, task_status: TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """Listen on 127.0.0.1 only, at `port` ([control] port; 0: any free one); write the URL to control.json
    once bound. A port that cannot be bound is a ConfigError naming the key."""
    config = hypercorn_config(f"127.0.0.1:{port}", keep_alive_timeout=30)
    try:
        await serve_app(app, config, home / ENDPOINT_FILE, "control API", task_status=task_status)
    except (OSError, BaseExceptionGroup) as exc:
        bind_error = _bind_error(exc)
        if bind_error is None:
            raise
        raise ConfigError(f"control.port: cannot listen on 127.0.0.1:{port}: "
                          f"{bind_error.strerror or bind_error}") from None


def _bind_error(exc: BaseException) -> OSError | None:
    """The OSError that ended the server, alone (hypercorn raises it through nested nurseries), or None."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, OSError) else None
