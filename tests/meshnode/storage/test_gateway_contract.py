"""One contract, two implementations: the gateway's SQLite state and the in-memory one behave alike."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from meshnode.storage.gateway_store import Arrival, GatewayStore
from meshnode.storage.memory_gateway import MemoryGatewayStore
from meshnode.storage.sqlite_gateway import SqliteGatewayStore
from protocol.cid import CID

STUDY = "1.2.826.0.1.3680043.8.498.100"
M1 = CID.of(b"manifest 1")
NOW = 1_767_225_600_000


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[GatewayStore]:
    s: GatewayStore = SqliteGatewayStore(tmp_path / "node.db") if request.param == "sqlite" else MemoryGatewayStore()
    yield s
    s.close()


def test_arrivals_are_counted_until_an_announcement_covers_them(store: GatewayStore) -> None:
    store.note_arrivals([Arrival(STUDY, "stroke", 3)], NOW)
    store.note_arrivals([Arrival(STUDY, "stroke", 2)], NOW + 10)
    row = store.announcement(STUDY, "stroke")
    assert row is not None
    assert (row.instances, row.first_ms, row.last_instance_ms, row.revision) == (5, NOW, NOW + 10, 0)
    # an instance arrived after what the share covered: its count stays, for the next revision
    assert not store.mark_announced(STUDY, "stroke", M1, 1, NOW + 5, NOW + 20)
    assert store.announcement(STUDY, "stroke").instances == 5  # type: ignore[union-attr]
    assert store.mark_announced(STUDY, "stroke", M1, 1, NOW + 10, NOW + 20)
    row = store.announcement(STUDY, "stroke")
    assert row is not None and row.manifest_id == M1 and row.instances == 0 and row.announced_ms == NOW + 20
    store.note_arrivals([Arrival(STUDY, "stroke", 1)], NOW + 30)  # a late instance: counted from scratch
    row = store.announcement(STUDY, "stroke")
    assert row is not None and (row.instances, row.first_ms, row.revision) == (1, NOW + 30, 1)
    assert [a.study_uid for a in store.announcements()] == [STUDY]
    store.forget_announcement(STUDY, "stroke")
    assert store.announcement(STUDY, "stroke") is None


def test_sqlite_state_survives_a_reopen(tmp_path: Path) -> None:
    s = SqliteGatewayStore(tmp_path / "node.db")
    s.note_arrivals([Arrival(STUDY, "rgt", 7)], NOW)
    s.close()
    again = SqliteGatewayStore(tmp_path / "node.db")
    assert [a.instances for a in again.announcements()] == [7]
    again.close()
