"""Study requests in the node's SQLite metadata (request_store.py says what they are). Mixed into
SqliteMetadataStore; the table is in schema.py."""

from __future__ import annotations

from collections.abc import Sequence

from meshnode.storage.request_store import INCOMING, OUTGOING, Cursor, RequestRow, TooManyPendingRequestsError
from meshnode.storage.sqlite_base import SqliteTables
from protocol.study_request import RequestState

_COLUMNS = ("request_id, direction, requester_org, holder_org, state, raw, certificate, created_ms, expires_at,"
            " manifests, reason, decided_by, updated_ms, response, response_delivered")


def _row(r: Sequence[object]) -> RequestRow:
    raw, cert, response = r[5], r[6], r[13]
    return RequestRow(str(r[0]), str(r[1]), str(r[2]), str(r[3]), RequestState(str(r[4])),
                      raw if isinstance(raw, bytes) else b"", cert if isinstance(cert, bytes) else b"",
                      int(str(r[7])), int(str(r[8])), str(r[9]), str(r[10]), str(r[11]), int(str(r[12])),
                      response if isinstance(response, bytes) else b"", bool(r[14]))


def _values(row: RequestRow) -> tuple[object, ...]:
    return (row.request_id, row.direction, row.requester_org, row.holder_org, row.state.value, row.raw,
            row.certificate, row.created_ms, row.expires_at, row.manifests, row.reason, row.decided_by,
            row.updated_ms, row.response, int(row.response_delivered))


class SqliteRequests(SqliteTables):
    def save_request(self, row: RequestRow, max_pending_per_org: int = 0) -> bool:
        with self._tx() as db:
            if max_pending_per_org and row.direction == INCOMING:
                exists = db.execute("SELECT 1 FROM study_requests WHERE request_id = ? AND direction = ?",
                                    (row.request_id, row.direction)).fetchone()
                (pending,) = db.execute("SELECT COUNT(*) FROM study_requests WHERE direction = ? AND state = ?"
                                        " AND requester_org = ?", (INCOMING, RequestState.PENDING.value,
                                                                   row.requester_org)).fetchone()
                if exists is None and int(pending) >= max_pending_per_org:
                    raise TooManyPendingRequestsError(
                        f"{row.requester_org} has {max_pending_per_org} undecided requests here already; wait for"
                        " them to be decided")
            return db.execute(f"INSERT OR IGNORE INTO study_requests ({_COLUMNS}) VALUES"
                              " (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", _values(row)).rowcount == 1

    def request(self, request_id: str, direction: str) -> RequestRow | None:
        rows = self._query(f"SELECT {_COLUMNS} FROM study_requests WHERE request_id = ? AND direction = ?",
                           (request_id, direction))
        return _row(rows[0]) if rows else None

    def delete_request(self, request_id: str, direction: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM study_requests WHERE request_id = ? AND direction = ?", (request_id, direction))

    def requests(self, direction: str | None = None, state: RequestState | None = None,
                 limit: int = 500, before: Cursor | None = None) -> list[RequestRow]:
        where: list[str] = []
        args: list[object] = []
        if before is not None:
            where.append("(created_ms < ? OR (created_ms = ? AND request_id < ?))")
            args += [before[0], before[0], before[1]]
        if direction is not None:
            where.append("direction = ?")
            args.append(direction)
        if state is not None:
            where.append("state = ?")
            args.append(state.value)
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        rows = self._query(f"SELECT {_COLUMNS} FROM study_requests{clause} ORDER BY created_ms DESC, request_id"
                           " DESC LIMIT ?", (*args, limit))
        return [_row(r) for r in rows]

    def update_request(self, row: RequestRow, expected: RequestState) -> bool:
        sets = ", ".join(f"{c.strip()} = ?" for c in _COLUMNS.split(",")[2:])
        with self._tx() as db:
            return db.execute(f"UPDATE study_requests SET {sets} WHERE request_id = ? AND direction = ?"
                              " AND state = ?", (*_values(row)[2:], row.request_id, row.direction,
                                                 expected.value)).rowcount == 1

    def set_response_delivered(self, request_id: str, delivered: bool) -> None:
        with self._tx() as db:
            db.execute("UPDATE study_requests SET response_delivered = ? WHERE request_id = ? AND direction = ?",
                       (int(delivered), request_id, INCOMING))

    def expired_requests(self, direction: str, expires_before: int, limit: int = 500) -> list[RequestRow]:
        return [_row(r) for r in self._query(
            f"SELECT {_COLUMNS} FROM study_requests WHERE direction = ? AND state = ? AND expires_at < ?"
            " ORDER BY expires_at, request_id LIMIT ?", (direction, RequestState.PENDING.value, expires_before, limit))]

    def purge_requests(self, updated_before_ms: int) -> int:
        with self._tx() as db:
            return int(db.execute(
                "DELETE FROM study_requests WHERE state != ? AND updated_ms < ? AND (direction = ? OR"
                " response_delivered = 1)", (RequestState.PENDING.value, updated_before_ms, OUTGOING)).rowcount)

    def undelivered_responses(self, limit: int = 100) -> list[RequestRow]:
        return [_row(r) for r in self._query(
            f"SELECT {_COLUMNS} FROM study_requests WHERE direction = ? AND response != X'' AND"
            " response_delivered = 0 ORDER BY updated_ms, request_id LIMIT ?", (INCOMING, limit))]
