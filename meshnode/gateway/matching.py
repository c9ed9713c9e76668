"""DICOM attribute matching (PS3.4 C.2.2.2), over the attributes the node stores. Pure functions.

Used by C-FIND (and usable by QIDO-RS, PS3.18 8.3.4, which matches the same
way). A query is a set of keys, each with a value or empty:

    empty, or "*"             universal matching: every entity, the key is returned
    UI "a\\b\\c"              list of UID matching
    DA/TM/DT "a-b" "a-" "-b"  range matching (inclusive)
    text with * or ?          wildcard matching (PN case-insensitively)
    anything else             single value matching (PN case-insensitively)

Entities are plain dicts keyword -> text value ("" when unknown); numbers
are compared as numbers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

from protocol.errors import MeshError


class QueryError(MeshError):
    """A query that cannot be answered: unknown level, malformed range, missing unique key."""

    code = 932
    name = "bad-query"


class Level(str, Enum):
    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"


#: keyword -> (VR, the lowest level it belongs to). The node can answer every key listed here.
ATTRIBUTES: dict[str, tuple[str, Level]] = {
    "PatientName": ("PN", Level.PATIENT),
    "PatientID": ("LO", Level.PATIENT),
    "PatientBirthDate": ("DA", Level.PATIENT),
    "PatientSex": ("CS", Level.PATIENT),
    "NumberOfPatientRelatedStudies": ("IS", Level.PATIENT),
    "NumberOfPatientRelatedSeries": ("IS", Level.PATIENT),
    "NumberOfPatientRelatedInstances": ("IS", Level.PATIENT),
    "StudyInstanceUID": ("UI", Level.STUDY),
    "StudyDate": ("DA", Level.STUDY),
    "StudyTime": ("TM", Level.STUDY),
    "AccessionNumber": ("SH", Level.STUDY),
    "StudyDescription": ("LO", Level.STUDY),
    "ModalitiesInStudy": ("CS", Level.STUDY),
    "SOPClassesInStudy": ("UI", Level.STUDY),
    "NumberOfStudyRelatedSeries": ("IS", Level.STUDY),
    "NumberOfStudyRelatedInstances": ("IS", Level.STUDY),
    "SeriesInstanceUID": ("UI", Level.SERIES),
    "Modality": ("CS", Level.SERIES),
    "SeriesNumber": ("IS", Level.SERIES),
    "SeriesDescription": ("LO", Level.SERIES),
    "NumberOfSeriesRelatedInstances": ("IS", Level.SERIES),
    "SOPInstanceUID": ("UI", Level.IMAGE),
    "SOPClassUID": ("UI", Level.IMAGE),
    "InstanceNumber": ("IS", Level.IMAGE),
    "Rows": ("US", Level.IMAGE),
    "Columns": ("US", Level.IMAGE),
    "NumberOfFrames": ("IS", Level.IMAGE),
}
_ORDER = [Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE]
_WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"})
_NUMERIC_VRS = frozenset({"IS", "US"})
_RANGE_VRS = frozenset({"DA", "TM", "DT"})
MAX_KEY_CHARS = 1024


@dataclass(frozen=True)
class Key:
    keyword: str
    value: str  # "" : universal (return only)

    @property
    def vr(self) -> str:
        return ATTRIBUTES[self.keyword][0]


@dataclass(frozen=True)
class Query:
    level: Level
    keys: tuple[Key, ...]  # the supported keys asked for (matching and return)
    unsupported: tuple[str, ...] = ()  # keywords asked for that the node does not hold: returned empty

    def conditions(self) -> list[Key]:
        return [k for k in self.keys if k.value not in ("", "*")]

    def value(self, keyword: str) -> str:
        return next((k.value for k in self.keys if k.keyword == keyword), "")


def level_index(level: Level) -> int:
    return _ORDER.index(level)


def make_query(level: str, identifier: Mapping[str, str], *, patient_root: bool,
               unsupported: Sequence[str] = ()) -> Query:
    """A query at `level` from identifier keys (keyword -> value text)."""
    try:
        lvl = Level(level.strip().upper())
    except ValueError:
        raise QueryError(f"unknown query/retrieve level {level!r}") from None
    if lvl is Level.PATIENT and not patient_root:
        raise QueryError("PATIENT level queries need the Patient Root information model")
    keys = []
    for keyword, value in identifier.items():
        if keyword not in ATTRIBUTES:
            continue
        if len(value) > MAX_KEY_CHARS:
            raise QueryError(f"{keyword}: value longer than {MAX_KEY_CHARS} characters")
        if level_index(ATTRIBUTES[keyword][1]) > level_index(lvl):
            continue  # a key below the query level is not matched (PS3.4 C.2.2.1.2)
        keys.append(Key(keyword, value.strip()))
    for keyword, value in keys_as_dict(keys).items():
        vr = ATTRIBUTES[keyword][0]
        if vr in _RANGE_VRS and value.count("-") > 1:
            raise QueryError(f"{keyword}: malformed range {value!r}")
    return Query(lvl, tuple(keys), tuple(u for u in unsupported if u not in ATTRIBUTES))


def keys_as_dict(keys: Iterable[Key]) -> dict[str, str]:
    return {k.keyword: k.value for k in keys}


def _wildcard(pattern: str, flags: int) -> re.Pattern[str]:
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), flags | re.DOTALL)


def _normalise_time(value: str) -> str:
    return value.replace(":", "")


def _in_range(value: str, spec: str, vr: str) -> bool:
    low, _, high = spec.partition("-")
    if vr == "TM":
        value, low, high = _normalise_time(value), _normalise_time(low), _normalise_time(high)
    elif vr == "DA":
        value, low, high = value.replace(".", ""), low.replace(".", ""), high.replace(".", "")
    if not value:
        return False
    # DICOM dates and times compare as text once normalised; an open end matches everything
    if low and value < low:
        return False
    if high and value[:len(high)] > high:
        return False
    return True


def matches(key: Key, value: str) -> bool:
    """Does an entity's `value` for this key satisfy the key's matching value?"""
    spec, vr = key.value, key.vr
    if spec in ("", "*"):
        return True
    if vr == "UI":
        return value in {v.strip() for v in spec.split("\\")}
    if vr in _RANGE_VRS:
        if "-" in spec:
            return _in_range(value, spec, vr)
        return any(_normalise_time(v) == _normalise_time(value) if vr == "TM" else v == value
                   for v in spec.split("\\"))
    if vr in _NUMERIC_VRS:
        try:
            return any(int(v) == int(value) for v in spec.split("\\") if v.strip()) if value else False
        except ValueError:
            return False
    flags = re.IGNORECASE if vr == "PN" else 0
    if vr == "CS" and "\\" in value:  # a multi-valued CS (ModalitiesInStudy) matches if one value does
        return any(matches(key, v) for v in value.split("\\"))
    if vr in _WILDCARD_VRS and ("*" in spec or "?" in spec):
        return _wildcard(spec, flags).fullmatch(value) is not None
    return value.lower() == spec.lower() if vr == "PN" else value == spec


def select(entities: Iterable[Mapping[str, str]], query: Query) -> list[dict[str, str]]:
    """The entities matching every condition, each reduced to the keys the query asked for."""
    conditions = query.conditions()
    out = []
    for entity in entities:
        if all(matches(c, entity.get(c.keyword, "")) for c in conditions):
            out.append({k.keyword: entity.get(k.keyword, "") for k in query.keys})
    return out
