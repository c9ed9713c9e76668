"""What "shows" means while reconciliation holds a study back: QIDO-RS's search, the DIMSE C-FIND answers and
C-GET/C-MOVE's instances leave it out (WADO-RS answers 404 through the same held_studies); once a manifest of
the study is matched, it shows again (both stores)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from meshnode.gateway import catalog
from meshnode.gateway.matching import Level as QLevel
from meshnode.gateway.matching import make_query
from meshnode.storage.memory_metadata import MemoryMetadataStore
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.patients import ReconciliationRow, ReconState
from meshnode.storage.records import Source
from meshnode.storage.search import Level, Search
from meshnode.storage.sqlite_metadata import SqliteMetadataStore
from protocol.cid import CID
from tests.meshnode.storage.helpers import STUDY, instance

OTHER = "1.2.826.0.1.3680043.8.498.200"
M1 = CID.of(b"held manifest")


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataStore]:
    s: MetadataStore = SqliteMetadataStore(tmp_path / "node.db") if request.param == "sqlite" else MemoryMetadataStore()
    s.add_instances([instance(1, source=Source.RECEIVED), instance(2, source=Source.RECEIVED),
                     instance(1, study=OTHER)], [], 1)
    s.add_reconciliation(ReconciliationRow(M1, STUDY, "RXX", ReconState.WAITING, 1))
    yield s
    s.close()


def _studies(store: MetadataStore, level: Level) -> set[str]:
    if level is Level.STUDY:
        return {r.attributes.study_uid for r in store.search_studies(Search(level, hide_held=True))}
    if level is Level.SERIES:
        return {r.study.study_uid for r in store.search_series(Search(level, hide_held=True))}
    return {r.study.study_uid for r in store.search_instances(Search(level, hide_held=True))}


@pytest.mark.parametrize("level", list(Level))
def test_qido_search_leaves_held_studies_out(store: MetadataStore, level: Level) -> None:
    assert _studies(store, level) == {OTHER}
    assert len(store.search_studies(Search(Level.STUDY))) == 2  # the operator's own views still list it
    store.update_reconciliation(ReconciliationRow(M1, STUDY, "RXX", ReconState.MATCHED, 1), ReconState.WAITING)
    assert _studies(store, level) == {OTHER, STUDY}


def test_dimse_find_and_retrieve_leave_held_studies_out(store: MetadataStore) -> None:
    everything = make_query("STUDY", {"StudyInstanceUID": "", "PatientID": ""}, patient_root=False)
    assert {r["StudyInstanceUID"] for r in catalog.find(store, everything)} == {OTHER}
    by_uid = make_query("STUDY", {"StudyInstanceUID": STUDY}, patient_root=False)
    assert catalog.find(store, by_uid) == []
    assert catalog.retrieve(store, QLevel.STUDY, {"StudyInstanceUID": STUDY}) == []
    assert catalog.retrieve(store, QLevel.PATIENT, {"PatientID": "9434765919"}) == \
        catalog.retrieve(store, QLevel.STUDY, {"StudyInstanceUID": OTHER})
    store.update_reconciliation(ReconciliationRow(M1, STUDY, "RXX", ReconState.MATCHED, 1), ReconState.WAITING)
    assert len(catalog.retrieve(store, QLevel.STUDY, {"StudyInstanceUID": STUDY})) == 2
