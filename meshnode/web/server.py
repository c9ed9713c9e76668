"""Serve the web app with hypercorn's trio worker inside the node's nursery (like the control API)."""

from __future__ import annotations

import json
import logging
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from meshnode.files import write_atomic
from meshnode.web.app import WebApp
from meshnode.web.config import HttpConfig, HttpConfigError

if TYPE_CHECKING:
    from trio_typing import TaskStatus

log = logging.getLogger(__name__)

ENDPOINT_FILE = "http.json"


async def serve_http(app: WebApp, config: HttpConfig, home: Path, *,
                     task_status: TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Listen on [http] listen; write the URL to http.json once bound."""
    host, port = config.host_port
    hc = Config()
    hc.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    tls = config.tls_paths(home)
    if tls is not None:
        for path in tls:
            if not path.is_file():
                raise HttpConfigError(f"[http] TLS file {path} does not exist")
        hc.certfile, hc.keyfile = str(tls[0]), str(tls[1])
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    hc.keep_alive_timeout = 75
    hc.include_server_header = False
    hc.graceful_timeout = 2.0
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(partial(serve, app, hc))  # type: ignore[arg-type]
        url = binds[0]
        write_atomic(home / ENDPOINT_FILE, json.dumps({"url": url}).encode())
        log.info("DICOMweb, web UI and metrics on %s", url)
        task_status.started(url)
