"""The one thread that touches the database, seen from trio.

Every metadata call from the trio side goes through `DatabaseThread.run`,
which executes a function of the store on a worker thread under a
CapacityLimiter(1): one call at a time, in order, never on the event loop.
Callers batch: a batch of blocks is one call, so one thread hop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import trio

from meshnode.storage.metadata import MetadataStore

T = TypeVar("T")


class DatabaseThread:
    def __init__(self, store: MetadataStore) -> None:
        self.store = store
        self._limiter = trio.CapacityLimiter(1)
        self.calls = 0

    async def run(self, fn: Callable[[MetadataStore], T]) -> T:
        """Run fn(store) on the database thread and return its result (or raise its error)."""
        self.calls += 1
        return await trio.to_thread.run_sync(fn, self.store, limiter=self._limiter)
