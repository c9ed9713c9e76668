"""Opening SQLite databases the way every dicom-mesh component does.

WAL journal, synchronous=FULL (commits acknowledge things), foreign keys on,
and numbered schema migrations applied in order at start-up, each in its
own transaction, recorded in `schema_migrations`.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from common.files import DiskFullError
from protocol.errors import StorageError


def db_error(action: str, exc: sqlite3.Error) -> StorageError:
    """A StorageError for a failed SQLite call; a full disk is DiskFullError."""
    if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(exc):
        return DiskFullError(f"{action}: no space left on device (database)")
    return StorageError(f"{action}: {exc}")


class SqliteConnection:
    """One migrated connection with BEGIN IMMEDIATE transactions; errors become StorageError.

    The base of every store kept in a node's SQLite file (metadata, gateway
    state, users, webhook queue). Each instance has its own connection to the
    same WAL file, so a CLI command and the running node can both use one.
    """

    def __init__(self, path: Path, migrations: Sequence[str]) -> None:
        self.path = path
        self._db = open_database(path, migrations)
        self._depth = 0  # open _tx blocks: a nested one joins the outer transaction
        # one thread at a time on the connection: the small stores are called from trio's worker threads,
        # and two threads' transactions on one connection would join each other (or fail to begin)
        self._lock = threading.RLock()

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def atomic(self) -> Iterator[None]:
        """Several writes (store methods) in one transaction: all of them commit, or none."""
        with self._tx():
            yield

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            with self._tx_held() as db:
                yield db

    @contextmanager
    def _tx_held(self) -> Iterator[sqlite3.Connection]:
        if self._depth:  # inside atomic(): joins it (an error still rolls the whole transaction back)
            self._depth += 1
            try:
                yield self._db
            except sqlite3.Error as exc:
                raise db_error("database update failed", exc) from exc
            finally:
                self._depth -= 1
            return
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise db_error("database busy or unavailable", exc) from exc
        self._depth = 1
        try:
            yield self._db
        except sqlite3.Error as exc:
            self._rollback()
            raise db_error("database update failed", exc) from exc
        except BaseException:
            self._rollback()
            raise
        finally:
            self._depth = 0
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise db_error("commit failed", exc) from exc

    def _rollback(self) -> None:
        # SQLite has already rolled back on some errors (SQLITE_FULL, SQLITE_IOERR).
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def _query(self, sql: str, params: Sequence[object] | dict[str, object] = ()) -> list[Any]:
        try:
            with self._lock:
                return list(self._db.execute(sql, params).fetchall())
        except sqlite3.Error as exc:
            raise db_error("database query failed", exc) from exc


def open_database(path: Path, migrations: Sequence[str]) -> sqlite3.Connection:
    """Open (creating if needed) and migrate a database. migrations[i] is version i+1."""
    try:
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL) STRICT"
        )
        (current,) = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
        if current > len(migrations):
            raise StorageError(
                f"{path} has schema version {current}, newer than this software knows ({len(migrations)})"
            )
        for version in range(current + 1, len(migrations) + 1):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _statements(migrations[version - 1]):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?, datetime('now'))",
                    (version,),
                )
            except sqlite3.Error:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        return conn
    except sqlite3.Error as exc:
        raise StorageError(f"cannot open database {path}: {exc}") from exc


def _statements(script: str) -> list[str]:
    """The script's statements; a CREATE TRIGGER's body (statements ending in `;` up to END) stays whole."""
    out: list[str] = []
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            statement = pending.strip()[:-1].strip()
            if statement:
                out.append(statement)
            pending = ""
    if pending.strip(" \n\t;"):
        out.append(pending.strip()[:-1].strip())
    return out
