"""DICOM matching (PS3.4 C.2.2.2) over stored attributes, and the queries built from identifiers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshnode.gateway.matching import Key, Level, QueryError, make_query, matches, select

ENTITY = {"PatientName": "DOE^JANE", "PatientID": "9434765919", "StudyDate": "20251231", "StudyTime": "101500.25",
          "StudyInstanceUID": "1.2.3.4", "ModalitiesInStudy": "CT\\SR", "NumberOfStudyRelatedInstances": "12",
          "AccessionNumber": "ACC1"}


@pytest.mark.parametrize("keyword, spec, expected", [
    ("PatientName", "", True),
    ("PatientName", "*", True),
    ("PatientName", "DOE^JANE", True),
    ("PatientName", "doe^jane", True),  # PN: case-insensitive
    ("PatientName", "DOE*", True),
    ("PatientName", "D?E^*", True),
    ("PatientName", "SMITH*", False),
    ("PatientName", "DOE", False),  # single value matching is whole-value
    ("AccessionNumber", "acc1", False),  # other text: case-sensitive
    ("StudyInstanceUID", "1.2.3.4", True),
    ("StudyInstanceUID", "9.9\\1.2.3.4", True),  # list of UID matching
    ("StudyInstanceUID", "1.2.3.*", False),  # no wildcards for UIDs
    ("StudyDate", "20251231", True),
    ("StudyDate", "20250101-20251231", True),
    ("StudyDate", "20260101-", False),
    ("StudyDate", "-20251231", True),
    ("StudyDate", "-20251230", False),
    ("StudyTime", "1000-1100", True),
    ("StudyTime", "10:15:00.25", True),  # the old colon form is the same time
    ("StudyTime", "1100-", False),
    ("ModalitiesInStudy", "SR", True),  # one of the values
    ("ModalitiesInStudy", "MR", False),
    ("NumberOfStudyRelatedInstances", "12", True),
    ("NumberOfStudyRelatedInstances", "012", True),
    ("NumberOfStudyRelatedInstances", "13", False),
    ("NumberOfStudyRelatedInstances", "x", False),
])
def test_matching_rules(keyword: str, spec: str, expected: bool) -> None:
    assert matches(Key(keyword, spec), ENTITY[keyword]) is expected


def test_empty_values_only_match_universally() -> None:
    assert matches(Key("StudyDate", ""), "") and not matches(Key("StudyDate", "20250101-"), "")
    assert not matches(Key("PatientName", "DOE*"), "")


@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126, blacklist_characters="*?\\"), max_size=30))
def test_a_value_matches_itself_and_star(value: str) -> None:
    assert matches(Key("StudyDescription", value), value)
    assert matches(Key("StudyDescription", "*"), value)
    assert matches(Key("StudyDescription", value + "*"), value + "anything")


def test_queries_keep_the_keys_at_or_above_their_level() -> None:
    q = make_query("STUDY", {"PatientName": "DOE*", "StudyDate": "", "SeriesInstanceUID": "", "Bogus": "1"},
                   patient_root=False, unsupported=["ReferringPhysicianName"])
    assert q.level is Level.STUDY
    assert [k.keyword for k in q.keys] == ["PatientName", "StudyDate"]  # SERIES key dropped, unknown ignored
    assert [k.keyword for k in q.conditions()] == ["PatientName"]
    assert q.unsupported == ("ReferringPhysicianName",)
    rows = select([ENTITY, {**ENTITY, "PatientName": "ROE^RICHARD"}], q)
    assert rows == [{"PatientName": "DOE^JANE", "StudyDate": "20251231"}]


@pytest.mark.parametrize("level, patient_root, identifier, message", [
    ("WORLD", True, {}, "unknown query/retrieve level"),
    ("PATIENT", False, {}, "Patient Root"),
    ("STUDY", False, {"StudyDate": "2025-2026-2027"}, "malformed range"),
    ("STUDY", False, {"PatientName": "A" * 2000}, "longer than"),
])
def test_bad_queries_are_refused(level: str, patient_root: bool, identifier: dict[str, str], message: str) -> None:
    with pytest.raises(QueryError, match=message):
        make_query(level, identifier, patient_root=patient_root)
