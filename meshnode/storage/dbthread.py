"""The one thread that touches the database, seen from trio.

Every metadata call from the trio side goes through `DatabaseThread.run`,
which executes a function of the store on a worker thread under a
CapacityLimiter(1): one call at a time, in order, never on the event loop.
Callers batch: a batch of blocks is one call, so one thread hop. A caller
on a plain thread of its own (pynetdicom's) may run its call there instead
(`run_blocking`): a lock keeps every call exclusive either way.

`close` closes the store under that lock, after the call under way (a plain
thread may be mid-transaction when the node stops: closing the SQLite
connection under it crashed the process); every later call raises
UnavailableError (a C-STORE then answers 0xA700).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import trio

from meshnode.storage.metadata import MetadataStore
from protocol.errors import UnavailableError

T = TypeVar("T")


class DatabaseThread:
    def __init__(self, store: MetadataStore) -> None:
        self.store = store
        self._limiter = trio.CapacityLimiter(1)
        #: held during every call, from trio's side (run) or a plain thread's (run_blocking): one at a time
        self._lock = threading.Lock()
        self.calls = 0
        self.closed = False

    async def run(self, fn: Callable[[MetadataStore], T]) -> T:
        """Run fn(store) on the database thread and return its result (or raise its error)."""
        self.calls += 1
        return await trio.to_thread.run_sync(self._locked, fn, limiter=self._limiter)

    def run_blocking(self, fn: Callable[[MetadataStore], T]) -> T:
        """Run fn(store) on the calling thread, a plain one (never trio's: it blocks), exclusive with every
        other call; for a caller already on a worker thread (the C-STORE group commit), saving two hops."""
        return self._locked(fn)

    def close(self) -> None:
        """Close the store once the call under way (if any) returns; later calls raise UnavailableError.
        Blocks: from trio, call it on a worker thread."""
        with self._lock:
            if not self.closed:
                self.closed = True
                self.store.close()

    def _locked(self, fn: Callable[[MetadataStore], T]) -> T:
        with self._lock:
            if self.closed:
                raise UnavailableError("the node's database is closed (the node is stopping)")
            return fn(self.store)
