"""MetadataStore.held_transfer_syntaxes (what a C-GET's storage contexts accept): both stores alike, and the
SQLite one answering from its index, not by reading every instance."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from meshnode.storage.memory_metadata import MemoryMetadataStore
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.sqlite_metadata import SqliteMetadataStore
from tests.meshnode.storage.helpers import instance

NOW_MS = 1_767_225_600_000
CT = "1.2.840.10008.5.1.4.1.1.2"
US = "1.2.840.10008.5.1.4.1.1.3.1"
EXPLICIT, IMPLICIT, JPEG = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.4.50"


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataStore]:
    s: MetadataStore = SqliteMetadataStore(tmp_path / "node.db") if request.param == "sqlite" else MemoryMetadataStore()
    yield s
    s.close()


def test_the_syntaxes_held_per_sop_class(store: MetadataStore) -> None:
    assert store.held_transfer_syntaxes([CT, US]) == {}
    records = [instance(1), replace(instance(2), transfer_syntax=IMPLICIT), instance(3),
               replace(instance(4), sop_class_uid=US, transfer_syntax=JPEG),
               replace(instance(5), sop_class_uid=US, transfer_syntax=JPEG)]
    store.add_instances(records, [], NOW_MS)
    assert store.held_transfer_syntaxes([CT, US, "1.2.3"]) == {CT: {EXPLICIT, IMPLICIT}, US: {JPEG}}
    assert store.held_transfer_syntaxes([US]) == {US: {JPEG}}
    assert store.held_transfer_syntaxes([]) == {}


def test_sqlite_answers_from_the_index(tmp_path: Path) -> None:
    s = SqliteMetadataStore(tmp_path / "node.db")
    try:
        plan = s._query("EXPLAIN QUERY PLAN SELECT transfer_syntax FROM instances WHERE sop_class_uid = ?"
                        " AND transfer_syntax > ? ORDER BY transfer_syntax LIMIT 1", (CT, ""))
        assert any("instances_by_class_syntax" in str(row[-1]) for row in plan), plan
    finally:
        s.close()
