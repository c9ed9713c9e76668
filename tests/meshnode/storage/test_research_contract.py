"""Research shares and re-link tables: the SQLite store and the in-memory one behave alike."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from meshnode.storage.memory_metadata import MemoryMetadataStore
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.research_store import ResearchShareRow, ResearchState
from meshnode.storage.sqlite_metadata import SqliteMetadataStore
from protocol.cid import CID


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataStore]:
    s: MetadataStore = SqliteMetadataStore(tmp_path / "node.db") if request.param == "sqlite" else MemoryMetadataStore()
    yield s
    s.close()


def test_research_shares_round_trip(store: MetadataStore) -> None:
    held = ResearchShareRow("a1", "1.2.3", "lung", '{"to": ["RES01"]}', ResearchState.HELD, 10,
                            '[["abc", "US image without Burned In Annotation"]]')
    store.save_research_share(held)
    store.save_research_share(replace(held, share_id="b2", state=ResearchState.REFUSED, created_ms=20))
    assert store.research_share("a1") == held
    assert store.research_share("zz") is None
    assert [r.share_id for r in store.research_shares(ResearchState.HELD)] == ["a1"]
    assert [r.share_id for r in store.research_shares()] == ["a1", "b2"]
    manifest = CID.of(b"research manifest")
    shared = replace(held, state=ResearchState.SHARED, research_study_uid="2.25.9", manifest_id=manifest,
                     decided_by="user:alice", decision="release-without", decided_ms=30)
    store.save_research_share(shared)
    assert store.research_share("a1") == shared
    assert store.research_share_for_manifest(manifest) == shared
    assert store.research_shares(ResearchState.HELD) == []


def test_relink_is_per_project_and_first_write_wins(store: MetadataStore) -> None:
    store.add_relink("lung", [("patient", "RAAA", "NHS1"), ("study", "2.25.1", "1.2.3")])
    store.add_relink("lung", [("patient", "RAAA", "changed?")])
    store.add_relink("other", [("patient", "RBBB", "NHS1")])
    assert store.relink("lung") == [("patient", "RAAA", "NHS1"), ("study", "2.25.1", "1.2.3")]
    assert store.relink("other") == [("patient", "RBBB", "NHS1")]
    assert store.relink("none") == []


def test_a_decision_is_compare_and_set_and_research_copies_are_hidden(store: MetadataStore) -> None:
    """Review findings 3 and 6: of two decisions on a held share only one wins; a copy's study is hidden."""
    held = ResearchShareRow("a1", "1.2.3", "lung", "{}", ResearchState.HELD, 10)
    store.save_research_share(held)
    sending = replace(held, state=ResearchState.SENDING, research_study_uid="2.25.7", decided_by="user:bob")
    assert store.update_research_share(sending, ResearchState.HELD)
    refused = replace(held, state=ResearchState.REFUSED, decided_by="user:dpo")
    assert not store.update_research_share(refused, ResearchState.HELD)  # decided already
    assert store.research_share("a1") == sending
    assert not store.update_research_share(replace(held, share_id="zz"), ResearchState.HELD)
    failed = replace(sending, state=ResearchState.FAILED, decision="failed: x")
    assert store.update_research_share(failed, ResearchState.SENDING)
    assert store.research_share("a1") == failed
    assert store.research_copies() == {"2.25.7"} and store.research_copy_of("2.25.7") == failed
    assert store.research_copy_of("1.2.3") is None and store.research_copy_of("") is None
    assert "2.25.7" in store.held_studies() and "1.2.3" not in store.held_studies()
