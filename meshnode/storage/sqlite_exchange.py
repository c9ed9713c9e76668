"""Exchange state in the node's SQLite metadata: transfers (progress, and how many blocks each peer
served), the verified receipts of recipient orgs, recall tombstones, and what this node served to whom
(what this node owes other orgs, announcements, recalls and receipts, is in sqlite_retry_queue.py).
Mixed into SqliteMetadataStore (sqlite_metadata.py); the tables are in schema.py."""

from __future__ import annotations

import json

from meshnode.storage.records import ServedRow
from meshnode.storage.sqlite_base import SqliteTables
from protocol.cid import CID
from protocol.lifecycle import ManifestState


class SqliteExchange(SqliteTables):
    def set_transfer(self, manifest_id: CID, state: ManifestState, blocks_done: int, bytes_done: int, now_ms: int) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO transfers (manifest_id, state, blocks_done, bytes_done, updated_ms) VALUES (?,?,?,?,?)"
                " ON CONFLICT (manifest_id) DO UPDATE SET state = excluded.state,"
                " blocks_done = excluded.blocks_done, bytes_done = excluded.bytes_done,"
                " updated_ms = excluded.updated_ms",
                (manifest_id.to_bytes(), state.value, blocks_done, bytes_done, now_ms))

    def transfer(self, manifest_id: CID) -> tuple[str, int, int] | None:
        rows = self._query("SELECT state, blocks_done, bytes_done FROM transfers WHERE manifest_id = ?",
                           (manifest_id.to_bytes(),))
        return (str(rows[0][0]), int(rows[0][1]), int(rows[0][2])) if rows else None

    def save_receipt(self, manifest_id: CID, org: str, receipt: bytes, at_ms: int) -> None:
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO delivery_receipts VALUES (?,?,?,?)",
                       (manifest_id.to_bytes(), org, receipt, at_ms))

    def receipts(self, manifest_id: CID) -> dict[str, bytes]:
        return {str(r[0]): bytes(r[1]) for r in self._query(
            "SELECT org, receipt FROM delivery_receipts WHERE manifest_id = ?", (manifest_id.to_bytes(),))}

    def save_forward_report(self, manifest_id: CID, org: str, seq: int, report: bytes, at_ms: int) -> bool:
        with self._tx() as db:
            cursor = db.execute(
                "INSERT INTO forward_reports (manifest_id, org, seq, report, at_ms) VALUES (?,?,?,?,?)"
                " ON CONFLICT (manifest_id, org) DO UPDATE SET seq = excluded.seq, report = excluded.report,"
                " at_ms = excluded.at_ms WHERE excluded.seq > forward_reports.seq",
                (manifest_id.to_bytes(), org, seq, report, at_ms))
            return cursor.rowcount > 0

    def forward_reports(self, manifest_id: CID) -> dict[str, bytes]:
        return {str(r[0]): bytes(r[1]) for r in self._query(
            "SELECT org, report FROM forward_reports WHERE manifest_id = ?", (manifest_id.to_bytes(),))}

    def served_by(self, manifest_id: CID) -> dict[str, int]:
        rows = self._query("SELECT served_by FROM transfers WHERE manifest_id = ?", (manifest_id.to_bytes(),))
        return {str(k): int(v) for k, v in json.loads(rows[0][0]).items()} if rows else {}

    def record_recall_tombstone(self, manifest_id: CID, sender_org: str, now_ms: int) -> None:
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO recall_tombstones VALUES (?,?,?)",
                       (manifest_id.to_bytes(), sender_org, now_ms))

    def recall_tombstone(self, manifest_id: CID) -> str | None:
        return self._text_of("SELECT sender_org FROM recall_tombstones WHERE manifest_id = ?", manifest_id)

    def add_served(self, manifest_id: CID, org: str, blocks: int, nbytes: int, now_ms: int) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO served VALUES (?,?,?,?,?) ON CONFLICT (manifest_id, org) DO UPDATE SET"
                " blocks = blocks + excluded.blocks, bytes = bytes + excluded.bytes, updated_ms = excluded.updated_ms",
                (manifest_id.to_bytes(), org, blocks, nbytes, now_ms))

    def served(self, manifest_id: CID | None = None) -> list[ServedRow]:
        where, params = ("WHERE manifest_id = ?", (manifest_id.to_bytes(),)) if manifest_id else ("", ())
        return [ServedRow(CID.from_bytes(bytes(r[0])), str(r[1]), int(r[2]), int(r[3]))
                for r in self._query(f"SELECT manifest_id, org, blocks, bytes FROM served {where}"
                                     " ORDER BY manifest_id, org", params)]
