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
    ForwardInstance,
    ForwardItem,
    ForwardProgress,
    ForwardResult,
    ForwardState,
)
from meshnode.storage.schema import MIGRATIONS
from protocol.cid import CID
from protocol.errors import StorageError

_ANN_COLUMNS = ("study_uid, route, state, instances, first_ms, last_instance_ms, revision, manifest_id, "
                "announced_ms, attempts, next_attempt_ms, last_error")
_ITEM_COLUMNS = ("manifest_id, destination, seq, sop_instance_uid, digest, study_uid, priority, state, attempts,"
                 " next_attempt_ms, last_error, status, updated_ms")


def _announcement(r: Any) -> Announcement:
    return Announcement(
        study_uid=str(r[0]), route=str(r[1]), state=AnnouncementState(str(r[2])), instances=int(r[3]),
        first_ms=int(r[4]), last_instance_ms=int(r[5]), revision=int(r[6]),
        manifest_id=CID.from_bytes(bytes(r[7])) if r[7] is not None else None,
        announced_ms=int(r[8]) if r[8] is not None else None, attempts=int(r[9]), next_attempt_ms=int(r[10]),
        last_error=str(r[11]))


def _item(r: Any) -> ForwardItem:
    try:
        state = ForwardState(str(r[7]))
    except ValueError:
        raise StorageError(f"forward item in unknown state {r[7]!r}") from None
    return ForwardItem(
        manifest_id=CID.from_bytes(bytes(r[0])), destination=str(r[1]), seq=int(r[2]), sop_instance_uid=str(r[3]),
        digest=bytes(r[4]), study_uid=str(r[5]), priority=int(r[6]), state=state, attempts=int(r[8]),
        next_attempt_ms=int(r[9]), last_error=str(r[10]), status=int(r[11]) if r[11] is not None else None,
        updated_ms=int(r[12]))


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

    # -- forward queue -------------------------------------------------------------------------
    def enqueue_forward(self, manifest_id: CID, study_uid: str, destination: str, priority: int,
                        instances: Sequence[ForwardInstance], now_ms: int) -> int:
        mid = manifest_id.to_bytes()
        new = 0
        with self._tx() as db:
            for seq, inst in enumerate(instances):
                held = db.execute(
                    "SELECT 1 FROM forward_items WHERE destination = ? AND sop_instance_uid = ? AND digest = ?"
                    " AND state = 'sent' LIMIT 1", (destination, inst.sop_instance_uid, inst.digest)).fetchone()
                state, note = (ForwardState.SENT, "already forwarded with an earlier manifest") if held else (
                    ForwardState.WAITING, "")
                cur = db.execute(
                    f"INSERT OR IGNORE INTO forward_items ({_ITEM_COLUMNS}, enqueued_ms)"
                    " VALUES (?,?,?,?,?,?,?,?,0,0,?,NULL,?,?)",
                    (mid, destination, seq, inst.sop_instance_uid, inst.digest, study_uid, priority, state.value,
                     note, now_ms, now_ms))
                if cur.rowcount and state is ForwardState.WAITING:
                    new += 1
        return new

    def release_forward(self, manifest_id: CID, now_ms: int) -> int:
        with self._tx() as db:
            cur = db.execute("UPDATE forward_items SET state = 'pending', next_attempt_ms = 0, updated_ms = ?"
                             " WHERE manifest_id = ? AND state = 'waiting'", (now_ms, manifest_id.to_bytes()))
            return cur.rowcount

    def waiting_manifests(self) -> list[CID]:
        return [CID.from_bytes(bytes(r[0])) for r in self._query(
            "SELECT DISTINCT manifest_id FROM forward_items WHERE state = 'waiting' ORDER BY manifest_id")]

    def forward_due(self, destination: str, now_ms: int, limit: int) -> list[ForwardItem]:
        return [_item(r) for r in self._query(
            f"SELECT {_ITEM_COLUMNS} FROM forward_items WHERE destination = ? AND state = 'pending'"
            " AND next_attempt_ms <= ? ORDER BY priority, enqueued_ms, manifest_id, seq LIMIT ?",
            (destination, now_ms, limit))]

    def next_forward_ms(self, destination: str) -> int | None:
        rows = self._query("SELECT min(next_attempt_ms) FROM forward_items WHERE destination = ? AND state = 'pending'",
                           (destination,))
        return int(rows[0][0]) if rows and rows[0][0] is not None else None

    def record_forward(self, results: Sequence[ForwardResult], now_ms: int) -> None:
        with self._tx() as db:
            db.executemany(
                "UPDATE forward_items SET state = ?, attempts = ?, next_attempt_ms = ?, last_error = ?, status = ?,"
                " updated_ms = ? WHERE manifest_id = ? AND destination = ? AND sop_instance_uid = ?"
                " AND state = 'pending'",
                [(r.state.value, r.attempts, r.next_attempt_ms, r.last_error[:300], r.status, now_ms,
                  r.manifest_id.to_bytes(), r.destination, r.sop_instance_uid) for r in results])

    def defer_forward(self, destination: str, next_attempt_ms: int, error: str, now_ms: int) -> None:
        with self._tx() as db:
            db.execute("UPDATE forward_items SET next_attempt_ms = max(next_attempt_ms, ?), last_error = ?,"
                       " updated_ms = ? WHERE destination = ? AND state = 'pending'",
                       (next_attempt_ms, error[:300], now_ms, destination))

    def cancel_forward(self, manifest_id: CID, now_ms: int) -> int:
        with self._tx() as db:
            cur = db.execute("UPDATE forward_items SET state = 'cancelled', updated_ms = ?, last_error = 'recalled'"
                             " WHERE manifest_id = ? AND state IN ('waiting', 'pending', 'failed')",
                             (now_ms, manifest_id.to_bytes()))
            return cur.rowcount

    def retry_forward(self, manifest_id: CID | None, destination: str | None, now_ms: int) -> int:
        where: list[str] = ["state = 'failed'"]
        params: list[object] = []
        if manifest_id is not None:
            where.append("manifest_id = ?")
            params.append(manifest_id.to_bytes())
        if destination is not None:
            where.append("destination = ?")
            params.append(destination)
        with self._tx() as db:
            cur = db.execute(f"UPDATE forward_items SET state = 'pending', attempts = 0, next_attempt_ms = 0,"
                             f" updated_ms = ? WHERE {' AND '.join(where)}", (now_ms, *params))
            return cur.rowcount

    def forward_items(self, manifest_id: CID) -> list[ForwardItem]:
        return [_item(r) for r in self._query(
            f"SELECT {_ITEM_COLUMNS} FROM forward_items WHERE manifest_id = ? ORDER BY destination, seq",
            (manifest_id.to_bytes(),))]

    def forward_progress(self, manifest_id: CID) -> dict[str, ForwardProgress]:
        return progress_of(self.forward_items(manifest_id))

    def forward_counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for dest, state, n in self._query(
                "SELECT destination, state, count(*) FROM forward_items GROUP BY destination, state"):
            out.setdefault(str(dest), {})[str(state)] = int(n)
        return out


def progress_of(items: Sequence[ForwardItem]) -> dict[str, ForwardProgress]:
    """Per destination, how far a manifest's items have come (shared by both implementations)."""
    by_dest: dict[str, list[ForwardItem]] = {}
    for item in items:
        by_dest.setdefault(item.destination, []).append(item)
    out = {}
    for dest, group in sorted(by_dest.items()):
        counts = {s: sum(1 for i in group if i.state is s) for s in ForwardState}
        latest = max(group, key=lambda i: i.updated_ms)
        errors = [i for i in group if i.last_error and i.state in (ForwardState.PENDING, ForwardState.FAILED)]
        out[dest] = ForwardProgress(
            total=len(group), waiting=counts[ForwardState.WAITING], pending=counts[ForwardState.PENDING],
            sent=counts[ForwardState.SENT], failed=counts[ForwardState.FAILED],
            cancelled=counts[ForwardState.CANCELLED],
            last_error=max(errors, key=lambda i: i.updated_ms).last_error if errors else "",
            updated_ms=latest.updated_ms)
    return out
