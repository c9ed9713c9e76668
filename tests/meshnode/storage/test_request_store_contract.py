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


def test_pending_incoming_requests_are_capped_per_requesting_org(store: MetadataStore) -> None:
    from meshnode.storage.request_store import TooManyPendingRequestsError
    for i in range(2):
        assert store.save_request(replace(ROW, request_id=f"{i:032x}"), 2)
    with pytest.raises(TooManyPendingRequestsError):
        store.save_request(replace(ROW, request_id=f"{9:032x}"), 2)
    assert store.request(f"{9:032x}", INCOMING) is None
    assert not store.save_request(replace(ROW, request_id=f"{0:032x}"), 2)  # a replay is still a replay
    assert store.save_request(replace(ROW, request_id=f"{9:032x}", requester_org="RAJ"), 2)  # another org
    assert store.save_request(replace(ROW, request_id=f"{8:032x}", direction=OUTGOING), 2)  # ours: not capped
    assert store.update_request(replace(ROW, request_id=f"{0:032x}", state=RequestState.DECLINED),
                                RequestState.PENDING)
    assert store.save_request(replace(ROW, request_id=f"{7:032x}"), 2)  # room again


def test_listings_are_paged_newest_first(store: MetadataStore) -> None:
    for i in range(5):
        store.save_request(replace(ROW, request_id=f"{i:032x}", created_ms=100 + i // 2))  # ties in created_ms
    first = store.requests(INCOMING, limit=2)
    second = store.requests(INCOMING, limit=2, before=(first[-1].created_ms, first[-1].request_id))
    third = store.requests(INCOMING, limit=2, before=(second[-1].created_ms, second[-1].request_id))
    ids = [r.request_id for r in first + second + third]
    assert ids == [f"{i:032x}" for i in (4, 3, 2, 1, 0)]


def test_expired_purged_and_undelivered_queries(store: MetadataStore) -> None:
    for i in range(4):
        store.save_request(replace(ROW, request_id=f"{i:032x}", expires_at=1000 + i, created_ms=50 - i))
    assert [r.request_id for r in store.expired_requests(INCOMING, 1002)] == [f"{0:032x}", f"{1:032x}"]
    assert store.expired_requests(OUTGOING, 5000) == []
    assert len(store.expired_requests(INCOMING, 5000, limit=3)) == 3
    final = replace(ROW, request_id=f"{0:032x}", state=RequestState.DECLINED, updated_ms=500, response=b"r",
                    response_delivered=False)
    assert store.update_request(final, RequestState.PENDING)
    assert [r.request_id for r in store.undelivered_responses(1)] == [final.request_id]
    assert store.purge_requests(10_000) == 0  # its response has not reached the requester yet: kept
    store.set_response_delivered(final.request_id, True)
    assert store.purge_requests(400) == 0  # changed after the cut-off
    assert store.purge_requests(10_000) == 1  # final and old: gone; pending ones stay
    assert len(store.requests(INCOMING)) == 3
