"""GatewayStore in node.db (tables from migration 3), on its own connection.

The node opens it next to SqliteMetadataStore and uses both from the one
database thread; WAL and synchronous=FULL as everywhere (sqlite_db.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.sqlite_db import SqliteConnection
from meshnode.storage.gateway_store import (
    Announcement,
    AnnouncementState,
    Arrival,
)
from meshnode.storage.schema import MIGRATIONS
from protocol.cid import CID

_ANN_COLUMNS = ("study_uid, route, state, instances, first_ms, last_instance_ms, revision, manifest_id, "
                "announced_ms, attempts, next_attempt_ms, last_error")


def _announcement(r: Any) -> Announcement:
    return Announcement(
        study_uid=str(r[0]), route=str(r[1]), state=AnnouncementState(str(r[2])), instances=int(r[3]),
        first_ms=int(r[4]), last_instance_ms=int(r[5]), revision=int(r[6]),
        manifest_id=CID.from_bytes(bytes(r[7])) if r[7] is not None else None,
        announced_ms=int(r[8]) if r[8] is not None else None, attempts=int(r[9]), next_attempt_ms=int(r[10]),
        last_error=str(r[11]))


class SqliteGatewayStore(SqliteConnection):
    def __init__(self, path: Path) -> None:
        super().__init__(path, MIGRATIONS)

    # -- announcements ---------------------------------------------------------------------
    def note_arrivals(self, arrivals: Sequence[Arrival], now_ms: int) -> None:
        with self._tx() as db:
            for a in arrivals:
                db.execute(
                    f"INSERT INTO gateway_announcements ({_ANN_COLUMNS}) VALUES (?,?,'pending',?,?,?,0,NULL,NULL,0,0,'')"
                    " ON CONFLICT (study_uid, route) DO UPDATE SET"
                    "  instances = CASE WHEN state = 'announced' THEN excluded.instances"
                    "                   ELSE instances + excluded.instances END,"
                    "  first_ms = CASE WHEN state = 'announced' THEN excluded.first_ms ELSE first_ms END,"
                    "  last_instance_ms = max(last_instance_ms, excluded.last_instance_ms),"
                    "  state = 'pending'",
                    (a.study_uid, a.route, a.count, now_ms, now_ms))

    def announcements(self, state: AnnouncementState | None = None) -> list[Announcement]:
        where, params = ("WHERE state = ?", (state.value,)) if state else ("", ())
        return [_announcement(r) for r in self._query(
            f"SELECT {_ANN_COLUMNS} FROM gateway_announcements {where} ORDER BY last_instance_ms, study_uid, route",
            params)]

    def announcement(self, study_uid: str, route: str) -> Announcement | None:
        rows = self._query(f"SELECT {_ANN_COLUMNS} FROM gateway_announcements WHERE study_uid = ? AND route = ?",
                           (study_uid, route))
        return _announcement(rows[0]) if rows else None

    def mark_announced(self, study_uid: str, route: str, manifest_id: CID, revision: int, covered_ms: int,
                       now_ms: int) -> bool:
        with self._tx() as db:
            db.execute(
                "UPDATE gateway_announcements SET manifest_id = ?, revision = ?, announced_ms = ?, attempts = 0,"
                " next_attempt_ms = 0, last_error = '',"
                " state = CASE WHEN last_instance_ms <= ? THEN 'announced' ELSE state END"
                " WHERE study_uid = ? AND route = ?",
                (manifest_id.to_bytes(), revision, now_ms, covered_ms, study_uid, route))
            row = db.execute("SELECT state FROM gateway_announcements WHERE study_uid = ? AND route = ?",
                             (study_uid, route)).fetchone()
        return row is not None and row[0] == AnnouncementState.ANNOUNCED.value

    def announce_failed(self, study_uid: str, route: str, error: str, next_attempt_ms: int) -> None:
        with self._tx() as db:
            db.execute("UPDATE gateway_announcements SET attempts = attempts + 1, next_attempt_ms = ?,"
                       " last_error = ? WHERE study_uid = ? AND route = ?",
                       (next_attempt_ms, error[:300], study_uid, route))

    def forget_announcement(self, study_uid: str, route: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM gateway_announcements WHERE study_uid = ? AND route = ?", (study_uid, route))
