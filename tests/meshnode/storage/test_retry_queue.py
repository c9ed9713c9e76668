"""The durable retry queue (meshnode.storage.retry_queue): one contract for SQLite and memory, and the
migration that carries an existing node's deliveries (the old `deliveries` table) into it."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from meshnode.node.delivery import KEYS, QUEUE
from common.sqlite_db import open_database
from meshnode.storage.memory_metadata import MemoryMetadataStore
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.retry_queue import QueuedRow
from meshnode.storage.schema import MIGRATIONS
from meshnode.storage.sqlite_metadata import SqliteMetadataStore
from protocol.cid import CID
from protocol.outbox import DeliveryKey, DeliveryKind, DeliveryState

NOW_MS = 1_767_225_600_000


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataStore]:
    s: MetadataStore = SqliteMetadataStore(tmp_path / "node.db") if request.param == "sqlite" else MemoryMetadataStore()
    yield s
    s.close()


def row(key: str, ref: str = "m1", payload: bytes | None = None) -> QueuedRow:
    return QueuedRow("q", key, ref, DeliveryState.PENDING, 0, NOW_MS, NOW_MS, "", payload)


def test_add_save_remove(store: MetadataStore) -> None:
    assert store.queue_add([row("a", payload=b"doc"), row("b", ref="m2")]) == ["a", "b"]
    assert store.queue_add([replace(row("a"), payload=b"other", attempts=7), row("c")]) == ["c"]  # "a": as it was
    store.queue_remove("q", ["c"])
    assert store.queue_rows("q") == [row("a", payload=b"doc"), row("b", ref="m2")]
    assert store.queue_rows("q", ref="m2") == [row("b", ref="m2")] and store.queue_rows("other") == []
    saved = replace(row("a"), state=DeliveryState.FAILED, attempts=3, next_attempt_ms=NOW_MS + 9,
                    updated_ms=NOW_MS + 9, last_error="x" * 900, payload=None, ref="ignored")
    store.queue_save([saved, row("gone")])  # "gone" was never added: not added by a save
    a = store.queue_rows("q", ref="m1")
    assert a == [replace(saved, ref="m1", payload=b"doc", last_error="x" * 500)]
    assert store.queue_rows("q", states=[DeliveryState.PENDING]) == [row("b", ref="m2")]
    assert [r.key for r in store.queue_rows("q", states=[DeliveryState.FAILED, DeliveryState.DELIVERED])] == ["a"]
    store.queue_remove("q", ["a", "never"])
    assert [r.key for r in store.queue_rows("q")] == ["b"]


def test_payloads_of_delivered_items_are_dropped_and_their_keys_kept(store: MetadataStore) -> None:
    store.queue_add([row("old", payload=b"body"), row("new", payload=b"body"), row("todo", payload=b"body")])
    store.queue_save([replace(row("old"), state=DeliveryState.DELIVERED, updated_ms=NOW_MS + 1),
                      replace(row("new"), state=DeliveryState.DELIVERED, updated_ms=NOW_MS + 9)])
    assert store.queue_drop_payloads("q", NOW_MS + 5) == 1 and store.queue_drop_payloads("q", NOW_MS + 5) == 0
    assert {r.key: r.payload for r in store.queue_rows("q")} == {"old": b"", "new": b"body", "todo": b"body"}
    assert store.queue_add([row("old", payload=b"again")]) == []  # never queued twice


def _old_database(path: Path) -> tuple[CID, CID]:
    """A node database as the schema before the outbox left it, with one delivery in every old state."""
    outbox = next(i for i, m in enumerate(MIGRATIONS) if "CREATE TABLE retry_queue" in m)
    open_database(path, MIGRATIONS[:outbox]).close()
    db = sqlite3.connect(path)
    sent, recalled = CID.of(b"sent"), CID.of(b"recalled")
    for mid, state in ((sent, "sent"), (recalled, "recalled")):
        db.execute("INSERT INTO manifests (manifest_id, study_uid, direction, sender_org, recipients, revision, state,"
                   " created_at, expires_at, raw) VALUES (?, '1.2.3', 'sent', 'RGT', 'RAA,RBB,RCC,RDD', 1, ?, 0, 9, x'00')",
                   (mid.to_bytes(), state))
    rows = [(sent, "RAA", "pending", 3, None), (sent, "RBB", "announced", 1, None), (sent, "RCC", "delivered", 1, b"rcpt"),
            (sent, "RDD", "failed", 1, None), (recalled, "RAA", "recall-pending", 2, b"recall"),
            (recalled, "RBB", "recalled", 1, b"recall"), (recalled, "RCC", "failed", 4, b"recall")]
    for mid, org, state, attempts, doc in rows:
        db.execute("INSERT INTO deliveries VALUES (?,?,?,?,?,?,?,?)",
                   (mid.to_bytes(), org, state, attempts, NOW_MS + attempts, f"err {org}", doc, NOW_MS))
    for i, (hook, state) in enumerate((("https://a/h", "pending"), ("https://a/h", "sent"), ("https://b/h", "failed"))):
        db.execute("INSERT INTO webhook_queue (hook, event_key, event, body, state, attempts, next_attempt_ms,"
                   " last_error, created_ms, updated_ms) VALUES (?,?,?,?,?,?,?,?,?,?)",
                   (hook, f"arrived:m{i}:RJ1", "arrived", b"{}", state, i, NOW_MS + i, "", NOW_MS, NOW_MS))
    db.commit()
    db.close()
    return sent, recalled


def test_an_existing_nodes_deliveries_carry_over(tmp_path: Path) -> None:
    sent, recalled = _old_database(tmp_path / "node.db")
    store = SqliteMetadataStore(tmp_path / "node.db")
    try:
        got = {KEYS.decode(r.key): (r.state, r.attempts, r.next_attempt_ms, r.last_error, r.payload, r.ref)
               for r in store.queue_rows(QUEUE)}
        receipts = store.receipts(sent)
    finally:
        store.close()

    def k(kind: DeliveryKind, mid: CID, org: str) -> DeliveryKey:
        return DeliveryKey(kind, mid, org)

    A, R = DeliveryKind.ANNOUNCE, DeliveryKind.RECALL
    P, D, F = DeliveryState.PENDING, DeliveryState.DELIVERED, DeliveryState.FAILED
    assert got == {
        k(A, sent, "RAA"): (P, 3, NOW_MS + 3, "err RAA", None, KEYS.ref(k(A, sent, "RAA"))),
        k(A, sent, "RBB"): (D, 1, NOW_MS + 1, "err RBB", None, KEYS.ref(k(A, sent, "RBB"))),
        k(A, sent, "RCC"): (D, 1, NOW_MS + 1, "err RCC", None, KEYS.ref(k(A, sent, "RCC"))),
        k(A, sent, "RDD"): (F, 1, NOW_MS + 1, "err RDD", None, KEYS.ref(k(A, sent, "RDD"))),
        k(R, recalled, "RAA"): (P, 2, NOW_MS + 2, "err RAA", b"recall", KEYS.ref(k(R, recalled, "RAA"))),
        k(R, recalled, "RBB"): (D, 1, NOW_MS + 1, "err RBB", b"recall", KEYS.ref(k(R, recalled, "RBB"))),
        k(R, recalled, "RCC"): (F, 4, NOW_MS + 4, "err RCC", b"recall", KEYS.ref(k(R, recalled, "RCC"))),
    }
    assert receipts == {"RCC": b"rcpt"}


def test_an_existing_nodes_webhook_notifications_carry_over(tmp_path: Path) -> None:
    _old_database(tmp_path / "node.db")
    store = SqliteMetadataStore(tmp_path / "node.db")
    try:
        got = [(r.queue, r.key, r.ref, r.state, r.attempts, r.payload) for p in ("webhook:https://a/h",
               "webhook:https://b/h") for r in store.queue_rows(p)]
        counts = store.queue_counts("webhook:")
    finally:
        store.close()
    assert got == [("webhook:https://a/h", "arrived:m0:RJ1", "arrived", DeliveryState.PENDING, 0, b"{}"),
                   ("webhook:https://a/h", "arrived:m1:RJ1", "arrived", DeliveryState.DELIVERED, 1, b"{}"),
                   ("webhook:https://b/h", "arrived:m2:RJ1", "arrived", DeliveryState.FAILED, 2, b"{}")]
    assert counts == {("webhook:https://a/h", DeliveryState.PENDING): 1,
                      ("webhook:https://a/h", DeliveryState.DELIVERED): 1,
                      ("webhook:https://b/h", DeliveryState.FAILED): 1}
