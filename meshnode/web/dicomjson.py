"""DICOM JSON (PS3.18 F.2) for search results and metadata.

Search results are built from the metadata index without touching a block;
attributes the index does not hold (asked for with includefield) and WADO-RS
metadata come from an instance's header (pydicom's JSON conversion).
"""

from __future__ import annotations

import logging

from typing import Any

from pydicom.dataset import Dataset
from pydicom.datadict import keyword_for_tag, tag_for_keyword

from meshnode.storage.records import SeriesAttributes, StudyAttributes, StudySummaryRow
from meshnode.storage.search import InstanceSummaryRow, SeriesSummaryRow

Json = dict[str, Any]

#: keyword -> (tag as 8 hex digits, VR), per level: the attributes a search result carries by default
STUDY_ATTRIBUTES: dict[str, tuple[str, str]] = {
    "SpecificCharacterSet": ("00080005", "CS"), "StudyDate": ("00080020", "DA"), "StudyTime": ("00080030", "TM"),
    "AccessionNumber": ("00080050", "SH"), "InstanceAvailability": ("00080056", "CS"),
    "ModalitiesInStudy": ("00080061", "CS"), "ReferringPhysicianName": ("00080090", "PN"),
    "StudyDescription": ("00081030", "LO"), "RetrieveURL": ("00081190", "UR"), "PatientName": ("00100010", "PN"),
    "PatientID": ("00100020", "LO"), "PatientBirthDate": ("00100030", "DA"), "PatientSex": ("00100040", "CS"),
    "StudyInstanceUID": ("0020000D", "UI"), "StudyID": ("00200010", "SH"),
    "NumberOfStudyRelatedSeries": ("00201206", "IS"), "NumberOfStudyRelatedInstances": ("00201208", "IS"),
}
SERIES_ATTRIBUTES: dict[str, tuple[str, str]] = {
    "SpecificCharacterSet": ("00080005", "CS"), "Modality": ("00080060", "CS"),
    "SeriesDescription": ("0008103E", "LO"), "RetrieveURL": ("00081190", "UR"),
    "SeriesInstanceUID": ("0020000E", "UI"), "SeriesNumber": ("00200011", "IS"),
    "NumberOfSeriesRelatedInstances": ("00201209", "IS"),
}
INSTANCE_ATTRIBUTES: dict[str, tuple[str, str]] = {
    "SpecificCharacterSet": ("00080005", "CS"), "SOPClassUID": ("00080016", "UI"),
    "SOPInstanceUID": ("00080018", "UI"), "AvailableTransferSyntaxUID": ("00083002", "UI"),
    "RetrieveURL": ("00081190", "UR"), "InstanceNumber": ("00200013", "IS"), "Rows": ("00280010", "US"),
    "Columns": ("00280011", "US"), "NumberOfFrames": ("00280008", "IS"),
}
_NUMERIC = frozenset({"IS", "DS", "US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"})

log = logging.getLogger(__name__)


def element(vr: str, *values: object) -> Json:
    """One attribute; empty strings and None are left out (an empty attribute has no Value)."""
    kept = [v for v in values if v is not None and v != ""]
    if not kept:
        return {"vr": vr}
    if vr == "PN":
        return {"vr": vr, "Value": [{"Alphabetic": str(v)} for v in kept]}
    if vr in _NUMERIC:
        return {"vr": vr, "Value": [int(v) if isinstance(v, int) else float(str(v)) for v in kept]}
    return {"vr": vr, "Value": [str(v) for v in kept]}


def tag_of(key: str) -> str | None:
    """A query key or includefield value (keyword or 8 hex digits) as 8 upper-case hex digits."""
    if len(key) == 8 and all(c in "0123456789abcdefABCDEF" for c in key):
        return key.upper()
    tag = tag_for_keyword(key)
    return None if tag is None else f"{tag:08X}"


def keyword_of(tag: str) -> str:
    return str(keyword_for_tag(int(tag, 16)) or "")


def _put(out: Json, table: dict[str, tuple[str, str]], keyword: str, *values: object) -> None:
    tag, vr = table[keyword]
    out[tag] = element(vr, *values)


