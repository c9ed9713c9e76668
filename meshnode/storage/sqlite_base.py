"""A table group in the node's SQLite file with its own connection (users, webhook queue).

The metadata store owns its connection and the database thread; these small
stores open another connection to the same WAL file, so a CLI command (say
`meshnode users add`) and the running node can both use them. Transactions
are BEGIN IMMEDIATE, errors become StorageError (disk full: DiskFullError).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from meshnode.sqlite_db import open_database
from meshnode.storage.sqlite_metadata import MIGRATIONS, db_error


class SqliteTables:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = open_database(path, MIGRATIONS)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise db_error("database busy or unavailable", exc) from exc
        try:
            yield self._db
        except sqlite3.Error as exc:
            self._rollback()
            raise db_error("database update failed", exc) from exc
        except BaseException:
            self._rollback()
            raise
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise db_error("commit failed", exc) from exc

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def _query(self, sql: str, params: Sequence[object] | dict[str, object] = ()) -> list[Any]:
        try:
            return list(self._db.execute(sql, params).fetchall())
        except sqlite3.Error as exc:
            raise db_error("database query failed", exc) from exc
