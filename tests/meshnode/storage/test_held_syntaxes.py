"""MetadataStore.held_transfer_syntaxes (what a C-GET's storage contexts accept): both stores alike, and the
SQLite one answering from its index, not by reading every instance."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from meshnode.storage.memory_metadata import MemoryMetadataStore
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.patients import ReconciliationRow, ReconState
from meshnode.storage.records import Source
from meshnode.storage.sqlite_metadata import HELD_SYNTAXES_SQL, SqliteMetadataStore
from protocol.cid import CID
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


def test_a_study_held_back_by_reconciliation_does_not_count(store: MetadataStore) -> None:
    """A study C-GET cannot retrieve (held back by patient reconciliation) does not decide what the node
    accepts: its uncompressed US does not turn the JPEG study's context uncompressed (review finding 1)."""
    jpeg = replace(instance(1, study="1.2.3"), sop_class_uid=US, transfer_syntax=JPEG)
    plain = replace(instance(1, study="1.2.4"), sop_class_uid=US, source=Source.RECEIVED, origin="RXX")
    store.add_instances([jpeg, plain], [], NOW_MS)
    assert store.held_transfer_syntaxes([US]) == {US: {JPEG, EXPLICIT}}
    # reconciliation holds what the waiting manifest lists (meshnode.storage.patients.held_instances)
    store.add_reconciliation(ReconciliationRow(CID.of(b"m"), "1.2.4", "RXX", ReconState.WAITING, 1),
                             [(plain.sop_instance_uid, plain.digest)])
    assert store.held_transfer_syntaxes([US, CT]) == {US: {JPEG}}


def test_sqlite_answers_in_one_query_from_the_index(tmp_path: Path) -> None:
    s = SqliteMetadataStore(tmp_path / "node.db")
    try:
        plan = s._query("EXPLAIN QUERY PLAN " + HELD_SYNTAXES_SQL, ('["1.2.3"]',))
        text = " ".join(str(row[-1]) for row in plan)
        assert "instances_by_class_syntax" in text and "SCAN instances" not in text, plan
    finally:
        s.close()
