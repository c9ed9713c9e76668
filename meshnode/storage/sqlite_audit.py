"""The audit chain in the node's SQLite metadata: hash-chained entries, signed checkpoints and the
signed tail, and the spool for the audit repository. Mixed into SqliteMetadataStore
(sqlite_metadata.py), whose catalog writes append their audit entries in the same transaction
(`_append_audit`); the tables are in schema.py."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from meshnode.storage import audit
from meshnode.storage import sqlite_search
from meshnode.storage.audit import AuditEntry, AuditEvent, EventCode, Outcome
from meshnode.storage.audit_checkpoint import (
    AuditCheckpoint,
    SpoolItem,
    decode_payload,
    due_checkpoints,
    spool_rows,
    rebased_checkpoints,
    tail_vouches,
)
from meshnode.storage.search import AuditQuery
from meshnode.storage.sqlite_base import SqliteTables
from protocol.errors import StorageError
from protocol.keys import SigningKey


class SqliteAudit(SqliteTables):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._audit_key: SigningKey | None = None
        self._own_tail: AuditCheckpoint | None = None  # the tail this connection last wrote

    def _append_audit(self, db: sqlite3.Connection, events: Sequence[AuditEvent], now_ms: int) -> list[AuditEntry]:
        if not events:
            return []
        last = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        entries = audit.chain(last[0] if last else 0, bytes(last[1]) if last else audit.GENESIS,
                              list(events), now_ms)
        db.executemany(
            "INSERT INTO audit VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            [(e.seq, e.at_ms, int(e.event.code), e.event.action, int(e.event.outcome), e.event.actor,
              e.event.actor_org, e.event.study, e.event.manifest_id, e.event.detail, e.prev_hash, e.hash)
             for e in entries],
        )
        if self._audit_key is not None:
            before = (int(last[0]), bytes(last[1])) if last else None
            tail = self._read_tail(db)
            have_any = tail is not None or db.execute("SELECT 1 FROM audit_checkpoints LIMIT 1").fetchone() is not None
            vouched = tail_vouches(tail, before, self._audit_key, self._own_tail)
            checkpoints, new_tail = due_checkpoints(entries, vouched, have_any, self._audit_key, now_ms)
        else:
            checkpoints, new_tail = [], None
        self._insert_checkpoints(db, checkpoints)
        if new_tail is not None:
            self._write_tail(db, new_tail)
        self._spool(db, spool_rows(entries, checkpoints), now_ms)
        return entries

    def _insert_checkpoints(self, db: sqlite3.Connection, checkpoints: Sequence[AuditCheckpoint]) -> None:
        db.executemany("INSERT INTO audit_checkpoints (seq, hash, at_ms, rebase_from, rebase_to, signature)"
                       " VALUES (?,?,?,?,?,?)",
                       [(c.seq, c.hash, c.at_ms, c.rebase_from, c.rebase_to, c.signature) for c in checkpoints])

    @staticmethod
    def _spool(db: sqlite3.Connection, rows: Sequence[tuple[str, int, bytes]], now_ms: int) -> None:
        db.executemany("INSERT INTO audit_spool (kind, seq, payload, created_ms, attempts) VALUES (?,?,?,?,0)",
                       [(kind, seq, payload, now_ms) for kind, seq, payload in rows])

    @staticmethod
    def _read_tail(db: sqlite3.Connection) -> AuditCheckpoint | None:
        r = db.execute("SELECT seq, hash, at_ms, signature FROM audit_tail WHERE id = 1").fetchone()
        return AuditCheckpoint(int(r[0]), bytes(r[1]), int(r[2]), bytes(r[3])) if r else None

    def _write_tail(self, db: sqlite3.Connection, tail: AuditCheckpoint) -> None:
        # Remembered even if the transaction then rolls back: it is a genuine signature of ours either way,
        # only ever used to skip re-checking that signature when the database holds exactly it.
        self._own_tail = tail
        db.execute("INSERT OR REPLACE INTO audit_tail VALUES (1,?,?,?,?)", (tail.seq, tail.hash, tail.at_ms,
                                                                            tail.signature))

    def set_audit_key(self, key: SigningKey | None) -> None:
        self._audit_key = key

    def audit_tail(self) -> AuditCheckpoint | None:
        with self._tx() as db:
            return self._read_tail(db)

    def audit_snapshot(self) -> tuple[list[AuditEntry], list[AuditCheckpoint], AuditCheckpoint | None]:
        # one read transaction (a WAL snapshot, no write lock): a node appending meanwhile cannot skew them
        with self._lock:
            try:
                self._db.execute("BEGIN")
            except sqlite3.Error as exc:
                raise StorageError(f"database unavailable: {exc}") from exc
            try:
                return self.audit_entries(), self.audit_checkpoints(), self._read_tail(self._db)
            finally:
                self._rollback()

    def append_audit_rebased(self, events: Sequence[AuditEvent], now_ms: int, key: SigningKey, rebase_from: int,
                             rebase_to: int, sign_seqs: Sequence[int]) -> tuple[int, bytes]:
        with self._tx() as db:
            entries = self._append_audit(db, events, now_ms)
            if not entries:
                raise StorageError("an acknowledgement needs its audit entry")
            hashes = dict(db.execute(f"SELECT seq, hash FROM audit WHERE seq IN ({','.join('?' * len(sign_seqs))})",
                                     list(sign_seqs)).fetchall()) if sign_seqs else {}
            made = rebased_checkpoints(key, entries[-1], hashes, rebase_from, rebase_to, now_ms)
            self._insert_checkpoints(db, made[:-1])
            self._spool(db, spool_rows([], made[:-1]), now_ms)
            self._write_tail(db, made[-1])
            return entries[-1].seq, entries[-1].hash

    def add_audit_checkpoint(self, checkpoint: AuditCheckpoint) -> None:
        with self._tx() as db:
            self._insert_checkpoints(db, [checkpoint])
            self._spool(db, spool_rows([], [checkpoint]), checkpoint.at_ms)

    def audit_checkpoints(self) -> list[AuditCheckpoint]:
        return [AuditCheckpoint(int(r[0]), bytes(r[1]), int(r[2]), bytes(r[5]), int(r[3]), int(r[4])) for r in
                self._query("SELECT seq, hash, at_ms, rebase_from, rebase_to, signature FROM audit_checkpoints"
                            " ORDER BY n")]

    def audit_spool(self, limit: int) -> list[SpoolItem]:
        out = []
        for r in self._query("SELECT id, kind, seq, payload, attempts FROM audit_spool ORDER BY id LIMIT ?",
                             (limit,)):
            try:
                payload = decode_payload(bytes(r[3]))
            except ValueError:
                raise StorageError(f"audit spool item {r[0]} is corrupt") from None
            out.append(SpoolItem(int(r[0]), str(r[1]), int(r[2]), payload, int(r[4])))
        return out

    def audit_spool_sent(self, ids: Sequence[int]) -> None:
        with self._tx() as db:
            db.executemany("DELETE FROM audit_spool WHERE id = ?", [(i,) for i in ids])

    def audit_spool_attempted(self, ids: Sequence[int]) -> None:
        with self._tx() as db:
            db.executemany("UPDATE audit_spool SET attempts = attempts + 1 WHERE id = ?", [(i,) for i in ids])

    def audit_spool_size(self) -> int:
        return int(self._query("SELECT count(*) FROM audit_spool")[0][0])

    def append_audit(self, events: Sequence[AuditEvent], now_ms: int) -> list[AuditEntry]:
        with self._tx() as db:
            return self._append_audit(db, events, now_ms)

    def audit_head(self) -> tuple[int, bytes] | None:
        rows = self._query("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
        return (int(rows[0][0]), bytes(rows[0][1])) if rows else None

    def search_audit(self, query: AuditQuery) -> list[AuditEntry]:
        return sqlite_search.search_audit(self._query, self._audit_rows, query)

    def audit_range(self, after_seq: int, limit: int) -> list[AuditEntry]:
        return self._audit_rows("WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit))

    def audit_entries(self) -> list[AuditEntry]:
        return self._audit_rows("ORDER BY seq", ())

    def _audit_rows(self, where: str, params: Sequence[object]) -> list[AuditEntry]:
        out = []
        for r in self._query("SELECT seq, at_ms, code, action, outcome, actor, actor_org, study, manifest_id,"
                             f" detail, prev_hash, hash FROM audit {where}", params):
            event = AuditEvent(_event_code(r[2]), str(r[3]), _outcome(r[4]), str(r[5]), str(r[6]), str(r[7]),
                               str(r[8]), str(r[9]))
            out.append(AuditEntry(int(r[0]), int(r[1]), event, bytes(r[10]), bytes(r[11])))
        return out


def _event_code(value: Any) -> EventCode:
    try:
        return EventCode(int(value))
    except ValueError:
        raise StorageError(f"audit entry has unknown event code {value!r}") from None


def _outcome(value: Any) -> Outcome:
    try:
        return Outcome(int(value))
    except ValueError:
        raise StorageError(f"audit entry has unknown outcome {value!r}") from None
