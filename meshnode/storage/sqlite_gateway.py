"""GatewayStore in node.db (tables from migration 3), on its own connection or the metadata store's.

The node opens it next to SqliteMetadataStore and uses both from the one
database thread; WAL and synchronous=FULL as everywhere (sqlite_db.py).
With `share=` (the node's SqliteMetadataStore) it uses that store's
connection and transactions: a write inside the metadata store's
`atomic()` joins its transaction, so the intake commits an arrival and its
instances with one fsync of the WAL instead of two.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from contextlib import _GeneratorContextManager
from pathlib import Path
from typing import Any

from common.sqlite_db import SqliteConnection
from meshnode.storage.gateway_store import Announcement, Arrival
from meshnode.storage.schema import MIGRATIONS
from protocol.cid import CID

_ANN_COLUMNS = "study_uid, route, instances, first_ms, last_instance_ms, revision, manifest_id, announced_ms"


def _announcement(r: Any) -> Announcement:
    return Announcement(
        study_uid=str(r[0]), route=str(r[1]), instances=int(r[2]), first_ms=int(r[3]), last_instance_ms=int(r[4]),
        revision=int(r[5]), manifest_id=CID.from_bytes(bytes(r[6])) if r[6] is not None else None,
        announced_ms=int(r[7]) if r[7] is not None else None)


class SqliteGatewayStore(SqliteConnection):
    def __init__(self, path: Path, *, share: SqliteConnection | None = None) -> None:
        self._shared = share
        if share is None:
            super().__init__(path, MIGRATIONS)
            return
        if share.path.resolve() != path.resolve():
            raise ValueError(f"a gateway store in {path} cannot share the connection to {share.path}")
        self.path = path
        self._db = share._db  # migrated already by its owner, with MIGRATIONS
        self._depth = 0
        self._lock = share._lock  # one connection, one lock

    def _tx(self) -> _GeneratorContextManager[sqlite3.Connection]:
        if self._shared is not None:
            return self._shared._tx()  # joins the owner's atomic() when one is open
        return super()._tx()

    def writes_with(self, store: object) -> bool:
        return self._shared is not None and self._shared is store

    def close(self) -> None:
        if self._shared is None:  # a shared connection is its owner's to close
            super().close()

    # -- announcements ---------------------------------------------------------------------
    def note_arrivals(self, arrivals: Sequence[Arrival], now_ms: int) -> None:
        with self._tx() as db:
            for a in arrivals:
                db.execute(
                    f"INSERT INTO gateway_announcements ({_ANN_COLUMNS}) VALUES (?,?,?,?,?,0,NULL,NULL)"
                    " ON CONFLICT (study_uid, route) DO UPDATE SET"
                    "  first_ms = CASE WHEN instances = 0 THEN excluded.first_ms ELSE first_ms END,"
                    "  instances = instances + excluded.instances,"
                    "  last_instance_ms = max(last_instance_ms, excluded.last_instance_ms)",
                    (a.study_uid, a.route, a.count, now_ms, now_ms))

    def announcements(self) -> list[Announcement]:
        return [_announcement(r) for r in self._query(
            f"SELECT {_ANN_COLUMNS} FROM gateway_announcements ORDER BY last_instance_ms, study_uid, route")]

    def announcement(self, study_uid: str, route: str) -> Announcement | None:
        rows = self._query(f"SELECT {_ANN_COLUMNS} FROM gateway_announcements WHERE study_uid = ? AND route = ?",
                           (study_uid, route))
        return _announcement(rows[0]) if rows else None

    def mark_announced(self, study_uid: str, route: str, manifest_id: CID, revision: int, covered_ms: int,
                       now_ms: int) -> bool:
        with self._tx() as db:
            db.execute(
                "UPDATE gateway_announcements SET manifest_id = ?, revision = ?, announced_ms = ?,"
                " instances = CASE WHEN last_instance_ms <= ? THEN 0 ELSE instances END"
                " WHERE study_uid = ? AND route = ?",
                (manifest_id.to_bytes(), revision, now_ms, covered_ms, study_uid, route))
            row = db.execute("SELECT last_instance_ms FROM gateway_announcements WHERE study_uid = ? AND route = ?",
                             (study_uid, route)).fetchone()
        return row is not None and int(row[0]) <= covered_ms

    def forget_announcement(self, study_uid: str, route: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM gateway_announcements WHERE study_uid = ? AND route = ?", (study_uid, route))
