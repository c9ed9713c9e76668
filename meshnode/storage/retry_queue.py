"""Durable retry queues in the node's database: one row per queued item, states from protocol.outbox.

A queue (`queue`, e.g. "delivery") holds items by a text `key` unique in it,
a `ref` to find them by (a manifest ID for deliveries) and the `payload` to
send (a signed receipt or recall; none for an announcement, whose manifest is
stored with the manifests). The retry state of each item is a
protocol.outbox.DeliveryRecord: the driver (meshnode.node.retry_driver)
restores a protocol.outbox.Outbox from `queue_rows`, and writes back what
`Outbox.changes()` gives with `queue_save`.

Implementations: SQLite (meshnode.storage.sqlite_retry_queue) and memory
(below); both take part in MetadataStore.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from typing import Protocol

from protocol.outbox import DeliveryState


@dataclass(frozen=True)
class QueuedRow:
    """One item of a durable retry queue: its key, what it refers to, its retry state, its payload."""

    queue: str
    key: str
    ref: str
    state: DeliveryState
    attempts: int
    next_attempt_ms: int
    updated_ms: int
    last_error: str = ""
    payload: bytes | None = None


class RetryQueueStore(Protocol):
    def atomic(self) -> AbstractContextManager[None]:
        """Run several writes (of any store method) as one: all of them, or (on an exception) none."""
        ...

    def queue_add(self, rows: Sequence[QueuedRow]) -> list[str]:
        """Store new items, atomically; an item whose (queue, key) is stored already (also one delivered
        long ago) is left as it is. Returns the keys newly stored."""
        ...

    def queue_reopen(self, rows: Sequence[QueuedRow]) -> list[str]:
        """Queue items again that may have ended: an item not stored is stored as given; one DELIVERED or
        FAILED takes the given retry state (state, attempts, times; error cleared); a PENDING one is pushed
        to the given due time if later; an ATTEMPTING one is left as it is. Returns the keys stored or
        reopened (protocol.outbox.Outbox.reopen, durably)."""
        ...

    def queue_save(self, rows: Sequence[QueuedRow]) -> None:
        """Write the retry state (state, attempts, times, error) of stored items; payload and ref stay.
        Items not stored (removed meanwhile) are not added back."""
        ...

    def queue_remove(self, queue: str, keys: Iterable[str]) -> None: ...

    def queue_rows(self, queue: str, ref: str | None = None,
                   states: Sequence[DeliveryState] | None = None, key_prefix: str | None = None) -> list[QueuedRow]:
        """Every item of the queue (only those with this ref, in these states, whose key starts with
        key_prefix, if given), by key."""
        ...

    def queue_counts(self, prefix: str) -> dict[tuple[str, DeliveryState], int]:
        """(queue, state) -> items, for the queues whose name starts with prefix."""
        ...

    def queue_drop_payloads(self, queue: str, before_ms: int) -> int:
        """Drop the payloads of items delivered before this time (the rows stay, so a key is never queued
        twice); returns how many."""
        ...


class MemoryRetryQueue:
    """RetryQueueStore in a dictionary (part of MemoryMetadataStore)."""

    def __init__(self) -> None:
        self._queued: dict[tuple[str, str], QueuedRow] = {}
        self._atomic_depth = 0

    @contextmanager
    def atomic(self) -> Iterator[None]:
        """All or nothing, as SQLite's transaction: the store's containers are restored on an exception."""
        if self._atomic_depth:
            yield
            return
        saved = {k: copy.deepcopy(v) for k, v in vars(self).items() if isinstance(v, (dict, list, set))}
        self._atomic_depth = 1
        try:
            yield
        except BaseException:
            vars(self).update(saved)
            raise
        finally:
            self._atomic_depth = 0

    def queue_add(self, rows: Sequence[QueuedRow]) -> list[str]:
        added = []
        for row in rows:
            if (row.queue, row.key) not in self._queued:
                self._queued[(row.queue, row.key)] = row
                added.append(row.key)
        return added

    def queue_reopen(self, rows: Sequence[QueuedRow]) -> list[str]:
        changed = []
        for row in rows:
            stored = self._queued.get((row.queue, row.key))
            if stored is None or stored.state in (DeliveryState.DELIVERED, DeliveryState.FAILED):
                self._queued[(row.queue, row.key)] = replace(row, last_error="", payload=(
                    row.payload if stored is None else stored.payload))
                changed.append(row.key)
            elif stored.state is DeliveryState.PENDING and row.next_attempt_ms > stored.next_attempt_ms:
                self._queued[(row.queue, row.key)] = replace(stored, next_attempt_ms=row.next_attempt_ms,
                                                             updated_ms=row.updated_ms)
        return changed

    def queue_save(self, rows: Sequence[QueuedRow]) -> None:
        for row in rows:
            stored = self._queued.get((row.queue, row.key))
            if stored is not None:
                self._queued[(row.queue, row.key)] = replace(
                    stored, state=row.state, attempts=row.attempts, next_attempt_ms=row.next_attempt_ms,
                    updated_ms=row.updated_ms, last_error=row.last_error[:500])

    def queue_remove(self, queue: str, keys: Iterable[str]) -> None:
        for key in keys:
            self._queued.pop((queue, key), None)

    def queue_rows(self, queue: str, ref: str | None = None,
                   states: Sequence[DeliveryState] | None = None, key_prefix: str | None = None) -> list[QueuedRow]:
        return sorted((r for (q, _), r in self._queued.items() if q == queue and (ref is None or r.ref == ref)
                       and (states is None or r.state in states) and r.key.startswith(key_prefix or "")),
                      key=lambda r: r.key)

    def queue_counts(self, prefix: str) -> dict[tuple[str, DeliveryState], int]:
        out: dict[tuple[str, DeliveryState], int] = {}
        for (queue, _), r in self._queued.items():
            if queue.startswith(prefix):
                out[(queue, r.state)] = out.get((queue, r.state), 0) + 1
        return out

    def queue_drop_payloads(self, queue: str, before_ms: int) -> int:
        gone = [k for k, r in self._queued.items() if k[0] == queue and r.state is DeliveryState.DELIVERED
                and r.updated_ms < before_ms and r.payload]
        for k in gone:
            self._queued[k] = replace(self._queued[k], payload=b"")
        return len(gone)
