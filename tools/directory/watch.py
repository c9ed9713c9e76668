"""Roster watches: connected nodes hold one request open and hear of a new roster at once.

A node sends `watch-roster` with the version it has; the directory answers as
soon as it holds a newer one (a publication wakes every watcher), or with
"unchanged" after WATCH_WAIT seconds. A revocation therefore reaches every
connected node within one round trip of its publication, and 450 idle nodes
cost the directory 450 idle streams and 450 / WATCH_WAIT tiny requests a
second. Watches are capped in total and per peer; a watch over a cap is
answered at once (the node then paces itself like a poller).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from protocol.directory_messages import WATCH_WAIT

log = logging.getLogger(__name__)

MAX_WATCHES = 4096
MAX_WATCHES_PER_PEER = 4


class RosterWatches:
    def __init__(
        self,
        version: Callable[[], int],
        *,
        wait: float = WATCH_WAIT,
        max_watches: int = MAX_WATCHES,
        max_per_peer: int = MAX_WATCHES_PER_PEER,
    ) -> None:
        self._version = version
        self._wait = wait
        self._max = max_watches
        self._max_per_peer = max_per_peer
        self._changed = trio.Event()
        self._per_peer: dict[str, int] = {}
        self._count = 0

    @property
    def watching(self) -> int:
        return self._count

    def published(self) -> None:
        """A new roster was stored: wake every watch."""
        self._changed.set()
        self._changed = trio.Event()

    async def wait_newer(self, peer: str, after: int) -> None:
        """Return once the roster version exceeds `after`, after the wait, or at once when over a cap."""
        if self._version() > after:
            return
        held = self._per_peer.get(peer, 0)
        if self._count >= self._max or held >= self._max_per_peer:
            log.info("roster watch from %s answered at once: %d watches open (%d of its own)", peer, self._count, held)
            return
        self._count += 1
        self._per_peer[peer] = held + 1
        try:
            with trio.move_on_after(self._wait):
                while self._version() <= after:
                    await self._changed.wait()
        finally:
            self._count -= 1
            left = self._per_peer[peer] - 1
            if left:
                self._per_peer[peer] = left
            else:
                del self._per_peer[peer]
