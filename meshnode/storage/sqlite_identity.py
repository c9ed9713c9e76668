"""Identity state in the node's SQLite metadata: the highest roster version accepted (versions only
go up) and the peers seen, with their orgs. Mixed into SqliteMetadataStore (sqlite_metadata.py); the
tables are in schema.py."""

from __future__ import annotations

from meshnode.storage.sqlite_base import SqliteTables


class SqliteIdentity(SqliteTables):
    def highest_roster_version(self) -> int:
        rows = self._query("SELECT highest_version FROM roster_state WHERE id = 1")
        return int(rows[0][0]) if rows else 0

    def record_roster_version(self, version: int) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO roster_state VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET"
                " highest_version = max(highest_version, excluded.highest_version)",
                (version,),
            )

    def record_peer(self, peer_id: str, org: str, now_ms: int) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO peers VALUES (?,?,?)", (peer_id, org, now_ms))

    def peers(self) -> list[tuple[str, str, int]]:
        return [(str(p), str(o), int(t)) for p, o, t in
                self._query("SELECT peer_id, org, last_seen_ms FROM peers ORDER BY org, peer_id")]
