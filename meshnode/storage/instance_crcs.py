"""Instance CRC-32s, persisted (issue 14, MEDIA review C1): the patient's ZIP needs each instance's CRC-32
in its data descriptor and central directory record; computing it takes a verified pass over the instance,
so it is kept across restarts, keyed by the instance's sha256 digest (the same bytes always have the same
CRC-32) with the size it was computed over (a record whose size differs is not served a stale CRC).

Table `instance_crcs` (migration "instance crc32" in schema.py). Rows are never wrong for their digest, so
they are never deleted with an instance: a digest ingested again finds its CRC-32; about 60 bytes a row.

Unlike the rest of the metadata store these two methods may be called from any thread (a download's
worker thread learns CRC-32s as it streams): the SQLite implementation uses its own connection to the same
WAL file behind a lock, so it never joins (or commits) a transaction the database thread has open."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from typing import Protocol

from common.sqlite_db import db_error
from meshnode.storage.sqlite_base import SqliteTables

#: digests asked for in one SQL statement
_BATCH = 500


class InstanceCrcStore(Protocol):
    def instance_crcs(self, digests: Iterable[bytes]) -> dict[bytes, tuple[int, int]]:
        """For those of `digests` with a known CRC-32: digest -> (size, crc32)."""
        ...

    def record_instance_crcs(self, rows: Sequence[tuple[bytes, int, int]]) -> None:
        """Remember (digest, size, crc32) rows (a known digest is left as it is)."""
        ...


class _CrcTable:
    """Not a bare dict on the store, so the memory store's atomic() (which restores its dicts on an error)
    leaves it alone, as SQLite's own connection is outside the database thread's transaction."""

    def __init__(self) -> None:
        self.rows: dict[bytes, tuple[int, int]] = {}
        self.lock = threading.Lock()


class MemoryInstanceCrcs:
    def __init__(self) -> None:
        self._crc_table = _CrcTable()

    def instance_crcs(self, digests: Iterable[bytes]) -> dict[bytes, tuple[int, int]]:
        t = self._crc_table
        with t.lock:
            return {d: t.rows[d] for d in digests if d in t.rows}

    def record_instance_crcs(self, rows: Sequence[tuple[bytes, int, int]]) -> None:
        t = self._crc_table
        with t.lock:
            for digest, size, crc in rows:
                t.rows.setdefault(digest, (size, crc))


class SqliteInstanceCrcs(SqliteTables):
    _crc_db: sqlite3.Connection | None = None
    _crc_db_lock = threading.Lock()  # class-wide: guards opening and every use of any store's _crc_db

    def _crc_connection(self) -> sqlite3.Connection:
        if self._crc_db is None:
            # the main connection already created and migrated the file
            db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA busy_timeout=5000")
            self._crc_db = db
        return self._crc_db

    def instance_crcs(self, digests: Iterable[bytes]) -> dict[bytes, tuple[int, int]]:
        wanted = list(dict.fromkeys(digests))
        out: dict[bytes, tuple[int, int]] = {}
        with self._crc_db_lock:
            try:
                db = self._crc_connection()
                for i in range(0, len(wanted), _BATCH):
                    chunk = wanted[i:i + _BATCH]
                    marks = ",".join("?" * len(chunk))
                    for digest, size, crc in db.execute(
                            f"SELECT digest, size, crc32 FROM instance_crcs WHERE digest IN ({marks})", chunk):
                        out[bytes(digest)] = (int(size), int(crc))
            except sqlite3.Error as exc:
                raise db_error("database query failed", exc) from exc
        return out

    def record_instance_crcs(self, rows: Sequence[tuple[bytes, int, int]]) -> None:
        if not rows:
            return
        with self._crc_db_lock:
            try:
                db = self._crc_connection()
                db.execute("BEGIN IMMEDIATE")
                try:
                    db.executemany("INSERT OR IGNORE INTO instance_crcs (digest, size, crc32) VALUES (?, ?, ?)",
                                   list(rows))
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise db_error("database update failed", exc) from exc

    def close(self) -> None:
        with self._crc_db_lock:
            if self._crc_db is not None:
                self._crc_db.close()
                self._crc_db = None
        super().close()
