"""Serve the web app with hypercorn's trio worker inside the node's nursery (like the control API)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import trio
from starlette.types import ASGIApp

from meshnode.asgi import hypercorn_config, serve_app
from meshnode.web.config import HttpConfig
from protocol.errors import ConfigError

if TYPE_CHECKING:
    from trio_typing import TaskStatus

ENDPOINT_FILE = "http.json"


async def serve_http(app: ASGIApp, config: HttpConfig, home: Path, *, endpoint_file: str = ENDPOINT_FILE,
                     what: str = "DICOMweb, web UI and metrics",
                     task_status: TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Listen on [http] listen (or the patient pages' listener, meshnode.web.patient_listener); write the URL
    to `endpoint_file` (http.json) once bound."""
    host, port = config.host_port
    hc = hypercorn_config(f"[{host}]:{port}" if ":" in host else f"{host}:{port}", keep_alive_timeout=75)
    tls = config.tls_paths(home)
    if tls is not None:
        for path in tls:
            if not path.is_file():
                raise ConfigError(f"http.tls_certificate, http.tls_key: TLS file {path} does not exist")
        hc.certfile, hc.keyfile = str(tls[0]), str(tls[1])
    hc.include_server_header = False
    hc.graceful_timeout = 2.0
    await serve_app(app, hc, home / endpoint_file, what, task_status=task_status)
