"""A table group in the node's SQLite file (node.db; its schema is schema.py) on its own connection.

The metadata store (sqlite_metadata.py and its parts), users and the webhook
queue derive from it. The metadata store's connection is the node's, used
from the database thread; the small stores open another connection to the
same WAL file, so a CLI command (say `meshnode users add`) and the running
node can both use them.
"""

from __future__ import annotations

from pathlib import Path

from common.sqlite_db import SqliteConnection
from meshnode.storage.schema import MIGRATIONS
from protocol.cid import CID


class SqliteTables(SqliteConnection):
    def __init__(self, path: Path) -> None:
        super().__init__(path, MIGRATIONS)

    def _text_of(self, query: str, manifest_id: CID) -> str | None:
        """The one text column `query` selects for a manifest, if it has a row."""
        rows = self._query(query, (manifest_id.to_bytes(),))
        return str(rows[0][0]) if rows else None
