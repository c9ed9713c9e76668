"""Searching the studies, series and instances a node holds (for QIDO-RS; usable by C-FIND).

A `Search` names the level and, per indexed attribute, how to match it, with
DICOM's matching rules (PS3.4 C.2.2.2): single value, wildcard (`*`, `?`),
range (dates and times: `A-B`, `A-`, `-B`) and UID list. The SQLite store
(meshnode.storage.sqlite_search) turns it into SQL; the memory store uses the
same rules in Python (`MemorySearch` below), and one contract test runs both.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from meshnode.storage.audit import AuditEntry
from meshnode.storage.records import InstanceRecord, SeriesAttributes, StudyAttributes, StudySummaryRow
from protocol.errors import LocalProtocolError


class Level(str, Enum):
    STUDY = "study"
    SERIES = "series"
    INSTANCE = "instance"


#: attribute key -> the level it lives on (keys are what Search.filters may use)
ATTRIBUTE_LEVEL: dict[str, Level] = {
    "study_uid": Level.STUDY, "patient_name": Level.STUDY, "patient_id": Level.STUDY,
    "birth_date": Level.STUDY, "sex": Level.STUDY, "study_date": Level.STUDY, "study_time": Level.STUDY,
    "study_description": Level.STUDY, "accession": Level.STUDY,
    "series_uid": Level.SERIES, "modality": Level.SERIES, "series_number": Level.SERIES,
    "series_description": Level.SERIES,
    "sop_instance_uid": Level.INSTANCE, "sop_class_uid": Level.INSTANCE, "instance_number": Level.INSTANCE,
}
RANK = {Level.STUDY: 0, Level.SERIES: 1, Level.INSTANCE: 2}
CASE_INSENSITIVE = frozenset({"patient_name"})  # PN matching may ignore case (PS3.4 C.2.2.2.1)


@dataclass(frozen=True)
class TextMatch:
    """Single value matching, or wildcard matching when the pattern has * or ?."""

    pattern: str

    @property
    def wildcard(self) -> bool:
        return "*" in self.pattern or "?" in self.pattern


@dataclass(frozen=True)
class RangeMatch:
    """lo <= value <= hi, either end open ("")."""

    lo: str
    hi: str


@dataclass(frozen=True)
class ListMatch:
    values: tuple[str, ...]


Match = TextMatch | RangeMatch | ListMatch


@dataclass(frozen=True)
class Search:
    level: Level
    filters: dict[str, Match] = field(default_factory=dict)
    modalities_in_study: tuple[str, ...] = ()
    limit: int = 100
    offset: int = 0
    #: leave out the studies patient reconciliation holds back (MetadataStore.held_studies)
    hide_held: bool = False

    def __post_init__(self) -> None:
        for key in self.filters:
            level = ATTRIBUTE_LEVEL.get(key)
            if level is None:
                raise LocalProtocolError(f"cannot search on {key!r}")
            if RANK[level] > RANK[self.level]:
                raise LocalProtocolError(f"{key} is not a {self.level.value}-level attribute")
        if self.limit < 0 or self.offset < 0:
            raise LocalProtocolError("limit and offset must not be negative")


@dataclass(frozen=True)
class SeriesSummaryRow:
    study: StudyAttributes
    series: SeriesAttributes
    instance_count: int


@dataclass(frozen=True)
class InstanceSummaryRow:
    study: StudyAttributes
    series: SeriesAttributes
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    size: int
    instance_number: int | None
    rows: int | None
    columns: int | None
    frames: int | None


@dataclass(frozen=True)
class AuditQuery:
    """Audit entries, newest first: exact code/outcome, substring of action/actor/detail, before a seq."""

    code: int | None = None
    outcome: int | None = None
    text: str = ""
    before_seq: int | None = None
    limit: int = 200


def audit_matches(q: AuditQuery, e: AuditEntry) -> bool:
    ev = e.event
    if q.code is not None and int(ev.code) != q.code:
        return False
    if q.outcome is not None and int(ev.outcome) != q.outcome:
        return False
    if q.before_seq is not None and e.seq >= q.before_seq:
        return False
    needle = q.text.lower()
    return not needle or any(needle in f.lower() for f in (ev.action, ev.actor, ev.actor_org, ev.detail,
                                                           ev.study, ev.manifest_id))


class SearchableStore(Protocol):
    """The search half of MetadataStore (results in a stable order, newest studies first)."""

    def search_studies(self, search: Search) -> list[StudySummaryRow]: ...

    def search_series(self, search: Search) -> list[SeriesSummaryRow]: ...

    def search_instances(self, search: Search) -> list[InstanceSummaryRow]: ...

    def search_audit(self, query: AuditQuery) -> list[AuditEntry]: ...

    def audit_range(self, after_seq: int, limit: int) -> list[AuditEntry]:
        """Entries with seq > after_seq in order, at most `limit` (to verify the chain in chunks)."""
        ...


def glob_pattern(pattern: str) -> str:
    """A DICOM wildcard pattern as an SQLite GLOB / fnmatch pattern (only '[' needs escaping)."""
    return pattern.replace("[", "[[]")


def matches(match: Match, value: str, case_insensitive: bool = False) -> bool:
    if isinstance(match, ListMatch):
        return value in match.values
    if isinstance(match, RangeMatch):
        if not value:
            return False
        return (not match.lo or value >= match.lo) and (not match.hi or value <= match.hi)
    pattern, text = (match.pattern.lower(), value.lower()) if case_insensitive else (match.pattern, value)
    if match.wildcard:
        return fnmatch.fnmatchcase(text, glob_pattern(pattern))
    return text == pattern


def _text(value: int | str | None) -> str:
    return "" if value is None else str(value)


_VALUE: dict[str, Callable[[StudyAttributes, SeriesAttributes | None, InstanceRecord | None], str]] = {
    "study_uid": lambda st, se, i: st.study_uid, "patient_name": lambda st, se, i: st.patient_name,
    "patient_id": lambda st, se, i: st.patient_id, "birth_date": lambda st, se, i: st.birth_date,
    "sex": lambda st, se, i: st.sex, "study_date": lambda st, se, i: st.study_date,
    "study_time": lambda st, se, i: st.study_time, "study_description": lambda st, se, i: st.description,
    "accession": lambda st, se, i: st.accession,
    "series_uid": lambda st, se, i: se.series_uid if se else "",
    "modality": lambda st, se, i: se.modality if se else "",
    "series_number": lambda st, se, i: _text(se.series_number) if se else "",
    "series_description": lambda st, se, i: se.description if se else "",
    "sop_instance_uid": lambda st, se, i: i.sop_instance_uid if i else "",
    "sop_class_uid": lambda st, se, i: i.sop_class_uid if i else "",
    "instance_number": lambda st, se, i: _text(i.instance_number) if i else "",
}


def _passes(search: Search, st: StudyAttributes, se: SeriesAttributes | None, inst: InstanceRecord | None) -> bool:
    return all(matches(m, _VALUE[k](st, se, inst), k in CASE_INSENSITIVE) for k, m in search.filters.items())


def _study_order(st: StudyAttributes) -> tuple[str, str, str]:
    return st.study_date, st.study_time, st.study_uid


def page(items: Sequence[object], search: Search) -> list[object]:
    return list(items[search.offset: search.offset + search.limit])


def memory_search_studies(summaries: list[StudySummaryRow], instances: list[InstanceRecord],
                          search: Search) -> list[StudySummaryRow]:
    """search_studies for the memory store, over its study summaries and instance records."""
    wanted = {m.upper() for m in search.modalities_in_study}
    out = []
    for summary in summaries:
        st = summary.attributes
        if not _passes(search, st, None, None):
            continue
        if wanted and not wanted & {i.series.modality.upper() for i in instances if i.study_uid == st.study_uid}:
            continue
        out.append(summary)
    out.sort(key=lambda s: _study_order(s.attributes), reverse=True)
    return [s for s in page(out, search) if isinstance(s, StudySummaryRow)]


def memory_search_series(instances: list[InstanceRecord], search: Search) -> list[SeriesSummaryRow]:
    counts: dict[str, int] = {}
    first: dict[str, InstanceRecord] = {}
    for inst in instances:
        if _passes(search, inst.study, inst.series, None):
            counts[inst.series_uid] = counts.get(inst.series_uid, 0) + 1
            first.setdefault(inst.series_uid, inst)
    rows = [SeriesSummaryRow(first[uid].study, first[uid].series, n) for uid, n in counts.items()]
    rows.sort(key=lambda r: (_neg(_study_order(r.study)), r.series.series_number or 0, r.series.series_uid))
    return [r for r in page(rows, search) if isinstance(r, SeriesSummaryRow)]


def memory_search_instances(instances: list[InstanceRecord], search: Search) -> list[InstanceSummaryRow]:
    seen: set[str] = set()
    rows = []
    for i in instances:
        # a SOP Instance UID conflict keeps both copies; a search lists the UID once
        if i.sop_instance_uid in seen or not _passes(search, i.study, i.series, i):
            continue
        seen.add(i.sop_instance_uid)
        rows.append(InstanceSummaryRow(i.study, i.series, i.sop_instance_uid, i.sop_class_uid, i.transfer_syntax,
                                       i.size, i.instance_number, i.rows, i.columns, i.frames))
    rows.sort(key=lambda r: (_neg(_study_order(r.study)), r.series.series_number or 0, r.series.series_uid,
                             r.instance_number or 0, r.sop_instance_uid))
    return [r for r in page(rows, search) if isinstance(r, InstanceSummaryRow)]


class _Desc:
    """Sorts a string tuple descending inside an otherwise ascending key."""

    def __init__(self, value: tuple[str, str, str]) -> None:
        self.value = value

    def __lt__(self, other: _Desc) -> bool:
        return self.value > other.value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Desc) and self.value == other.value


def _neg(value: tuple[str, str, str]) -> _Desc:
    return _Desc(value)
