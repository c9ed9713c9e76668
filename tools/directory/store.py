"""The directory's SQLite database: certificates, signed address records, the roster.

It stores signed bytes exactly as received; every reader verifies them again.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from protocol.errors import StorageError
from common.sqlite_db import open_database

MIGRATIONS = (
    """
    CREATE TABLE certificates (
        serial TEXT PRIMARY KEY,
        peer_id TEXT NOT NULL,
        org_code TEXT NOT NULL,
        not_after INTEGER NOT NULL,
        raw BLOB NOT NULL
    ) STRICT;
    CREATE INDEX certificates_by_org ON certificates (org_code);
    CREATE INDEX certificates_by_peer ON certificates (peer_id);
    CREATE TABLE address_records (
        peer_id TEXT PRIMARY KEY,
        seq INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        raw BLOB NOT NULL
    ) STRICT;
    CREATE TABLE roster (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        version INTEGER NOT NULL,
        raw BLOB NOT NULL
    ) STRICT
    """,
    # 2: the roster's rotation chain from a pinned anchor, so a restart can verify it again
    """
    ALTER TABLE roster ADD COLUMN chain BLOB
    """,
)


@dataclass(frozen=True)
class StoredCertificate:
    serial: str
    peer_id: str
    raw: bytes


@dataclass(frozen=True)
class StoredRecord:
    seq: int
    raw: bytes


class DirectoryStore:
    """Synchronous; the service calls it from one worker thread at a time."""

    def __init__(self, path: Path) -> None:
        self._db = open_database(path, MIGRATIONS)

    def close(self) -> None:
        self._db.close()

    # RosterVersionStore
    def highest_roster_version(self) -> int:
        row = self._db.execute("SELECT version FROM roster WHERE id = 1").fetchone()
        return int(row[0]) if row else 0

    def record_roster_version(self, version: int) -> None:
        """The version is recorded together with the bytes in save_roster."""

    def save_roster(self, version: int, raw: bytes, chain: bytes) -> None:
        """`chain` is RosterGuard.cache_bytes(): what restore() verifies at the next start."""
        try:
            self._db.execute(
                "INSERT INTO roster (id, version, raw, chain) VALUES (1, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET version = excluded.version, raw = excluded.raw,"
                " chain = excluded.chain WHERE excluded.version > roster.version",
                (version, raw, chain),
            )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot store roster: {exc}") from exc

    def roster(self) -> bytes | None:
        row = self._db.execute("SELECT raw FROM roster WHERE id = 1").fetchone()
        return bytes(row[0]) if row else None

    def roster_chain(self) -> bytes | None:
        """The stored roster with its rotation chain (the roster alone if stored before migration 2)."""
        row = self._db.execute("SELECT coalesce(chain, raw) FROM roster WHERE id = 1").fetchone()
        return bytes(row[0]) if row else None

    def save_registration(
        self, serial: str, peer_id: str, org_code: str, not_after: int, cert_raw: bytes,
        seq: int, expires_at: int, record_raw: bytes,
    ) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT OR REPLACE INTO certificates VALUES (?, ?, ?, ?, ?)",
                (serial, peer_id, org_code, not_after, cert_raw),
            )
            self._db.execute(
                "INSERT OR REPLACE INTO address_records VALUES (?, ?, ?, ?)",
                (peer_id, seq, expires_at, record_raw),
            )
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise StorageError(f"cannot store registration: {exc}") from exc

    def record(self, peer_id: str) -> StoredRecord | None:
        row = self._db.execute(
            "SELECT seq, raw FROM address_records WHERE peer_id = ?", (peer_id,)
        ).fetchone()
        return StoredRecord(int(row[0]), bytes(row[1])) if row else None

    def certificates_of_org(self, org_code: str, now: int, limit: int) -> list[StoredCertificate]:
        rows = self._db.execute(
            "SELECT serial, peer_id, raw FROM certificates WHERE org_code = ? AND not_after >= ?"
            " ORDER BY not_after DESC LIMIT ?",
            (org_code, now, limit),
        ).fetchall()
        return [StoredCertificate(s, p, bytes(r)) for s, p, r in rows]

    def certificates_by_org(
        self, after: str, now: int, limit: int, revoked: Collection[str] = ()
    ) -> list[StoredCertificate]:
        """One live certificate per organisation: its newest that the roster does not revoke (an org whose
        newest node was revoked stays listed through another), org codes after `after` in order."""
        out: list[StoredCertificate] = []
        last = None
        cursor = self._db.execute(
            "SELECT serial, peer_id, raw, org_code FROM certificates WHERE org_code > ? AND not_after >= ?"
            " ORDER BY org_code, not_after DESC, serial",
            (after, now),
        )
        for s, p, r, org in cursor:
            if org == last or s in revoked:
                continue
            if len(out) >= limit:
                break
            out.append(StoredCertificate(s, p, bytes(r)))
            last = org
        cursor.close()
        return out

    def certificates_of_peer(self, peer_id: str, now: int, limit: int) -> list[StoredCertificate]:
        rows = self._db.execute(
            "SELECT serial, peer_id, raw FROM certificates WHERE peer_id = ? AND not_after >= ?"
            " ORDER BY not_after DESC LIMIT ?",
            (peer_id, now, limit),
        ).fetchall()
        return [StoredCertificate(s, p, bytes(r)) for s, p, r in rows]
