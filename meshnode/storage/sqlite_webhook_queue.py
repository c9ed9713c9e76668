"""WebhookQueue in the node's SQLite file (table `webhook_queue`)."""

from __future__ import annotations

from typing import Any

from meshnode.storage.sqlite_base import SqliteTables
from meshnode.storage.webhook_queue import PENDING, SENT, WebhookJob

_COLUMNS = "id, hook, event_key, event, body, state, attempts, next_attempt_ms, last_error, created_ms, updated_ms"


def _job(r: Any) -> WebhookJob:
    return WebhookJob(int(r[0]), str(r[1]), str(r[2]), str(r[3]), bytes(r[4]), str(r[5]), int(r[6]), int(r[7]),
                      str(r[8]), int(r[9]), int(r[10]))


class SqliteWebhookQueue(SqliteTables):
    def enqueue(self, hook: str, event_key: str, event: str, body: bytes, now_ms: int) -> bool:
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO webhook_queue (hook, event_key, event, body, state, attempts,"
                " next_attempt_ms, last_error, created_ms, updated_ms) VALUES (?,?,?,?,?,0,?,'',?,?)",
                (hook, event_key, event, body, PENDING, now_ms, now_ms, now_ms))
            return cur.rowcount == 1

    def due(self, now_ms: int, limit: int) -> list[WebhookJob]:
        return [_job(r) for r in self._query(
            f"SELECT {_COLUMNS} FROM webhook_queue WHERE state = ? AND next_attempt_ms <= ?"
            " ORDER BY next_attempt_ms, id LIMIT ?", (PENDING, now_ms, limit))]

    def record_attempt(self, job_id: int, state: str, attempts: int, next_attempt_ms: int, error: str,
                       now_ms: int) -> None:
        with self._tx() as db:
            db.execute("UPDATE webhook_queue SET state = ?, attempts = ?, next_attempt_ms = ?, last_error = ?,"
                       " updated_ms = ? WHERE id = ?", (state, attempts, next_attempt_ms, error[:500], now_ms, job_id))

    def counts(self) -> dict[tuple[str, str], int]:
        return {(str(h), str(s)): int(n) for h, s, n in
                self._query("SELECT hook, state, count(*) FROM webhook_queue GROUP BY hook, state")}

    def recent(self, limit: int) -> list[WebhookJob]:
        return [_job(r) for r in self._query(f"SELECT {_COLUMNS} FROM webhook_queue ORDER BY id DESC LIMIT ?",
                                             (limit,))]

    def purge_sent(self, before_ms: int) -> int:
        # the row's key must survive, or the event could be queued again: keep the row, drop its body
        with self._tx() as db:
            return db.execute("UPDATE webhook_queue SET body = x'' WHERE state = ? AND updated_ms < ?"
                              " AND length(body) > 0", (SENT, before_ms)).rowcount
