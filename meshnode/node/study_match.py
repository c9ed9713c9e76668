"""Which local studies a study request or a prior-study query names: the patient's local IDs (the request's
patient ID, its NHS number used as a patient ID, and the local records holding that NHS number in the lookup
table the PACS team maintains), then the date range and modality. Held-back studies (patient reconciliation)
are never offered."""

from __future__ import annotations

from collections.abc import Sequence

from meshnode.node.context import NodeContext
from meshnode.storage.records import StudySummaryRow
from meshnode.storage.search import Level, ListMatch, RangeMatch, Search, TextMatch

#: studies one search returns (and one approval shares) at most
MAX_MATCHES = 64


async def patient_ids(ctx: NodeContext, nhs_number: str, patient_id: str = "") -> list[str]:
    ids = [patient_id] if patient_id else []
    if nhs_number:
        records = await ctx.db.run(lambda s: s.patients(nhs_number))
        ids += [nhs_number, *(r.local_id for r in records)]
    return list(dict.fromkeys(ids))


async def search_studies(ctx: NodeContext, ids: Sequence[str], date_from: str = "", date_to: str = "",
                         modality: str = "", *, limit: int = MAX_MATCHES) -> list[StudySummaryRow]:
    """Local studies of these patients (exact patient ID), in the date range, with the modality."""
    if not ids:
        return []
    filters: dict[str, TextMatch | RangeMatch | ListMatch] = {"patient_id": ListMatch(tuple(ids))}
    if date_from or date_to:
        filters["study_date"] = RangeMatch(date_from, date_to)
    search = Search(Level.STUDY, filters, modalities_in_study=(modality,) if modality else (), limit=limit,
                    hide_held=True)
    return await ctx.db.run(lambda s: s.search_studies(search))


def study_json(row: StudySummaryRow) -> dict[str, object]:
    """A local study as the holder's staff see it (CLI, portal): identifiers included."""
    a = row.attributes
    return {"study_uid": a.study_uid, "patient_id": a.patient_id, "patient_name": a.patient_name,
            "study_date": a.study_date, "description": a.description, "accession": a.accession,
            "modalities": list(row.modalities), "series": row.series_count, "instances": row.instance_count}
