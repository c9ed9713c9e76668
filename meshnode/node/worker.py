"""Where a driver's blocking work runs: disk reads and writes, hashing, verification.

The node runs it on worker threads (`ThreadWorker`), so the event loop never waits for a disk. The drivers
ask for it through `Worker` rather than calling trio.to_thread themselves, so that the in-process tests
(tests/meshnode/node/harness.py) can run it inline: on trio's MockClock with autojump, a task waiting for
a thread counts as idle, and the clock would jump past timeouts while the thread works.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

import trio

T = TypeVar("T")


class Worker(Protocol):
    async def run(self, fn: Callable[[], T], limiter: trio.CapacityLimiter | None = None) -> T:
        """fn(), off the event loop (at most `limiter`'s worth at a time)."""


class ThreadWorker:
    """The node's Worker: trio's worker threads."""

    async def run(self, fn: Callable[[], T], limiter: trio.CapacityLimiter | None = None) -> T:
        return await trio.to_thread.run_sync(fn, limiter=limiter)
