"""RetryQueueStore in the node's SQLite file (table `retry_queue`, migration "outbox" in schema.py). Mixed into
SqliteMetadataStore (sqlite_metadata.py): same connection, same database thread."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from meshnode.storage.retry_queue import QueuedRow
from meshnode.storage.sqlite_base import SqliteTables
from protocol.outbox import DeliveryState

_COLUMNS = "queue, key, ref, state, attempts, next_attempt_ms, updated_ms, last_error, payload"


def _row(r: Any) -> QueuedRow:
    return QueuedRow(str(r[0]), str(r[1]), str(r[2]), DeliveryState(str(r[3])), int(r[4]), int(r[5]), int(r[6]),
                     str(r[7]), bytes(r[8]) if r[8] is not None else None)


class SqliteRetryQueue(SqliteTables):

    def queue_add(self, rows: Sequence[QueuedRow]) -> list[str]:
        added = []
        with self._tx() as db:
            for r in rows:
                cur = db.execute(
                    f"INSERT OR IGNORE INTO retry_queue ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)",
                    (r.queue, r.key, r.ref, r.state.value, r.attempts, r.next_attempt_ms, r.updated_ms,
                     r.last_error[:500], r.payload))
                if cur.rowcount == 1:
                    added.append(r.key)
        return added

    def queue_reopen(self, rows: Sequence[QueuedRow]) -> list[str]:
        changed = []
        with self._tx() as db:
            for r in rows:
                cur = db.execute(
                    f"INSERT INTO retry_queue ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,'',?)"
                    " ON CONFLICT (queue, key) DO UPDATE SET state = excluded.state, attempts = excluded.attempts,"
                    "  next_attempt_ms = excluded.next_attempt_ms, updated_ms = excluded.updated_ms, last_error = ''"
                    " WHERE state IN ('delivered', 'failed')",
                    (r.queue, r.key, r.ref, r.state.value, r.attempts, r.next_attempt_ms, r.updated_ms, r.payload))
                if cur.rowcount == 1:
                    changed.append(r.key)
                else:
                    db.execute("UPDATE retry_queue SET next_attempt_ms = ?, updated_ms = ? WHERE queue = ? AND key = ?"
                               " AND state = 'pending' AND next_attempt_ms < ?",
                               (r.next_attempt_ms, r.updated_ms, r.queue, r.key, r.next_attempt_ms))
        return changed

    def queue_save(self, rows: Sequence[QueuedRow]) -> None:
        with self._tx() as db:
            db.executemany(
                "UPDATE retry_queue SET state = ?, attempts = ?, next_attempt_ms = ?, updated_ms = ?, last_error = ?"
                " WHERE queue = ? AND key = ?",
                [(r.state.value, r.attempts, r.next_attempt_ms, r.updated_ms, r.last_error[:500], r.queue, r.key)
                 for r in rows])

    def queue_remove(self, queue: str, keys: Iterable[str]) -> None:
        with self._tx() as db:
            db.executemany("DELETE FROM retry_queue WHERE queue = ? AND key = ?", [(queue, k) for k in keys])

    def queue_rows(self, queue: str, ref: str | None = None,
                   states: Sequence[DeliveryState] | None = None, key_prefix: str | None = None) -> list[QueuedRow]:
        sql, params = f"SELECT {_COLUMNS} FROM retry_queue WHERE queue = ?", [queue]
        if ref is not None:
            sql, params = sql + " AND ref = ?", [*params, ref]
        if key_prefix:  # a range on the primary key (queue, key): LIKE would need escaping and no index
            sql, params = sql + " AND key >= ? AND key < ?", [*params, key_prefix, key_prefix + "\U0010ffff"]
        if states is not None:
            sql += f" AND state IN ({','.join('?' * len(states))})"
            params += [s.value for s in states]
        return [_row(r) for r in self._query(sql + " ORDER BY key", params)]

    def queue_counts(self, prefix: str) -> dict[tuple[str, DeliveryState], int]:
        return {(str(q), DeliveryState(str(s))): int(n) for q, s, n in self._query(
            "SELECT queue, state, count(*) FROM retry_queue WHERE substr(queue, 1, ?) = ? GROUP BY queue, state",
            (len(prefix), prefix))}

    def queue_drop_payloads(self, queue: str, before_ms: int) -> int:
        with self._tx() as db:
            return db.execute("UPDATE retry_queue SET payload = x'' WHERE queue = ? AND state = 'delivered'"
                              " AND updated_ms < ? AND length(payload) > 0", (queue, before_ms)).rowcount
