"""Migration 10 (announcer queue): an existing node's announcements (gateway_announcements with its own state
column) carry over into the shared retry queue; the data stays in gateway_announcements, the state goes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from common.sqlite_db import open_database
from meshnode.gateway.announcer import ANNOUNCE_QUEUE, KEYS
from meshnode.storage.schema import MIGRATIONS
from meshnode.storage.sqlite_gateway import SqliteGatewayStore
from meshnode.storage.sqlite_metadata import SqliteMetadataStore
from protocol.cid import CID
from protocol.outbox import DeliveryState

NOW_MS = 1_767_225_600_000
M1 = CID.of(b"manifest 1")


def _old_database(path: Path) -> None:
    before = next(i for i, m in enumerate(MIGRATIONS) if "DROP COLUMN state" in m)
    open_database(path, MIGRATIONS[:before]).close()
    db = sqlite3.connect(path)
    rows = [("1.2.1", "stroke", "pending", 3, None, None, 0, 0, 0, ""),
            ("1.2.2", "stroke", "pending", 2, M1.to_bytes(), NOW_MS - 100, 1, 4, NOW_MS + 9000, "unavailable: x"),
            ("1.2.3", "rgt", "announced", 5, M1.to_bytes(), NOW_MS + 50, 2, 0, 0, "")]
    for study, route, state, n, mid, announced, revision, attempts, next_ms, error in rows:
        db.execute("INSERT INTO gateway_announcements (study_uid, route, state, instances, first_ms, last_instance_ms,"
                   " revision, manifest_id, announced_ms, attempts, next_attempt_ms, last_error)"
                   " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                   (study, route, state, n, NOW_MS, NOW_MS + 10, revision, mid, announced, attempts, next_ms, error))
    db.commit()
    db.close()


def test_an_existing_nodes_announcements_carry_over(tmp_path: Path) -> None:
    _old_database(tmp_path / "node.db")
    store = SqliteMetadataStore(tmp_path / "node.db")
    gateway = SqliteGatewayStore(tmp_path / "node.db")
    try:
        got = {KEYS.decode(r.key): (r.ref, r.state, r.attempts, r.next_attempt_ms, r.last_error)
               for r in store.queue_rows(ANNOUNCE_QUEUE)}
        assert got == {
            ("1.2.1", "stroke"): ("1.2.1", DeliveryState.PENDING, 0, NOW_MS + 10, ""),
            ("1.2.2", "stroke"): ("1.2.2", DeliveryState.PENDING, 4, NOW_MS + 9000, "unavailable: x"),
            ("1.2.3", "rgt"): ("1.2.3", DeliveryState.DELIVERED, 0, NOW_MS + 10, ""),
        }
        columns = {str(r[1]) for r in store._query("PRAGMA table_info(gateway_announcements)")}
        assert "state" not in columns and "attempts" not in columns
        announced = gateway.announcement("1.2.3", "rgt")
        assert announced is not None and (announced.revision, announced.manifest_id, announced.instances) == (2, M1, 5)
        assert [(a.study_uid, a.revision) for a in gateway.announcements()] == [
            ("1.2.1", 0), ("1.2.2", 1), ("1.2.3", 2)]
    finally:
        gateway.close()
        store.close()