def _study(out: Json, st: StudyAttributes) -> None:
    t = STUDY_ATTRIBUTES
    _put(out, t, "SpecificCharacterSet", "ISO_IR 192")
    _put(out, t, "StudyDate", st.study_date)
    _put(out, t, "StudyTime", st.study_time)
    _put(out, t, "AccessionNumber", st.accession)
    _put(out, t, "InstanceAvailability", "ONLINE")
    _put(out, t, "ReferringPhysicianName")
    _put(out, t, "StudyDescription", st.description)
    _put(out, t, "PatientName", st.patient_name)
    _put(out, t, "PatientID", st.patient_id)
    _put(out, t, "PatientBirthDate", st.birth_date)
    _put(out, t, "PatientSex", st.sex)
    _put(out, t, "StudyInstanceUID", st.study_uid)
    _put(out, t, "StudyID")


def _series(out: Json, se: SeriesAttributes) -> None:
    t = SERIES_ATTRIBUTES
    _put(out, t, "Modality", se.modality)
    _put(out, t, "SeriesDescription", se.description)
    _put(out, t, "SeriesInstanceUID", se.series_uid)
    _put(out, t, "SeriesNumber", se.series_number)


def study_result(row: StudySummaryRow, base: str) -> Json:
    out: Json = {}
    _study(out, row.attributes)
    _put(out, STUDY_ATTRIBUTES, "ModalitiesInStudy", *row.modalities)
    _put(out, STUDY_ATTRIBUTES, "NumberOfStudyRelatedSeries", row.series_count)
    _put(out, STUDY_ATTRIBUTES, "NumberOfStudyRelatedInstances", row.instance_count)
    _put(out, STUDY_ATTRIBUTES, "RetrieveURL", f"{base}/studies/{row.attributes.study_uid}")
    return dict(sorted(out.items()))


def series_result(row: SeriesSummaryRow, base: str, with_study: bool) -> Json:
    out: Json = {}
    if with_study:
        _study(out, row.study)
    _series(out, row.series)
    _put(out, SERIES_ATTRIBUTES, "SpecificCharacterSet", "ISO_IR 192")
    _put(out, SERIES_ATTRIBUTES, "NumberOfSeriesRelatedInstances", row.instance_count)
    _put(out, SERIES_ATTRIBUTES, "RetrieveURL",
         f"{base}/studies/{row.study.study_uid}/series/{row.series.series_uid}")
    return dict(sorted(out.items()))


def instance_result(row: InstanceSummaryRow, base: str, with_study: bool, with_series: bool) -> Json:
    out: Json = {}
    if with_study:
        _study(out, row.study)
    if with_series:
        _series(out, row.series)
    t = INSTANCE_ATTRIBUTES
    _put(out, t, "SpecificCharacterSet", "ISO_IR 192")
    _put(out, t, "SOPClassUID", row.sop_class_uid)
    _put(out, t, "SOPInstanceUID", row.sop_instance_uid)
    _put(out, t, "AvailableTransferSyntaxUID", row.transfer_syntax)
    _put(out, t, "InstanceNumber", row.instance_number)
    _put(out, t, "Rows", row.rows)
    _put(out, t, "Columns", row.columns)
    _put(out, t, "NumberOfFrames", row.frames)
    _put(out, t, "RetrieveURL", f"{base}/studies/{row.study.study_uid}/series/{row.series.series_uid}"
                                f"/instances/{row.sop_instance_uid}")
    return dict(sorted(out.items()))


#: what pydicom raises for an element it cannot decode or convert (an unknown VR, a malformed value)
_UNCONVERTIBLE = (NotImplementedError, ValueError, TypeError, KeyError, AttributeError, OverflowError)


def header_json(dataset: Dataset) -> Json:
    """A header (pixel data already left out) as DICOM JSON, binary values inline (base64). An element that
    cannot be converted (an unknown VR, say: ingest reads only the attributes it needs, so such a file can
    be stored) is left out rather than failing the whole answer."""
    try:
        converted: Json = dataset.to_json_dict(bulk_data_threshold=1 << 30, bulk_data_element_handler=None)
        return converted
    except _UNCONVERTIBLE:
        return header_fields(dataset, {f"{int(tag):08X}" for tag in dataset.keys()})


def header_fields(dataset: Dataset, tags: set[str]) -> Json:
    """Just these attributes of a header (those present and convertible; the others are logged and left out)."""
    out: Json = {}
    for tag in sorted(tags):
        value = int(tag, 16)
        if value in dataset:
            try:
                sub = Dataset()
                sub.add(dataset[value])
                out.update(sub.to_json_dict(bulk_data_threshold=1 << 30, bulk_data_element_handler=None))
            except _UNCONVERTIBLE as exc:
                log.warning("element %s of a stored header cannot be converted to DICOM JSON; left out (%s)",
                            tag, type(exc).__name__)
    return out
