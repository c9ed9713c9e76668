"""systemd integration for `meshnode run` under Type=notify: READY=1 once serving, watchdog pings.

Without $NOTIFY_SOCKET (not started by systemd) everything here does nothing.
With WatchdogSec= set, the node pings every half period, and only while its
health checks pass (meshnode.node.health), so systemd restarts a node whose
database hangs or whose disk is full.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import trio

log = logging.getLogger(__name__)


def notify(message: str) -> bool:
    """Send one sd_notify message; False when not running under systemd."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            # never block the event loop: a receiver that is not reading loses the message
            sock.send(message.encode(), socket.MSG_DONTWAIT)
    except BlockingIOError:
        log.warning("systemd's notify socket is full; message dropped")
        return False
    except OSError as exc:
        log.warning("cannot notify systemd: %s", exc)
        return False
    return True


def watchdog_interval() -> float | None:
    """Half of WatchdogSec, if systemd asked this process for watchdog pings."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


async def watchdog(health: Callable[[], Awaitable[tuple[bool, dict[str, Any]]]], interval: float) -> None:
    while True:
        ok, checks = await health()
        if ok:
            notify("WATCHDOG=1")
        else:
            log.warning("health checks failing, not pinging the systemd watchdog: %s", checks)
            notify("STATUS=unhealthy: " + ", ".join(f"{k}={v}" for k, v in checks.items())[:200])
        await trio.sleep(interval)
