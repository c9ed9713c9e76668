"""UploadStore: SQLite and memory behave alike (IDs scoped to their link, usage, one decision wins)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from meshnode.storage.sqlite_uploads import SqliteUploadStore
from meshnode.storage.upload_store import (
    ACCEPTED,
    HELD,
    RECEIVING,
    REJECTED,
    FileRow,
    LinkUsage,
    MemoryUploadStore,
    UploadRow,
    UploadStore,
)


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[UploadStore]:
    if request.param == "memory":
        yield MemoryUploadStore()
        return
    s = SqliteUploadStore(tmp_path / "node.db")
    yield s
    s.close()


def test_uploads_are_scoped_to_their_link_and_counted(store: UploadStore) -> None:
    store.create_upload(UploadRow("a" * 32, "L1", "x.zip", 1000, 0, RECEIVING, 1))
    assert store.upload("L2", "a" * 32) is None
    store.set_received("a" * 32, 400)
    row = store.upload("L1", "a" * 32)
    assert row is not None and row.received == 400
    assert store.usage("L1") == LinkUsage(1000, 1) and store.usage("L2") == LinkUsage(0, 0)
    assert [u.received for u in store.receiving("L1")] == [400] and store.receiving("L2") == []
    store.finish("a" * 32, [FileRow("L1", "a" * 32, "x.zip/a", "accepted", "", size=5000, state=HELD,
                                    archived=True),
                            FileRow("L1", "a" * 32, "x.zip/b", "refused", "not DICOM")])
    assert store.usage("L1") == LinkUsage(6000, 2) and store.receiving("L1") == []
    assert [f.name for f in store.files("L1")] == ["x.zip/a", "x.zip/b"]
    assert store.held_links() == ["L1"]


def test_one_decision_wins(store: UploadStore) -> None:
    store.create_upload(UploadRow("b" * 32, "L1", "a.dcm", 10, 10, RECEIVING, 1))
    store.finish("b" * 32, [FileRow("L1", "b" * 32, "a.dcm", "accepted", "", size=10, state=HELD)])
    assert len(store.decide("L1", ACCEPTED, "alice")) == 1
    assert store.decide("L1", REJECTED, "bob") == []
    assert store.files("L1")[0].state == ACCEPTED and store.files("L1")[0].decided_by == "alice"
    assert store.held_links() == []


def test_a_decision_moves_only_the_files_the_decider_saw(store: UploadStore) -> None:
    store.create_upload(UploadRow("c" * 32, "L1", "a.dcm", 10, 10, RECEIVING, 1))
    store.finish("c" * 32, [FileRow("L1", "c" * 32, "a.dcm", "accepted", "", size=10, state=HELD)])
    seen = [f.file_id for f in store.files("L1")]
    store.create_upload(UploadRow("d" * 32, "L1", "b.dcm", 10, 10, RECEIVING, 2))
    store.finish("d" * 32, [FileRow("L1", "d" * 32, "b.dcm", "accepted", "", size=10, state=HELD)])
    assert [f.name for f in store.decide("L1", ACCEPTED, "alice", seen)] == ["a.dcm"]
    assert [f.state for f in store.files("L1")] == [ACCEPTED, HELD]


def test_stale_uploads_are_those_still_receiving_and_old(store: UploadStore) -> None:
    store.create_upload(UploadRow("e" * 32, "L1", "old", 10, 0, RECEIVING, 100))
    store.create_upload(UploadRow("f" * 32, "L1", "new", 10, 0, RECEIVING, 900))
    store.create_upload(UploadRow("0" * 32, "L1", "done", 0, 0, RECEIVING, 50))
    store.finish("0" * 32, [])
    assert [u.name for u in store.stale_uploads(500)] == ["old"]
