"""Search (meshnode.storage.search) as SQL over the metadata tables."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from meshnode.storage.audit import AuditEntry
from meshnode.storage.records import SeriesAttributes, StudyAttributes, StudySummaryRow
from meshnode.storage.sqlite_patients import HELD_STUDIES_SQL, held_instance_sql
from meshnode.storage.search import (
    AuditQuery,
    CASE_INSENSITIVE,
    InstanceSummaryRow,
    ListMatch,
    Match,
    RangeMatch,
    Search,
    SeriesSummaryRow,
    glob_pattern,
)

Query = Callable[[str, Sequence[object]], list[Any]]

_COLUMNS = {
    "study_uid": "{st}.study_uid", "patient_name": "{st}.patient_name", "patient_id": "{st}.patient_id",
    "birth_date": "{st}.birth_date", "sex": "{st}.sex", "study_date": "{st}.study_date",
    "study_time": "{st}.study_time", "study_description": "{st}.description", "accession": "{st}.accession",
    "series_uid": "se.series_uid", "modality": "se.modality", "series_number": "CAST(se.series_number AS TEXT)",
    "series_description": "se.description", "sop_instance_uid": "i.sop_instance_uid",
    "sop_class_uid": "i.sop_class_uid", "instance_number": "CAST(i.instance_number AS TEXT)",
}
_STUDY_COLS = ("st.study_uid, st.patient_name, st.patient_id, st.birth_date, st.sex, st.study_date, st.study_time,"
               " st.description, st.accession")
_ORDER = "{st}.study_date DESC, {st}.study_time DESC, {st}.study_uid DESC"


def _condition(key: str, match: Match, study_alias: str) -> tuple[str, list[object]]:
    col = _COLUMNS[key].format(st=study_alias)
    if isinstance(match, ListMatch):
        return f"{col} IN ({','.join('?' * len(match.values))})", [*match.values]
    if isinstance(match, RangeMatch):
        sql, params = [f"{col} != ''"], list[object]()
        if match.lo:
            sql.append(f"{col} >= ?")
            params.append(match.lo)
        if match.hi:
            sql.append(f"{col} <= ?")
            params.append(match.hi)
        return " AND ".join(sql), params
    pattern = glob_pattern(match.pattern) if match.wildcard else match.pattern
    op = "GLOB" if match.wildcard else "="
    if key in CASE_INSENSITIVE:
        return f"lower({col}) {op} lower(?)", [pattern]
    return f"{col} {op} ?", [pattern]


def _where(search: Search, study_alias: str, instance_alias: str = "") -> tuple[str, list[object]]:
    parts, params = [], []
    for key, match in sorted(search.filters.items()):
        sql, p = _condition(key, match, study_alias)
        if isinstance(match, ListMatch) and not match.values:
            sql = "0"
        parts.append(f"({sql})")
        params.extend(p)
    if search.hide_held:  # whole studies held back, and (series, instance levels) each held instance
        parts.append(f"({study_alias}.study_uid NOT IN ({HELD_STUDIES_SQL}))")
        if instance_alias:
            parts.append(f"(NOT {held_instance_sql(instance_alias)})")
    return " AND ".join(parts), params


def search_studies(query: Query, summary_sql: str, parse: Callable[[Any], StudySummaryRow],
                   search: Search) -> list[StudySummaryRow]:
    """`summary_sql` selects study summaries FROM studies s WHERE ...; more conditions are ANDed on."""
    where, params = _where(search, "s")
    sql = summary_sql + (f" AND {where}" if where else "")
    if search.modalities_in_study:
        marks = ",".join("?" * len(search.modalities_in_study))
        sql += (" AND EXISTS (SELECT 1 FROM series se JOIN instances i ON i.series_uid = se.series_uid"
                f" WHERE se.study_uid = s.study_uid AND upper(se.modality) IN ({marks}))")
        params += [m.upper() for m in search.modalities_in_study]
    sql += f" ORDER BY {_ORDER.format(st='s')} LIMIT ? OFFSET ?"
    return [parse(r) for r in query(sql, [*params, search.limit, search.offset])]


def search_series(query: Query, search: Search) -> list[SeriesSummaryRow]:
    where, params = _where(search, "st", "i")
    sql = (f"SELECT {_STUDY_COLS}, se.series_uid, se.modality, se.series_number, se.description, count(*)"
           " FROM instances i JOIN series se ON se.series_uid = i.series_uid"
           " JOIN studies st ON st.study_uid = i.study_uid"
           + (f" WHERE {where}" if where else "")
           + f" GROUP BY se.series_uid ORDER BY {_ORDER.format(st='st')}, coalesce(se.series_number, 0),"
             " se.series_uid LIMIT ? OFFSET ?")
    return [
        SeriesSummaryRow(StudyAttributes(*(str(v) for v in r[:9])),
                         SeriesAttributes(str(r[9]), str(r[10]), None if r[11] is None else int(r[11]), str(r[12])),
                         int(r[13]))
        for r in query(sql, [*params, search.limit, search.offset])
    ]


def search_instances(query: Query, search: Search) -> list[InstanceSummaryRow]:
    where, params = _where(search, "st", "i")
    sql = (f"SELECT {_STUDY_COLS}, se.series_uid, se.modality, se.series_number, se.description,"
           " i.sop_instance_uid, i.sop_class_uid, i.transfer_syntax, i.size, i.instance_number, i.rows, i.columns,"
           " i.frames, min(i.id)"
           " FROM instances i JOIN series se ON se.series_uid = i.series_uid"
           " JOIN studies st ON st.study_uid = i.study_uid"
           + (f" WHERE {where}" if where else "")
           + f" GROUP BY i.sop_instance_uid ORDER BY {_ORDER.format(st='st')}, coalesce(se.series_number, 0),"
             " se.series_uid, coalesce(i.instance_number, 0), i.sop_instance_uid LIMIT ? OFFSET ?")

    def opt(v: Any) -> int | None:
        return None if v is None else int(v)

    return [
        InstanceSummaryRow(StudyAttributes(*(str(v) for v in r[:9])),
                           SeriesAttributes(str(r[9]), str(r[10]), opt(r[11]), str(r[12])),
                           str(r[13]), str(r[14]), str(r[15]), int(r[16]), opt(r[17]), opt(r[18]), opt(r[19]),
                           opt(r[20]))
        for r in query(sql, [*params, search.limit, search.offset])
    ]


def search_audit(query: Query, rows: Callable[[str, Sequence[object]], list[AuditEntry]],
                 q: AuditQuery) -> list[AuditEntry]:
    parts: list[str] = []
    params: list[object] = []
    if q.code is not None:
        parts.append("code = ?")
        params.append(q.code)
    if q.outcome is not None:
        parts.append("outcome = ?")
        params.append(q.outcome)
    if q.before_seq is not None:
        parts.append("seq < ?")
        params.append(q.before_seq)
    if q.text:
        like = "%" + q.text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        parts.append("(" + " OR ".join(f"lower({c}) LIKE ? ESCAPE '\\'" for c in
                                       ("action", "actor", "actor_org", "detail", "study", "manifest_id")) + ")")
        params.extend([like] * 6)
    where = ("WHERE " + " AND ".join(parts)) if parts else ""
    return rows(f"{where} ORDER BY seq DESC LIMIT ?", [*params, q.limit])
