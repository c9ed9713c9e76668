"""Study requests (meshnode.storage.request_store): the SQLite store and the in-memory one behave alike."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from meshnode.storage.memory_metadata import MemoryMetadataStore
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.request_store import INCOMING, OUTGOING, RequestRow
from meshnode.storage.sqlite_metadata import SqliteMetadataStore
from protocol.study_request import RequestState


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataStore]:
    s: MetadataStore = SqliteMetadataStore(tmp_path / "node.db") if request.param == "sqlite" else MemoryMetadataStore()
    yield s
    s.close()


ROW = RequestRow("00" * 16, INCOMING, "RGT", "RJ1", RequestState.PENDING, b"signed", b"cert", 10, 1000)


def test_a_request_is_stored_once_per_direction(store: MetadataStore) -> None:
    assert store.save_request(ROW)
    assert not store.save_request(replace(ROW, raw=b"other"))  # a replay writes nothing
    assert store.request(ROW.request_id, INCOMING) == ROW
    assert store.request(ROW.request_id, OUTGOING) is None
    assert store.save_request(replace(ROW, direction=OUTGOING, created_ms=20))
    assert [r.direction for r in store.requests()] == [OUTGOING, INCOMING]  # newest first
    assert [r.direction for r in store.requests(INCOMING, RequestState.PENDING)] == [INCOMING]
    assert store.requests(INCOMING, RequestState.APPROVED) == []
    store.delete_request(ROW.request_id, OUTGOING)
    assert store.request(ROW.request_id, OUTGOING) is None


def test_a_decision_is_a_compare_and_set_and_responses_are_tracked(store: MetadataStore) -> None:
    store.save_request(ROW)
    approved = replace(ROW, state=RequestState.APPROVED, manifests='["bafk"]', decided_by="user:bob", updated_ms=30,
                       response=b"response", response_delivered=False)
    declined = replace(approved, state=RequestState.DECLINED, reason="no")
    assert store.update_request(approved, RequestState.PENDING)
    assert not store.update_request(declined, RequestState.PENDING)  # decided meanwhile: one wins
    assert store.request(ROW.request_id, INCOMING) == approved
    assert store.undelivered_responses() == [approved]
    store.set_response_delivered(ROW.request_id, True)
    assert store.undelivered_responses() == []
    assert store.request(ROW.request_id, INCOMING) == replace(approved, response_delivered=True)
