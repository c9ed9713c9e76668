"""Study/series/instance search (QIDO-RS, C-FIND): the SQLite and memory stores match alike."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from meshnode.storage.memory_metadata import MemoryMetadataStore
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.records import StudyAttributes
from meshnode.storage.search import Level, ListMatch, RangeMatch, Search, TextMatch
from meshnode.storage.sqlite_metadata import SqliteMetadataStore
from protocol.errors import LocalProtocolError
from tests.meshnode.storage.helpers import instance

NOW_MS = 1_767_225_600_000
A, B, C = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2", "1.2.826.0.1.3680043.8.498.3"


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataStore]:
    s: MetadataStore = SqliteMetadataStore(tmp_path / "node.db") if request.param == "sqlite" else MemoryMetadataStore()
    recs = []
    for study, name, pid, date, acc in ((A, "DOE^JANE", "111", "20250101", "ACC-A"),
                                        (B, "Doe^John", "222", "20250615", "ACC-B"),
                                        (C, "SMITH^ANN[X]", "333", "20251231", "ACC-C")):
        attrs = StudyAttributes(study, name, pid, "19700101", "F", date, "101500", "CT HEAD", acc)
        for n in (1, 2, 3):
            rec = instance(n, study=study)
            recs.append(replace(rec, study=attrs))
        mr = replace(instance(1, study=study, series=2, modality="MR"), study=attrs)
        if study != A:
            recs.append(mr)
    s.add_instances(recs, [], NOW_MS)
    yield s
    s.close()


def uids(rows: list[object]) -> list[str]:
    return [getattr(r, "attributes").study_uid for r in rows]


def test_study_matching_kinds(store: MetadataStore) -> None:
    def q(**filters: object) -> list[str]:
        return uids(store.search_studies(Search(Level.STUDY, filters)))  # type: ignore[arg-type]

    assert q() == [C, B, A]  # newest first
    assert q(patient_id=TextMatch("222")) == [B]
    assert q(patient_id=TextMatch("22")) == []
    assert q(patient_name=TextMatch("doe*")) == [B, A]  # PN: case-insensitive wildcard
    assert q(patient_name=TextMatch("D?E^JANE")) == [A]
    assert q(patient_name=TextMatch("SMITH^ANN[X]")) == [C]  # '[' is literal, not a GLOB class
    assert q(patient_name=TextMatch("*[X]")) == [C]
    assert q(study_date=RangeMatch("20250201", "20251231")) == [C, B]
    assert q(study_date=RangeMatch("", "20250615")) == [B, A]
    assert q(study_date=RangeMatch("20250616", "")) == [C]
    assert q(study_uid=ListMatch((A, C))) == [C, A]
    assert q(study_uid=ListMatch(())) == []
    assert q(accession=TextMatch("ACC-?"), patient_id=TextMatch("111")) == [A]


def test_modalities_in_study_limit_offset(store: MetadataStore) -> None:
    assert uids(store.search_studies(Search(Level.STUDY, modalities_in_study=("MR",)))) == [C, B]
    assert uids(store.search_studies(Search(Level.STUDY, modalities_in_study=("ct", "SR")))) == [C, B, A]
    assert uids(store.search_studies(Search(Level.STUDY, limit=1, offset=1))) == [B]
    assert uids(store.search_studies(Search(Level.STUDY, limit=5, offset=3))) == []


def test_series_and_instances(store: MetadataStore) -> None:
    series = store.search_series(Search(Level.SERIES, {"study_uid": ListMatch((B,))}))
    assert [(s.series.modality, s.instance_count) for s in series] == [("CT", 3), ("MR", 1)]
    mr = store.search_series(Search(Level.SERIES, {"modality": TextMatch("MR")}))
    assert [s.study.study_uid for s in mr] == [C, B]
    inst = store.search_instances(Search(Level.INSTANCE, {"study_uid": ListMatch((A,)),
                                                          "instance_number": TextMatch("2")}))
    assert [i.sop_instance_uid for i in inst] == [f"{A}.1.2"]
    every = store.search_instances(Search(Level.INSTANCE, {"patient_id": TextMatch("333")}))
    assert [i.sop_instance_uid for i in every] == [f"{C}.1.1", f"{C}.1.2", f"{C}.1.3", f"{C}.2.1"]
    assert every[0].rows == 512 and every[0].transfer_syntax == "1.2.840.10008.1.2.1"


def test_conflicting_copies_listed_once(store: MetadataStore) -> None:
    store.add_instances([instance(1, study=A, payload=b"different bytes")], [], NOW_MS)
    rows = store.search_instances(Search(Level.INSTANCE, {"sop_instance_uid": ListMatch((f"{A}.1.1",))}))
    assert len(rows) == 1


def test_bad_searches_refused() -> None:
    with pytest.raises(LocalProtocolError):
        Search(Level.STUDY, {"modality": TextMatch("CT")})
    with pytest.raises(LocalProtocolError):
        Search(Level.STUDY, {"no_such": TextMatch("x")})
    with pytest.raises(LocalProtocolError):
        Search(Level.STUDY, limit=-1)
