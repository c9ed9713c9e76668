"""Which local studies a study request or a prior-study query names: the patient's local IDs (the request's
patient ID, its NHS number used as a patient ID, and the local records holding that NHS number in the lookup
table the PACS team maintains), then the date range and modality. Held-back studies (patient reconciliation)
are never offered."""

from __future__ import annotations

from collections.abc import Sequence

from meshnode.node.context import NodeContext
from meshnode.storage.records import StudySummaryRow
from meshnode.storage.search import Level, ListMatch, RangeMatch, Search, TextMatch
from protocol.errors import UnauthorisedError

#: studies one search returns (and one approval shares) at most
MAX_MATCHES = 64


class PatientMismatchError(UnauthorisedError):
    """A request names an NHS number and a local patient ID that are not the same patient here."""

    code = 601
    name = "patient-mismatch"


async def patient_ids(ctx: NodeContext, nhs_number: str, patient_id: str = "") -> list[str]:
    """The local patient IDs a request or query names. Given both an NHS number and a local ID, the patient
    is their intersection: the local ID must be the NHS number itself or a record the lookup table links to
    that NHS number, otherwise the request names two patients and is refused (PatientMismatchError) rather
    than matched on the union (which would send the local ID's patient's studies for another's NHS number)."""
    linked: list[str] = []
    if nhs_number:
        records = await ctx.db.run(lambda s: s.patients(nhs_number))
        linked = [nhs_number, *(r.local_id for r in records)]
    if patient_id and nhs_number:
        if patient_id not in linked:
            raise PatientMismatchError("the request's local patient ID is not linked to its NHS number here "
                                       "(two different patients?): link them in the patient lookup table or "
                                       "decline the request")
        return [patient_id]
    return list(dict.fromkeys([patient_id] if patient_id else linked))


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
