"""Asks for an upload link in the node's SQLite file (meshnode.patient.upload_requests says what they are; the
table upload_requests is in meshnode/storage/schema.py). Its own connection to node.db, like the link store."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from meshnode.patient.upload_requests import PENDING, PER_CLIENT, Added, UploadRequest, check_row
from meshnode.storage.sqlite_base import SqliteTables

_COLUMNS = ("request_id, person, email, code_to, message, client, created_at, state, decided_by, decided_at,"
            " outcome")


def _row(r: Sequence[object]) -> UploadRequest:
    s = [str(v) for v in r]
    return UploadRequest(request_id=s[0], person=s[1], email=s[2], code_to=s[3], message=s[4], client=s[5],
                         created_at=float(s[6]), state=s[7], decided_by=s[8], decided_at=float(s[9]),
                         outcome=s[10])


def _values(x: UploadRequest) -> tuple[object, ...]:
    return (x.request_id, x.person, x.email, x.code_to, x.message, x.client, x.created_at, x.state, x.decided_by,
            x.decided_at, x.outcome)


class SqliteUploadRequestStore(SqliteTables):
    def add(self, request: UploadRequest, max_pending: int, per_client: int = PER_CLIENT) -> tuple[Added, str]:
        check_row(request)
        with self._tx() as db:
            same = db.execute("SELECT request_id FROM upload_requests WHERE state = ? AND lower(email) = lower(?)"
                              " AND lower(code_to) = lower(?) LIMIT 1",
                              (PENDING, request.email, request.code_to)).fetchone()
            if same is not None:
                return "duplicate", str(same[0])
            count = db.execute("SELECT count(*) FROM upload_requests WHERE state = ?", (PENDING,)).fetchone()[0]
            if int(count) >= max_pending:
                return "full", ""
            mine = db.execute("SELECT count(*) FROM upload_requests WHERE state = ? AND client = ?",
                              (PENDING, request.client)).fetchone()[0]
            if int(mine) >= per_client:
                return "client full", ""
            try:
                db.execute(f"INSERT INTO upload_requests ({_COLUMNS}) VALUES ({','.join('?' * 11)})",
                           _values(request))
            except sqlite3.IntegrityError as exc:
                raise ValueError(f"upload request {request.request_id}: refused by the schema ({exc})") from None
            return "added", request.request_id

    def get(self, request_id: str) -> UploadRequest | None:
        rows = self._query(f"SELECT {_COLUMNS} FROM upload_requests WHERE request_id = ?", (request_id,))
        return _row(rows[0]) if rows else None

    def pending(self, limit: int = 500) -> list[UploadRequest]:
        return [_row(r) for r in self._query(f"SELECT {_COLUMNS} FROM upload_requests WHERE state = ? ORDER BY"
                                             " created_at, rowid LIMIT ?", (PENDING, limit))]

    def decide(self, request: UploadRequest, expected_state: str) -> bool:
        check_row(request)
        with self._tx() as db:
            return db.execute("UPDATE upload_requests SET state = ?, decided_by = ?, decided_at = ?, outcome = ?"
                              " WHERE request_id = ? AND state = ?",
                              (request.state, request.decided_by, request.decided_at, request.outcome,
                               request.request_id, expected_state)).rowcount == 1
