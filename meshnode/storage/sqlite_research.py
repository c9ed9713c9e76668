"""Research shares and re-link tables in the node's SQLite metadata (research_store.py says what they are).
Mixed into SqliteMetadataStore; the tables are in schema.py."""

from __future__ import annotations

from collections.abc import Sequence

from meshnode.storage.research_store import RelinkEntry, ResearchShareRow, ResearchState
from meshnode.storage.sqlite_base import SqliteTables
from protocol.cid import CID

_COLUMNS = ("share_id, original_study_uid, project, request, state, created_ms, reasons, research_study_uid,"
            " manifest_id, decided_by, decision, decided_ms")


def _row(r: Sequence[object]) -> ResearchShareRow:
    manifest = r[8]
    return ResearchShareRow(str(r[0]), str(r[1]), str(r[2]), str(r[3]), ResearchState(str(r[4])), int(str(r[5])),
                            str(r[6]), str(r[7]), CID.from_bytes(manifest) if isinstance(manifest, bytes) else None,
                            str(r[9]), str(r[10]), int(str(r[11])))


def _values(row: ResearchShareRow) -> tuple[object, ...]:
    return (row.share_id, row.original_study_uid, row.project, row.request, row.state.value, row.created_ms,
            row.reasons, row.research_study_uid, row.manifest_id.to_bytes() if row.manifest_id else None,
            row.decided_by, row.decision, row.decided_ms)


class SqliteResearch(SqliteTables):
    def save_research_share(self, row: ResearchShareRow) -> None:
        with self._tx() as db:
            db.execute(f"INSERT OR REPLACE INTO research_shares ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                       _values(row))

    def update_research_share(self, row: ResearchShareRow, expected: ResearchState) -> bool:
        sets = ", ".join(f"{c.strip()} = ?" for c in _COLUMNS.split(",")[1:])
        with self._tx() as db:
            return db.execute(f"UPDATE research_shares SET {sets} WHERE share_id = ? AND state = ?",
                              (*_values(row)[1:], row.share_id, expected.value)).rowcount == 1

    def research_copies(self) -> set[str]:
        return {str(r[0]) for r in self._query(
            "SELECT DISTINCT research_study_uid FROM research_shares WHERE research_study_uid != ''")}

    def research_copy_of(self, study_uid: str) -> ResearchShareRow | None:
        if not study_uid:
            return None
        rows = self._query(f"SELECT {_COLUMNS} FROM research_shares WHERE research_study_uid = ? LIMIT 1",
                           (study_uid,))
        return _row(rows[0]) if rows else None

    def research_share(self, share_id: str) -> ResearchShareRow | None:
        rows = self._query(f"SELECT {_COLUMNS} FROM research_shares WHERE share_id = ?", (share_id,))
        return _row(rows[0]) if rows else None

    def research_shares(self, state: ResearchState | None = None) -> list[ResearchShareRow]:
        if state is None:
            rows = self._query(f"SELECT {_COLUMNS} FROM research_shares ORDER BY created_ms, share_id")
        else:
            rows = self._query(f"SELECT {_COLUMNS} FROM research_shares WHERE state = ? ORDER BY created_ms, share_id",
                               (state.value,))
        return [_row(r) for r in rows]

    def research_share_for_manifest(self, manifest_id: CID) -> ResearchShareRow | None:
        rows = self._query(f"SELECT {_COLUMNS} FROM research_shares WHERE manifest_id = ?", (manifest_id.to_bytes(),))
        return _row(rows[0]) if rows else None

    def add_relink(self, project: str, entries: Sequence[RelinkEntry]) -> None:
        with self._tx() as db:
            db.executemany("INSERT OR IGNORE INTO deid_relink VALUES (?,?,?,?)",
                           [(project, kind, pseudonym, original) for kind, pseudonym, original in entries])

    def relink(self, project: str) -> list[RelinkEntry]:
        return [(str(k), str(p), str(o)) for k, p, o in self._query(
            "SELECT kind, pseudonym, original FROM deid_relink WHERE project = ? ORDER BY kind, pseudonym",
            (project,))]

    def has_relink(self, project: str) -> bool:
        return bool(self._query("SELECT 1 FROM deid_relink WHERE project = ? LIMIT 1", (project,)))
