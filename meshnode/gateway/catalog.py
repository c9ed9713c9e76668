"""The node's studies as DICOM query entities (patients, studies, series, instances), and the
instances a retrieve asks for. Runs on the database thread (every function takes the MetadataStore).

Every study the node holds is visible: ingested, received over the gateway,
and received from other organisations over the mesh.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from meshnode.gateway.matching import Level, Query, QueryError, matches, select
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.records import InstanceRecord, StudySummaryRow

DEFAULT_MAX_RESULTS = 10_000


class TooManyResultsError(QueryError):
    code = 933
    name = "too-many-results"


def _uids(value: str) -> list[str]:
    return [v.strip() for v in value.split("\\") if v.strip()]


def _text(value: int | None) -> str:
    return "" if value is None else str(value)


def latest_instances(records: Iterable[InstanceRecord]) -> list[InstanceRecord]:
    """One record per SOP Instance UID (the most recently stored, as a manifest would share)."""
    latest: dict[str, InstanceRecord] = {}
    for rec in records:
        latest[rec.sop_instance_uid] = rec
    return list(latest.values())


def shown_instances(store: MetadataStore, study_uid: str) -> list[InstanceRecord]:
    """The study's instances this node shows (latest_instances), leaving out those patient reconciliation
    holds back (MetadataStore.held_instances: what a waiting, rejected or superseded manifest brought, never
    local content or another manifest's that shares the Study UID)."""
    if store.research_copy_of(study_uid) is not None:
        return []  # a de-identified research copy: the mesh's to serve under its manifest, never a local study
    held = store.held_instances(study_uid)
    return latest_instances(r for r in store.instances(study_uid) if (r.sop_instance_uid, r.digest) not in held)


def study_entity(summary: StudySummaryRow, instances: Sequence[InstanceRecord] | None = None) -> dict[str, str]:
    a = summary.attributes
    entity = {
        "PatientName": a.patient_name, "PatientID": a.patient_id, "PatientBirthDate": a.birth_date,
        "PatientSex": a.sex, "StudyInstanceUID": a.study_uid, "StudyDate": a.study_date, "StudyTime": a.study_time,
        "AccessionNumber": a.accession, "StudyDescription": a.description,
        "ModalitiesInStudy": "\\".join(summary.modalities),
        "NumberOfStudyRelatedSeries": str(summary.series_count),
        "NumberOfStudyRelatedInstances": str(summary.instance_count),
    }
    if instances is not None:
        entity["SOPClassesInStudy"] = "\\".join(sorted({i.sop_class_uid for i in instances}))
    return entity


def series_entities(study: dict[str, str], instances: Sequence[InstanceRecord]) -> list[dict[str, str]]:
    by_series: dict[str, list[InstanceRecord]] = {}
    for rec in instances:
        by_series.setdefault(rec.series_uid, []).append(rec)
    out = []
    for uid, recs in by_series.items():
        s = recs[0].series
        out.append({**study, "SeriesInstanceUID": uid, "Modality": s.modality, "SeriesNumber": _text(s.series_number),
                    "SeriesDescription": s.description, "NumberOfSeriesRelatedInstances": str(len(recs))})
    return out


def instance_entities(series: dict[str, str], instances: Sequence[InstanceRecord]) -> list[dict[str, str]]:
    return [{**series, "SOPInstanceUID": r.sop_instance_uid, "SOPClassUID": r.sop_class_uid,
             "InstanceNumber": _text(r.instance_number), "Rows": _text(r.rows), "Columns": _text(r.columns),
             "NumberOfFrames": _text(r.frames)} for r in instances]


def _candidate_studies(store: MetadataStore, query: Query) -> list[StudySummaryRow]:
    wanted = _uids(query.value("StudyInstanceUID"))
    held = store.held_studies()  # patient reconciliation holds them back (meshnode.gateway.reconciler)
    if wanted:
        return [s for s in (store.study(uid) for uid in wanted if uid not in held) if s is not None]
    return [s for s in store.studies() if s.attributes.study_uid not in held]


def find(store: MetadataStore, query: Query, max_results: int = DEFAULT_MAX_RESULTS) -> list[dict[str, str]]:
    """Every entity at the query's level that matches it, with the keys it asked for."""
    study_level = [k for k in query.conditions() if k.keyword in _STUDY_KEYS]
    needs_classes = any(k.keyword == "SOPClassesInStudy" for k in query.keys)
    studies: list[tuple[dict[str, str], list[InstanceRecord] | None]] = []
    for summary in _candidate_studies(store, query):
        deep = needs_classes or query.level in (Level.SERIES, Level.IMAGE)
        instances = shown_instances(store, summary.attributes.study_uid) if deep else None
        entity = study_entity(summary, instances)
        if all(matches(k, entity.get(k.keyword, "")) for k in study_level):
            studies.append((entity, instances))
    if query.level is Level.PATIENT:
        return _limit(select(_patients([e for e, _ in studies]), query), max_results)
    if query.level is Level.STUDY:
        return _limit(select((e for e, _ in studies), query), max_results)
    out: list[dict[str, str]] = []
    for entity, instances in studies:
        assert instances is not None
        for series in series_entities(entity, instances):
            if query.level is Level.SERIES:
                out.extend(select([series], query))
            else:
                recs = [i for i in instances if i.series_uid == series["SeriesInstanceUID"]]
                out.extend(select(instance_entities(series, recs), query))
            _limit(out, max_results)
    return out


_STUDY_KEYS = frozenset({"PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                         "StudyDate", "StudyTime", "AccessionNumber", "StudyDescription", "ModalitiesInStudy",
                         "SOPClassesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"})


def _patients(studies: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    by_id: dict[tuple[str, str], list[dict[str, str]]] = {}
    for s in studies:
        by_id.setdefault((s["PatientID"], s["PatientName"]), []).append(s)
    out = []
    for (pid, name), group in by_id.items():
        out.append({
            "PatientID": pid, "PatientName": name, "PatientBirthDate": group[0]["PatientBirthDate"],
            "PatientSex": group[0]["PatientSex"], "NumberOfPatientRelatedStudies": str(len(group)),
            "NumberOfPatientRelatedSeries": str(sum(int(s["NumberOfStudyRelatedSeries"]) for s in group)),
            "NumberOfPatientRelatedInstances": str(sum(int(s["NumberOfStudyRelatedInstances"]) for s in group)),
        })
    return out


def _limit(rows: list[dict[str, str]], max_results: int) -> list[dict[str, str]]:
    if len(rows) > max_results:
        raise TooManyResultsError(f"more than {max_results} matches; narrow the query")
    return rows


def retrieve(store: MetadataStore, level: Level, identifier: dict[str, str],
             max_instances: int = DEFAULT_MAX_RESULTS) -> list[InstanceRecord]:
    """The instances a C-GET / C-MOVE at `level` names by its unique keys (PS3.4 C.4.2.1.4)."""
    studies = _uids(identifier.get("StudyInstanceUID", ""))
    if level is Level.PATIENT:
        pid = identifier.get("PatientID", "").strip()
        if not pid:
            raise QueryError("a PATIENT level retrieve needs a PatientID")
        studies = [s.attributes.study_uid for s in store.studies() if s.attributes.patient_id == pid]
    elif not studies:
        raise QueryError(f"a {level.value} level retrieve needs a StudyInstanceUID")
    records: list[InstanceRecord] = []
    for uid in studies:
        records.extend(shown_instances(store, uid))
    if level in (Level.SERIES, Level.IMAGE):
        series = set(_uids(identifier.get("SeriesInstanceUID", "")))
        if level is Level.SERIES and not series:
            raise QueryError("a SERIES level retrieve needs a SeriesInstanceUID")
        if series:
            records = [r for r in records if r.series_uid in series]
    if level is Level.IMAGE:
        wanted = set(_uids(identifier.get("SOPInstanceUID", "")))
        if not wanted:
            raise QueryError("an IMAGE level retrieve needs a SOPInstanceUID")
        records = [r for r in records if r.sop_instance_uid in wanted]
    if len(records) > max_instances:
        raise TooManyResultsError(f"the retrieve names {len(records)} instances, more than {max_instances}")
    return records
