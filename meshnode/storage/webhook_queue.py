"""The webhook notification queue: every notification is a row until sent or given up.

A row is keyed by (hook, event_key), so the same event is never queued twice
for a receiver, also across restarts. Implementations: SQLite
(meshnode.storage.sqlite_webhook_queue) and memory (below).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

PENDING, SENT, FAILED = "pending", "sent", "failed"


@dataclass(frozen=True)
class WebhookJob:
    id: int
    hook: str
    event_key: str
    event: str
    body: bytes
    state: str
    attempts: int
    next_attempt_ms: int
    last_error: str
    created_ms: int
    updated_ms: int


class WebhookQueue(Protocol):
    def enqueue(self, hook: str, event_key: str, event: str, body: bytes, now_ms: int) -> bool:
        """Queue a notification; False if this (hook, event_key) was queued before."""
        ...

    def due(self, now_ms: int, limit: int) -> list[WebhookJob]:
        """Pending notifications whose next attempt is due, oldest first."""
        ...

    def record_attempt(self, job_id: int, state: str, attempts: int, next_attempt_ms: int, error: str,
                       now_ms: int) -> None: ...

    def counts(self) -> dict[tuple[str, str], int]:
        """(hook, state) -> number of notifications."""
        ...

    def recent(self, limit: int) -> list[WebhookJob]: ...

    def purge_sent(self, before_ms: int) -> int:
        """Drop the bodies of notifications sent before this time (the rows stay); returns how many."""
        ...

    def close(self) -> None: ...


class MemoryWebhookQueue:
    def __init__(self) -> None:
        self._jobs: dict[int, WebhookJob] = {}
        self._keys: set[tuple[str, str]] = set()

    def close(self) -> None:
        """Nothing to release."""

    def enqueue(self, hook: str, event_key: str, event: str, body: bytes, now_ms: int) -> bool:
        if (hook, event_key) in self._keys:
            return False
        self._keys.add((hook, event_key))
        job_id = len(self._jobs) + 1
        self._jobs[job_id] = WebhookJob(job_id, hook, event_key, event, body, PENDING, 0, now_ms, "", now_ms, now_ms)
        return True

    def due(self, now_ms: int, limit: int) -> list[WebhookJob]:
        jobs = [j for j in self._jobs.values() if j.state == PENDING and j.next_attempt_ms <= now_ms]
        return sorted(jobs, key=lambda j: (j.next_attempt_ms, j.id))[:limit]

    def record_attempt(self, job_id: int, state: str, attempts: int, next_attempt_ms: int, error: str,
                       now_ms: int) -> None:
        job = self._jobs[job_id]
        self._jobs[job_id] = replace(job, state=state, attempts=attempts, next_attempt_ms=next_attempt_ms,
                                     last_error=error[:500], updated_ms=now_ms)

    def counts(self) -> dict[tuple[str, str], int]:
        out: dict[tuple[str, str], int] = {}
        for j in self._jobs.values():
            out[(j.hook, j.state)] = out.get((j.hook, j.state), 0) + 1
        return out

    def recent(self, limit: int) -> list[WebhookJob]:
        return sorted(self._jobs.values(), key=lambda j: -j.id)[:limit]

    def purge_sent(self, before_ms: int) -> int:
        gone = [i for i, j in self._jobs.items() if j.state == SENT and j.updated_ms < before_ms and j.body]
        for i in gone:  # the row stays, so the event is never queued again; its body goes
            self._jobs[i] = replace(self._jobs[i], body=b"")
        return len(gone)
