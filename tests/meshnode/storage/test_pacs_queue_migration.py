"""Migration 9 (pacs queue): an existing node's PACS forwards (the old forward_items table) carry over into the
shared retry queue, and the retry queue's lookup by key prefix (a manifest's forward items)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from common.sqlite_db import open_database
from meshnode.gateway.pacs_queue import KEYS, ForwardKey, manifest_prefix, queue_name
from meshnode.storage.memory_metadata import MemoryMetadataStore
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.retry_queue import QueuedRow
from meshnode.storage.schema import MIGRATIONS
from meshnode.storage.sqlite_metadata import SqliteMetadataStore
from protocol.cid import CID
from protocol.outbox import DeliveryState

NOW_MS = 1_767_225_600_000
RECEIPTED, COMPLETE, RECALLED = CID.of(b"receipted"), CID.of(b"complete"), CID.of(b"recalled")


def digest(n: int) -> bytes:
    return bytes([n]) * 32


def _old_database(path: Path) -> None:
    """A node database as the schema before the PACS queue moved left it, with a forward in every old state."""
    before = next(i for i, m in enumerate(MIGRATIONS) if "DROP TABLE forward_items" in m)
    open_database(path, MIGRATIONS[:before]).close()
    db = sqlite3.connect(path)
    for mid, state in ((RECEIPTED, "receipted"), (COMPLETE, "complete"), (RECALLED, "recalled")):
        db.execute("INSERT INTO manifests (manifest_id, study_uid, direction, sender_org, recipients, revision, state,"
                   " created_at, expires_at, raw) VALUES (?, '1.2.3', 'received', 'RGT', 'RJ1', 1, ?, 0, 9, x'00')",
                   (mid.to_bytes(), state))
    rows = [(RECEIPTED, "main", "1.1", "sent", 1, 0, 0), (RECEIPTED, "main", "1.2", "pending", 2, NOW_MS + 8000, 0xA700),
            (RECEIPTED, "main", "1.3", "failed", 5, NOW_MS, 0xA900), (RECEIPTED, "other", "1.1", "waiting", 0, 0, None),
            (COMPLETE, "main", "2.1", "waiting", 0, 0, None), (RECALLED, "main", "3.1", "cancelled", 0, 0, None),
            (RECALLED, "main", "3.2", "sent", 1, 0, 0)]
    for seq, (mid, dest, uid, state, attempts, next_ms, status) in enumerate(rows):
        db.execute("INSERT INTO forward_items (manifest_id, destination, seq, sop_instance_uid, digest, study_uid,"
                   " priority, state, attempts, next_attempt_ms, last_error, status, enqueued_ms, updated_ms)"
                   " VALUES (?,?,?,?,?,'1.2.3',1,?,?,?,?,?,?,?)",
                   (mid.to_bytes(), dest, seq, uid, digest(seq), state, attempts, next_ms, f"err {uid}", status,
                    NOW_MS, NOW_MS + seq))
    db.commit()
    db.close()


def test_an_existing_nodes_pacs_forwards_carry_over(tmp_path: Path) -> None:
    _old_database(tmp_path / "node.db")
    store = SqliteMetadataStore(tmp_path / "node.db")
    try:
        got = {(q, KEYS.decode(r.key)): (r.state, r.attempts, r.next_attempt_ms, r.last_error, r.ref)
               for q in ("main", "other") for r in store.queue_rows(queue_name(q))}
        payloads = {r.payload for q in ("main", "other") for r in store.queue_rows(queue_name(q))}
        tables = {str(r[0]) for r in store._query("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        store.close()

    def k(mid: CID, uid: str, seq: int) -> ForwardKey:
        return ForwardKey(mid, uid, digest(seq))

    P, D, F = DeliveryState.PENDING, DeliveryState.DELIVERED, DeliveryState.FAILED
    assert got == {
        ("main", k(RECEIPTED, "1.1", 0)): (D, 1, 0, "err 1.1", f"1.1 {digest(0).hex()}"),
        ("main", k(RECEIPTED, "1.2", 1)): (P, 2, NOW_MS + 8000, "err 1.2", f"1.2 {digest(1).hex()}"),
        ("main", k(RECEIPTED, "1.3", 2)): (F, 5, NOW_MS, "err 1.3", f"1.3 {digest(2).hex()}"),
        # waiting for a receipt already delivered (a stop before the old release): due now
        ("other", k(RECEIPTED, "1.1", 3)): (P, 0, 0, "err 1.1", f"1.1 {digest(3).hex()}"),
        # waiting for a receipt not yet delivered: not queued (its delivery queues it); cancelled: removed
        ("main", k(RECALLED, "3.2", 6)): (D, 1, 0, "err 3.2", f"3.2 {digest(6).hex()}"),
    }
    assert payloads == {bytes([1])}  # the priority rank (urgent), for the order of the queue
    assert "forward_items" not in tables


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> MetadataStore:
    return SqliteMetadataStore(tmp_path / "node.db") if request.param == "sqlite" else MemoryMetadataStore()


def test_rows_by_key_prefix(store: MetadataStore) -> None:
    keys = [ForwardKey(m, uid, digest(1)) for m in (RECEIPTED, COMPLETE) for uid in ("1.1", "1.2")]
    store.queue_add([QueuedRow("pacs:main", KEYS.encode(key), KEYS.ref(key), DeliveryState.PENDING, 0, 0, 0)
                     for key in keys])
    got = [KEYS.decode(r.key) for r in store.queue_rows("pacs:main", key_prefix=manifest_prefix(COMPLETE))]
    assert got == [k for k in keys if k.manifest_id == COMPLETE]
    assert store.queue_rows("pacs:main", key_prefix="zz") == [] and store.queue_rows("pacs:other") == []
    assert len(store.queue_rows("pacs:main", ref=KEYS.ref(keys[0]))) == 2  # the same instance, two manifests
    store.close()
