"""One unreadable stored row (a later version's state, a tampered file) is logged and skipped: the rest is
read, so the node starts (runtime._resume reads both of these). A real SQLite file, tampered with sqlite3."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from meshnode.node.delivery import QUEUE, stored_deliveries
from meshnode.storage.records import ManifestRow
from meshnode.storage.retry_queue import QueuedRow
from meshnode.storage.sqlite_metadata import SqliteMetadataStore
from protocol.cid import CID
from protocol.lifecycle import ManifestState
from protocol.outbox import DeliveryState

GOOD, BAD = CID.of(b"good"), CID.of(b"bad")


def test_a_manifest_row_in_an_unknown_state_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = SqliteMetadataStore(tmp_path / "node.db")
    for m in (GOOD, BAD):
        store.save_manifest(ManifestRow(m, "1.2.3.4", "received", "RXX", 1, ManifestState.ANNOUNCED, 0, 2**40,
                                        b"raw", ("RGT",)), [])
    db = sqlite3.connect(tmp_path / "node.db")
    db.execute("UPDATE manifests SET state = 'superseded' WHERE manifest_id = ?", (BAD.to_bytes(),))
    db.commit()
    db.close()
    assert [m.manifest_id for m in store.manifests("received")] == [GOOD]
    assert store.manifest(BAD) is None
    assert "skipped" in caplog.text and "1.2.3.4" not in caplog.text
    store.close()


def test_a_delivery_row_with_a_malformed_key_is_skipped(tmp_path: Path) -> None:
    store = SqliteMetadataStore(tmp_path / "node.db")
    ref = GOOD.to_bytes().hex()
    store.queue_add([QueuedRow(QUEUE, "receipt zz RXX", ref, DeliveryState.PENDING, 0, 0, 0, ""),
                     QueuedRow(QUEUE, f"receipt {ref} RXX", ref, DeliveryState.PENDING, 0, 0, 0, "")])
    assert [r.key.org for r in stored_deliveries(store, GOOD)] == ["RXX"]
    store.close()
