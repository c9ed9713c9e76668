"""RetryQueueStore.queue_reopen (SQLite and memory alike): an item that ended is queued again, durably; a
pending one is only pushed later; one being attempted is left alone."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from meshnode.storage.memory_metadata import MemoryMetadataStore
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.retry_queue import QueuedRow
from meshnode.storage.sqlite_metadata import SqliteMetadataStore
from protocol.outbox import DeliveryState

NOW_MS = 1_767_225_600_000


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataStore]:
    s: MetadataStore = SqliteMetadataStore(tmp_path / "node.db") if request.param == "sqlite" else MemoryMetadataStore()
    yield s
    s.close()


def pending(key: str, due_ms: int) -> QueuedRow:
    return QueuedRow("q", key, "ref", DeliveryState.PENDING, 0, due_ms, NOW_MS, "")


def test_reopen_ended_items_and_push_pending_ones_later(store: MetadataStore) -> None:
    assert store.queue_reopen([pending("new", NOW_MS + 5)]) == ["new"]  # not stored: stored
    store.queue_add([pending("done", NOW_MS), pending("gave-up", NOW_MS), pending("busy", NOW_MS)])
    store.queue_save([
        QueuedRow("q", "done", "ref", DeliveryState.DELIVERED, 3, NOW_MS, NOW_MS, ""),
        QueuedRow("q", "gave-up", "ref", DeliveryState.FAILED, 9, NOW_MS, NOW_MS, "refused"),
        QueuedRow("q", "busy", "ref", DeliveryState.ATTEMPTING, 1, NOW_MS + 60, NOW_MS, ""),
    ])
    assert sorted(store.queue_reopen([pending(k, NOW_MS + 30) for k in ("done", "gave-up", "busy")])) == [
        "done", "gave-up"]
    rows = {r.key: r for r in store.queue_rows("q")}
    for key in ("done", "gave-up"):
        assert (rows[key].state, rows[key].attempts, rows[key].next_attempt_ms, rows[key].last_error) == (
            DeliveryState.PENDING, 0, NOW_MS + 30, "")
    assert (rows["busy"].state, rows["busy"].attempts) == (DeliveryState.ATTEMPTING, 1)
    # pending: later only
    assert store.queue_reopen([pending("new", NOW_MS + 1)]) == []
    assert store.queue_rows("q", key_prefix="new")[0].next_attempt_ms == NOW_MS + 5
    store.queue_reopen([replace(pending("new", NOW_MS + 50), updated_ms=NOW_MS + 40)])
    assert store.queue_rows("q", key_prefix="new")[0].next_attempt_ms == NOW_MS + 50
