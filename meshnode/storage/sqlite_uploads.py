"""UploadStore in the node's SQLite file (tables `patient_uploads` and `patient_upload_files`)."""

from __future__ import annotations

from typing import Any

from meshnode.storage.sqlite_base import SqliteTables
from meshnode.storage.upload_store import (
    CHECKED,
    HELD,
    RECEIVING,
    FileRow,
    LinkUsage,
    UploadRow,
)

_UPLOAD = "upload_id, link_id, name, length, received, state, created_ms"
_FILE = ("link_id, upload_id, name, outcome, reason, sha256, size, study_uid, series_uid, sop_uid, patient_name, "
         "patient_id, study_date, study_description, modality, state, decided_by, created_ms, archived, person")


def _upload(r: Any) -> UploadRow:
    return UploadRow(str(r[0]), str(r[1]), str(r[2]), int(r[3]), int(r[4]), str(r[5]), int(r[6]))


def _file(r: Any) -> FileRow:
    t = [str(v) for v in r]
    return FileRow(t[0], t[1], t[2], t[3], t[4], t[5], int(r[6]), t[7], t[8], t[9], t[10], t[11], t[12], t[13],
                   t[14], t[15], t[16], int(r[17]), bool(r[18]), t[19], int(r[20]))


def _values(f: FileRow) -> tuple[object, ...]:
    return (f.link_id, f.upload_id, f.name, f.outcome, f.reason, f.sha256, f.size, f.study_uid, f.series_uid,
            f.sop_uid, f.patient_name, f.patient_id, f.study_date, f.study_description, f.modality, f.state,
            f.decided_by, f.created_ms, int(f.archived), f.person)


class SqliteUploadStore(SqliteTables):
    def create_upload(self, row: UploadRow) -> None:
        with self._tx() as db:
            db.execute(f"INSERT INTO patient_uploads ({_UPLOAD}) VALUES (?,?,?,?,?,?,?)",
                       (row.upload_id, row.link_id, row.name, row.length, row.received, row.state, row.created_ms))

    def upload(self, link_id: str, upload_id: str) -> UploadRow | None:
        rows = self._query(f"SELECT {_UPLOAD} FROM patient_uploads WHERE upload_id = ? AND link_id = ?",
                           (upload_id, link_id))
        return _upload(rows[0]) if rows else None

    def set_received(self, upload_id: str, received: int) -> None:
        with self._tx() as db:
            db.execute("UPDATE patient_uploads SET received = ? WHERE upload_id = ?", (received, upload_id))

    def delete_upload(self, upload_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM patient_uploads WHERE upload_id = ?", (upload_id,))

    def receiving(self, link_id: str) -> list[UploadRow]:
        return [_upload(r) for r in self._query(
            f"SELECT {_UPLOAD} FROM patient_uploads WHERE link_id = ? AND state = ? ORDER BY created_ms, rowid",
            (link_id, RECEIVING))]

    def stale_uploads(self, before_ms: int) -> list[UploadRow]:
        return [_upload(r) for r in self._query(
            f"SELECT {_UPLOAD} FROM patient_uploads WHERE state = ? AND created_ms < ? ORDER BY created_ms",
            (RECEIVING, before_ms))]

    def usage(self, link_id: str) -> LinkUsage:
        [(declared, receiving)] = self._query(
            "SELECT COALESCE(SUM(length), 0), COALESCE(SUM(state = ?), 0) FROM patient_uploads WHERE link_id = ?",
            (RECEIVING, link_id))
        [(unpacked, files)] = self._query(
            "SELECT COALESCE(SUM(CASE WHEN archived THEN size ELSE 0 END), 0), COUNT(*)"
            " FROM patient_upload_files WHERE link_id = ?", (link_id,))
        return LinkUsage(int(declared) + int(unpacked), int(receiving) + int(files))

    def finish(self, upload_id: str, files: list[FileRow]) -> None:
        with self._tx() as db:
            db.execute("UPDATE patient_uploads SET state = ? WHERE upload_id = ?", (CHECKED, upload_id))
            db.executemany(f"INSERT INTO patient_upload_files ({_FILE}) VALUES ({','.join('?' * 20)})",
                           [_values(f) for f in files])

    def files(self, link_id: str) -> list[FileRow]:
        return [_file(r) for r in self._query(
            f"SELECT {_FILE}, file_id FROM patient_upload_files WHERE link_id = ? ORDER BY file_id", (link_id,))]

    def held_links(self) -> list[str]:
        return [str(r[0]) for r in self._query(
            "SELECT DISTINCT link_id FROM patient_upload_files WHERE state = ? ORDER BY link_id", (HELD,))]

    def decide(self, link_id: str, state: str, by: str, file_ids: list[int] | None = None) -> list[FileRow]:
        with self._tx() as db:
            rows = [_file(r) for r in db.execute(
                f"SELECT {_FILE}, file_id FROM patient_upload_files WHERE link_id = ? AND state = ?"
                " ORDER BY file_id", (link_id, HELD)).fetchall()]
            if file_ids is not None:
                wanted = set(file_ids)
                rows = [r for r in rows if r.file_id in wanted]
            db.executemany("UPDATE patient_upload_files SET state = ?, decided_by = ? WHERE file_id = ?",
                           [(state, by, r.file_id) for r in rows])
        return rows
