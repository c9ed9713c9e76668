"""Opening SQLite databases the way every dicom-mesh component does.

WAL journal, synchronous=FULL (commits acknowledge things), foreign keys on,
and numbered schema migrations applied in order at start-up, each in its
own transaction, recorded in `schema_migrations`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from protocol.errors import StorageError


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
    return [s.strip() for s in script.split(";") if s.strip()]
