"""QIDO-RS: search for studies, series and instances (PS3.18 10.6), answered from the metadata index.

    GET /dicomweb/studies[?PatientID=..&StudyDate=20250101-20250131&ModalitiesInStudy=CT&limit=..]
    GET /dicomweb/studies/{study}/series      /dicomweb/series
    GET /dicomweb/studies/{study}/series/{series}/instances
    GET /dicomweb/studies/{study}/instances   /dicomweb/instances

Query keys are keywords or tags. Matching: single value, wildcard (* ?),
ranges for dates and times, UID lists (comma or backslash separated).
includefield=all or keywords/tags adds attributes (those the index lacks are
read from a representative instance's header). Valid DICOM keys the index
cannot match on are ignored with a `Warning: 299` header, as PS3.18 allows.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import trio
from starlette.requests import Request
from starlette.responses import Response

from meshnode.storage.audit import AuditEvent, EventCode
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.records import InstanceRecord, hash_uid
from meshnode.storage.search import ATTRIBUTE_LEVEL, RANK, Level, ListMatch, Match, RangeMatch, Search, TextMatch
from meshnode.web.app import Handler, Route, route
from meshnode.web.blockio import read_header
from meshnode.web.dicomjson import (
    INSTANCE_ATTRIBUTES,
    SERIES_ATTRIBUTES,
    STUDY_ATTRIBUTES,
    Json,
    header_fields,
    instance_result,
    keyword_of,
    series_result,
    study_result,
    tag_of,
)
from meshnode.web.http import HttpError, client, is_number, json_response, query
from meshnode.web.services import WebServices, actor

DICOM_JSON = "application/dicom+json"

#: DICOM keyword -> (search attribute, how its values are matched)
KEYS: dict[str, tuple[str, str]] = {
    "StudyInstanceUID": ("study_uid", "uid"), "PatientName": ("patient_name", "text"),
    "PatientID": ("patient_id", "text"), "PatientBirthDate": ("birth_date", "date"),
    "PatientSex": ("sex", "text"), "StudyDate": ("study_date", "date"), "StudyTime": ("study_time", "date"),
    "StudyDescription": ("study_description", "text"), "AccessionNumber": ("accession", "text"),
    "SeriesInstanceUID": ("series_uid", "uid"), "Modality": ("modality", "text"),
    "SeriesNumber": ("series_number", "number"), "SeriesDescription": ("series_description", "text"),
    "SOPInstanceUID": ("sop_instance_uid", "uid"), "SOPClassUID": ("sop_class_uid", "uid"),
    "InstanceNumber": ("instance_number", "number"),
}
CONTROL = frozenset({"limit", "offset", "includefield", "fuzzymatching"})
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_DATE = re.compile(r"^[0-9.:]*$")
MAX_VALUE = 256
#: includefield=all adds, from a representative header: the patient group and these (per level)
_ALL_STUDY = {"00080090", "00200010", "00081030", "00080020", "00080030", "00081032", "00321060"}
_ALL_SERIES = _ALL_STUDY | {"00080021", "00080031", "0008103E", "00180015", "00185100", "00200060", "00400244",
                            "00400245", "00080070", "00081090"}


@dataclass(frozen=True)
class ParsedQuery:
    search: Search
    include: frozenset[str]  # tags (8 hex digits) to add to each result
    include_all: bool
    ignored: tuple[str, ...]


def split_list(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in re.split(r"[,\\]", value) if v.strip())


def _match(keyword: str, kind: str, value: str) -> Match:
    if len(value) > MAX_VALUE:
        raise HttpError(400, f"{keyword}: value longer than {MAX_VALUE} characters")
    if kind == "uid":
        uids = split_list(value)
        if not all(_UID.match(u) and len(u) <= 64 for u in uids):
            raise HttpError(400, f"{keyword}: not a UID list")
        return ListMatch(uids)
    if kind == "date":
        lo, sep, hi = value.partition("-")
        if not (_DATE.match(lo) and _DATE.match(hi)):
            raise HttpError(400, f"{keyword}: expected a value or a range like 20250101-20250131")
        return RangeMatch(lo, hi) if sep else TextMatch(value)
    if kind == "number" and not is_number(value, 64):
        raise HttpError(400, f"{keyword}: expected a number")
    return TextMatch(value)


def _int(params: Mapping[str, list[str]], name: str, default: int, most: int) -> int:
    values = params.get(name)
    if not values:
        return default
    if not is_number(values[-1]):
        raise HttpError(400, f"{name} must be a non-negative integer")
    return min(int(values[-1]), most)


def parse_query(level: Level, params: Mapping[str, list[str]], fixed: Mapping[str, str],
                max_results: int) -> ParsedQuery:
    """Query parameters (plus UIDs fixed by the path) as a Search; HttpError(400) for bad input."""
    filters: dict[str, Match] = {}
    include: set[str] = set()
    include_all = False
    ignored: list[str] = []
    modalities: tuple[str, ...] = ()
    for key, values in params.items():
        if key in CONTROL:
            if key == "includefield":
                for v in values:
                    for item in split_list(v):
                        if item == "all":
                            include_all = True
                            continue
                        tag = tag_of(item)
                        if tag is None:
                            raise HttpError(400, f"includefield: unknown attribute {item!r}")
                        include.add(tag)
            continue
        tag = tag_of(key)
        keyword = keyword_of(tag) if tag else ""
        if not keyword:
            raise HttpError(400, f"unknown query key {key!r} (use DICOM keywords or tags)")
        value = values[-1]
        include.add(tag or "")
        if value == "":
            continue  # universal matching: just return the attribute
        if keyword == "ModalitiesInStudy" and level is Level.STUDY:
            modalities = tuple(m.upper() for v in values for m in split_list(v))
            continue
        known = KEYS.get(keyword)
        if known is None:
            ignored.append(keyword)
            continue
        attribute, kind = known
        if RANK[ATTRIBUTE_LEVEL[attribute]] > RANK[level]:
            raise HttpError(400, f"{keyword} is not a {level.value}-level attribute")
        filters[attribute] = _match(keyword, kind, value)
    for attribute, uid in fixed.items():
        if not _UID.match(uid) or len(uid) > 64:
            raise HttpError(400, "not a DICOM UID in the path")
        filters[attribute] = ListMatch((uid,))
    search = Search(level, filters, modalities, limit=_int(params, "limit", max_results, max_results),
                    offset=_int(params, "offset", 0, 1 << 31), hide_held=True)  # reconciliation holds
    return ParsedQuery(search, frozenset(include), include_all, tuple(sorted(set(ignored))))


def _defaults(level: Level) -> set[str]:
    tables = {Level.STUDY: [STUDY_ATTRIBUTES], Level.SERIES: [SERIES_ATTRIBUTES],
              Level.INSTANCE: [INSTANCE_ATTRIBUTES]}[level]
    return {tag for t in tables for tag, _ in t.values()}


class Qido:
    def __init__(self, services: WebServices) -> None:
        self.s = services

    def routes(self) -> list[Route]:
        r = []
        for path, level, name in (
            ("/dicomweb/studies", Level.STUDY, "qido-studies"),
            ("/dicomweb/series", Level.SERIES, "qido-series"),
            ("/dicomweb/studies/{study}/series", Level.SERIES, "qido-series"),
            ("/dicomweb/instances", Level.INSTANCE, "qido-instances"),
            ("/dicomweb/studies/{study}/instances", Level.INSTANCE, "qido-instances"),
            ("/dicomweb/studies/{study}/series/{series}/instances", Level.INSTANCE, "qido-instances"),
        ):
            r.append(route("GET", path, self._handler(level), "read", name))
        return r

    def _handler(self, level: Level) -> Handler:
        async def handle(request: Request) -> Response:
            return await self.search(level, request)
        return handle

    async def search(self, level: Level, request: Request) -> Response:
        fixed = {"study_uid": request.path_params["study"]} if "study" in request.path_params else {}
        if "series" in request.path_params:
            fixed["series_uid"] = request.path_params["series"]
        parsed = parse_query(level, query(request), fixed, self.s.config.max_results)
        probe = Search(parsed.search.level, parsed.search.filters, parsed.search.modalities_in_study,
                       limit=parsed.search.limit + 1, offset=parsed.search.offset, hide_held=True)
        base = self.s.base_url(request)
        results: list[Json]

        def run(store: MetadataStore) -> tuple[list[Json], bool, list[tuple[Json, str, str, str]]]:
            extra: list[tuple[Json, str, str, str]] = []  # (result, study, series, instance) for header fields
            if level is Level.STUDY:
                rows = store.search_studies(probe)
                more = len(rows) > parsed.search.limit
                out = [study_result(r, base) for r in rows[:parsed.search.limit]]
                extra = [(j, r.attributes.study_uid, "", "") for j, r in zip(out, rows)]
            elif level is Level.SERIES:
                srows = store.search_series(probe)
                more = len(srows) > parsed.search.limit
                out = [series_result(r, base, "study_uid" not in fixed) for r in srows[:parsed.search.limit]]
                extra = [(j, r.study.study_uid, r.series.series_uid, "") for j, r in zip(out, srows)]
            else:
                irows = store.search_instances(probe)
                more = len(irows) > parsed.search.limit
                out = [instance_result(r, base, "study_uid" not in fixed, "series_uid" not in fixed)
                       for r in irows[:parsed.search.limit]]
                extra = [(j, r.study.study_uid, r.series.series_uid, r.sop_instance_uid) for j, r in zip(out, irows)]
            return out, more, extra

        results, more, extra = await self.s.db.run(run)
        wanted = set(parsed.include) - _defaults(level)
        if parsed.include_all or wanted:
            await self._add_header_fields(extra, wanted, parsed.include_all)
        headers: dict[str, str] = {}
        warnings = []
        if parsed.ignored:
            warnings.append(f'299 meshnode "The following query keys were not matched on: '
                            f'{", ".join(parsed.ignored)}"')
        if more:
            warnings.append('299 meshnode "There are additional results that can be requested"')
        if warnings:
            headers["warning"] = ", ".join(warnings).encode("latin-1", "replace").decode("latin-1")
        studies = {hash_uid(s) for _, s, _, _ in extra}
        await self.s.audit(AuditEvent(
            EventCode.QUERY, f"qido-{level.value}", actor=actor(request),
            study=next(iter(studies)) if len(studies) == 1 else "",
            detail=f"{len(results)} result(s), keys {','.join(sorted(parsed.search.filters)) or '-'}"
                   f"{' modalities' if parsed.search.modalities_in_study else ''} from {client(request)}"))
        return json_response(200, results, DICOM_JSON, headers)

    async def _instances(self, study_uid: str) -> list[InstanceRecord]:
        return await self.s.db.run(lambda store: store.instances(study_uid))

    async def _add_header_fields(self, extra: list[tuple[Json, str, str, str]], wanted: set[str],
                                 include_all: bool) -> None:
        """Attributes the index lacks, from the first instance of each study/series (or the instance)."""
        by_study: dict[str, list[InstanceRecord]] = {}
        for result, study, series, instance in extra:
            if study not in by_study:
                by_study[study] = await self._instances(study)
            candidates = [r for r in by_study[study] if (not series or r.series_uid == series)
                          and (not instance or r.sop_instance_uid == instance)]
            if not candidates:
                continue
            header = await trio.to_thread.run_sync(read_header, self.s.storage.blocks, candidates[0],
                                                   limiter=self.s.block_readers)
            tags = set(wanted)
            if include_all:
                present = {f"{el.tag:08X}" for el in header if el.tag.group != 0x0002}
                if instance:
                    tags |= present
                else:
                    tags |= {t for t in present if t.startswith("0010") or t in (_ALL_SERIES if series else _ALL_STUDY)}
            for tag, value in header_fields(header, tags).items():
                result.setdefault(tag, value)
