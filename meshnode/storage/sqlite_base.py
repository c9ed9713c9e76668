"""A table group in the node's SQLite file with its own connection (users, webhook queue).

The metadata store owns its connection and the database thread; these small
stores open another connection to the same WAL file, so a CLI command (say
`meshnode users add`) and the running node can both use them.
"""

from __future__ import annotations

from pathlib import Path

from common.sqlite_db import SqliteConnection
from meshnode.storage.sqlite_metadata import MIGRATIONS


class SqliteTables(SqliteConnection):
    def __init__(self, path: Path) -> None:
        super().__init__(path, MIGRATIONS)
