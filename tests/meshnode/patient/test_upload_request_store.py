"""Both upload request stores (meshnode.patient.upload_requests): add with coalescing and the cap in one step,
oldest first, compare-and-set decisions, a state the schema refuses refused by both, and the SQLite rows kept
across a reopen."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from meshnode.patient.sqlite_upload_requests import SqliteUploadRequestStore
from meshnode.patient.upload_requests import (
    DECLINED,
    PENDING,
    SENT,
    MemoryUploadRequestStore,
    UploadRequest,
    UploadRequestStore,
)


def _ask(n: int, email: str = "", code_to: str = "+447700900123", at: float = 0.0) -> UploadRequest:
    return UploadRequest(f"{n:032x}", f"Person {n}", email or f"p{n}@example.org", code_to, "CT on a CD",
                         "198.51.100.7", at or 1000.0 + n)


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[UploadRequestStore]:
    if request.param == "memory":
        yield MemoryUploadRequestStore()
    else:
        s = SqliteUploadRequestStore(tmp_path / "node.db")
        yield s
        s.close()


def test_add_coalesces_and_caps(store: UploadRequestStore) -> None:
    assert store.add(_ask(1), 2) == ("added", _ask(1).request_id)
    assert store.add(_ask(2, email="P1@Example.org"), 2) == ("duplicate", _ask(1).request_id)
    assert store.add(_ask(3, email="p1@example.org", code_to="other@example.org"), 2)[0] == "added"
    assert store.add(_ask(4), 2) == ("full", "")
    assert [r.request_id for r in store.pending()] == [_ask(1).request_id, _ask(3).request_id]
    assert store.get(_ask(4).request_id) is None
    got = store.get(_ask(1).request_id)
    assert got == _ask(1)


def test_pending_asks_per_client_are_capped(store: UploadRequestStore) -> None:
    for n in range(3):
        assert store.add(_ask(n), 10, per_client=3)[0] == "added"
    assert store.add(_ask(5), 10, per_client=3) == ("client full", "")
    assert store.add(replace(_ask(6), client="198.51.100.8"), 10, per_client=3)[0] == "added"


def test_a_decision_is_compare_and_set(store: UploadRequestStore) -> None:
    store.add(_ask(1), 10)
    sent = replace(_ask(1), state=SENT, decided_by="user:pacs1", decided_at=2000.0)
    assert store.decide(sent, PENDING)
    assert not store.decide(replace(_ask(1), state=DECLINED, outcome="no"), PENDING)
    assert store.get(_ask(1).request_id) == sent
    assert store.pending() == []
    # a decided ask no longer coalesces: the same person may ask again
    assert store.add(_ask(2, email="p1@example.org"), 10)[0] == "added"
    assert not store.decide(replace(_ask(9), state=SENT), PENDING)  # unknown


def test_a_state_not_known_is_refused_by_both(store: UploadRequestStore) -> None:
    with pytest.raises(ValueError):
        store.add(replace(_ask(1), state="maybe"), 10)
    store.add(_ask(2), 10)
    with pytest.raises(ValueError):
        store.decide(replace(_ask(2), state="maybe"), PENDING)
    assert store.get(_ask(2).request_id) == _ask(2)


def test_sqlite_rows_survive_a_reopen(tmp_path: Path) -> None:
    s = SqliteUploadRequestStore(tmp_path / "node.db")
    s.add(_ask(1), 10)
    s.close()
    again = SqliteUploadRequestStore(tmp_path / "node.db")
    try:
        assert again.pending() == [_ask(1)]
    finally:
        again.close()
