"""De-identification (PS3.15 Annex E basic profile + options) over pydicom's whole test data set.

The output is scanned with tests/meshnode/study/annex_e.py's own Table E.1-1 tags, independent of the
de-identifier's tables and of dicognito's.
"""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pydicom
import pydicom.uid
import pytest
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID

from meshnode.study.deidentify import Deidentifier, Relink
from meshnode.study.pseudonyms import Pseudonymiser
from protocol.deid import DeidOption, DeidProfile, SafePrivate, parse_profile
from protocol.errors import ConfigError
from tests.meshnode.study.annex_e import TABLE_E11

KEY = bytes(range(32))
WELL_KNOWN = frozenset(getattr(pydicom.uid, "UID_dictionary", {}))  # pydicom.uid's public table


def _candidates() -> Iterator[Path]:
    for name in sorted(get_testdata_files()):
        path = Path(name)
        if path.is_dir():  # the DICOMDIR test trees: every file in them
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        else:
            yield path


def _load(path: Path) -> Dataset | str:
    """The data set, or why the file is not a DICOM data set at all."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path, force=True)
        except Exception as exc:  # noqa: BLE001  (any failure to parse: not a data set)
            return f"unreadable: {type(exc).__name__}"
        tags = [e.tag for e in ds]
    if not tags or any(t.group == 0 for t in tags) or not any(t.group >= 4 for t in tags):
        return "no DICOM data set (command elements or no attributes)"
    return ds


FILES: list[Path] = []
SKIPPED: dict[str, str] = {}
for _path in _candidates():
    _result = _load(_path)
    if isinstance(_result, str):
        SKIPPED[_path.name] = _result
    else:
        FILES.append(_path)


def test_only_non_dicom_files_are_skipped() -> None:
    # stated: the ICC colour profile is the one file of pydicom's test data that is no DICOM data set
    assert SKIPPED == {"crayons.icc": "no DICOM data set (command elements or no attributes)"}
    assert len(FILES) > 190


def _values(ds: Dataset, out: dict[int, list[object]]) -> None:
    """Every value of every tag, recursively (sequence items included)."""
    for elem in ds:
        out.setdefault(int(elem.tag), []).append(elem.value)
        if elem.VR == "SQ" and elem.value:
            for item in elem.value:
                _values(item, out)


def _strings(value: object) -> set[str]:
    if value is None:
        return set()
    if isinstance(value, DicomSequence):
        return {"<sequence>"} if len(value) else set()
    if isinstance(value, (bytes, bytearray)):
        return {value.hex()} if value.strip(b"\0 ") else set()
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return set().union(*(_strings(v) for v in value)) if value else set()
    text = str(value).strip("\0 ")
    return {text} if text else set()


def _deidentify(ds: Dataset, profile: DeidProfile, key: bytes = KEY, relink: Relink | None = None) -> Dataset:
    work = copy.deepcopy(ds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Deidentifier(profile, Pseudonymiser(profile.project, key)).deidentify(work, relink or Relink())
        buffer = io.BytesIO()
        work.save_as(buffer, enforce_file_format=False)
        return pydicom.dcmread(io.BytesIO(buffer.getvalue()), force=True)  # the files still parse


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_basic_profile_leaves_no_table_e11_value(path: Path) -> None:
    original = _load(path)
    assert isinstance(original, Dataset)
    out = _deidentify(original, DeidProfile("basic"))
    before: dict[int, list[object]] = {}
    after: dict[int, list[object]] = {}
    _values(original, before)
    _values(out, after)
    if getattr(original, "file_meta", None) is not None:
        _values(original.file_meta, before)
    if getattr(out, "file_meta", None) is not None:
        _values(out.file_meta, after)
    for tag, name in TABLE_E11.items():
        old = set().union(*(_strings(v) for v in before.get(tag, [])))
        old -= WELL_KNOWN  # well-known UIDs (the UTC frame of reference) identify nobody
        new = set().union(*(_strings(v) for v in after.get(tag, [])))
        assert not old & new, f"{path.name}: {name} ({tag:08X}) kept its original value"
    for tag in after:
        group = tag >> 16
        assert not group % 2 or group == 0xFFFF or group < 8, f"{path.name}: private {tag:08X} kept"
        assert not 0x5000 <= group <= 0x50FF, f"{path.name}: curve {tag:08X} kept"
        assert not (0x6000 <= group <= 0x60FF), f"{path.name}: overlay {tag:08X} kept"
    if "PixelData" in original:
        assert out.PixelData == original.PixelData, f"{path.name}: pixel data changed"
    assert out.PatientIdentityRemoved == "YES"


# -- consistency within a project --------------------------------------------------------------


def _study(study_uid: str, study_date: str, patient_id: str = "NHS9434765919") -> Dataset:
    ds = pydicom.dcmread(get_testdata_files("CT_small.dcm")[0])
    ds.PatientID = patient_id
    ds.PatientName = "SMITH^JOHN"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = study_uid + ".1"
    ds.SOPInstanceUID = study_uid + ".1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.9.7.1"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date
    ds.StudyTime = "101500"
    return ds


def _day(value: str) -> date:
    return date(int(value[:4]), int(value[4:6]), int(value[6:8]))


def test_uids_and_dates_map_consistently_across_two_studies_of_a_patient() -> None:
    profile = DeidProfile("lung", frozenset({DeidOption.RETAIN_LONGITUDINAL_TEMPORAL}))
    relink = Relink()
    first = _deidentify(_study("1.2.826.0.1.3680043.9.7.100", "20240105"), profile, relink=relink)
    second = _deidentify(_study("1.2.826.0.1.3680043.9.7.200", "20240305"), profile, relink=relink)
    again = _deidentify(_study("1.2.826.0.1.3680043.9.7.100", "20240105"), profile)
    assert first.PatientID == second.PatientID != "NHS9434765919"
    assert first.PatientName == first.PatientID
    assert first.FrameOfReferenceUID == second.FrameOfReferenceUID != "1.2.826.0.1.3680043.9.7.1"
    assert first.StudyInstanceUID != second.StudyInstanceUID
    assert first.StudyInstanceUID.startswith("2.25.") and len(first.StudyInstanceUID) <= 64
    assert first.file_meta.MediaStorageSOPInstanceUID == first.SOPInstanceUID
    assert (again.StudyInstanceUID, again.SOPInstanceUID) == (first.StudyInstanceUID, first.SOPInstanceUID)
    # dates shift by the patient's one offset: the interval between the studies is kept
    shift = (_day(first.StudyDate) - date(2024, 1, 5)).days
    assert -730 <= shift <= -62
    assert (_day(second.StudyDate) - date(2024, 3, 5)).days == shift
    assert first.StudyTime == "101500" and first.LongitudinalTemporalInformationModified == "MODIFIED"
    # the relink table maps back
    assert relink.entries[("patient", first.PatientID)] == "NHS9434765919"
    assert relink.entries[("study", first.StudyInstanceUID)] == "1.2.826.0.1.3680043.9.7.100"
    # another patient, another project: other pseudonyms and offsets
    other = _deidentify(_study("1.2.826.0.1.3680043.9.7.300", "20240105", "NHS4010232137"), profile)
    assert other.PatientID != first.PatientID
    elsewhere = _deidentify(_study("1.2.826.0.1.3680043.9.7.100", "20240105"), DeidProfile("other"),
                            key=bytes(32))
    assert elsewhere.PatientID != first.PatientID and elsewhere.StudyInstanceUID != first.StudyInstanceUID


# -- options, one by one -------------------------------------------------------------------------


def _rich() -> Dataset:
    ds = _study("1.2.826.0.1.3680043.9.7.100", "20240105")
    ds.PatientSex, ds.PatientAge, ds.PatientWeight, ds.PatientSize = "F", "054Y", "61.5", "1.62"
    ds.StationName, ds.DeviceSerialNumber = "CTSCAN01", "SN-44817"
    ds.StudyDescription = "CT CHEST WITH CONTRAST"
    ds.SeriesDescription = "follow-up for Smith"  # names the patient: cleaning empties it
    item = Dataset()
    item.ValueType, item.TextValue = "TEXT", "No nodules. Reported for SMITH"
    item2 = Dataset()
    item2.ValueType, item2.TextValue = "TEXT", "Lungs clear"
    ds.ContentSequence = DicomSequence([item, item2])
    ds.add_new((0x0019, 0x0010), "LO", "GEMS_ACQU_01")
    ds.add_new((0x0019, 0x100C), "SS", 3)
    ds.add_new((0x0019, 0x100D), "LO", "SMITH JOHN")
    return ds


def _profile(*options: DeidOption, safe: tuple[SafePrivate, ...] = ()) -> DeidProfile:
    return DeidProfile("opts", frozenset(options), safe)


PATIENT = ("PatientSex", "PatientAge", "PatientWeight", "PatientSize")
DEVICE = ("StationName", "DeviceSerialNumber")


def _gone(ds: Dataset, keyword: str) -> bool:
    elem = ds.data_element(keyword) if keyword in ds else None
    return elem is None or elem.value in ("", None, [])


def test_basic_profile_removes_every_group() -> None:
    out = _deidentify(_rich(), _profile())
    for keyword in (*PATIENT, *DEVICE, "StudyDescription", "SeriesDescription", "ContentSequence",
                    "StudyDate", "StudyTime"):
        assert _gone(out, keyword), keyword
    assert not any(e.tag.is_private for e in out)
    assert out.LongitudinalTemporalInformationModified == "REMOVED"


def test_retain_patient_characteristics_keeps_them_only() -> None:
    out = _deidentify(_rich(), _profile(DeidOption.RETAIN_PATIENT_CHARACTERISTICS))
    assert (out.PatientSex, out.PatientAge, str(out.PatientWeight), str(out.PatientSize)) == \
        ("F", "054Y", "61.5", "1.62")
    assert all(_gone(out, k) for k in (*DEVICE, "StudyDescription", "StudyDate"))
    assert ("113108", "DCM") in {(c.CodeValue, c.CodingSchemeDesignator)
                                 for c in out.DeidentificationMethodCodeSequence}


def test_retain_device_identity_keeps_them_only() -> None:
    out = _deidentify(_rich(), _profile(DeidOption.RETAIN_DEVICE_IDENTITY))
    assert (out.StationName, out.DeviceSerialNumber) == ("CTSCAN01", "SN-44817")
    assert all(_gone(out, k) for k in (*PATIENT, "StudyDescription"))


def test_clean_descriptors_keeps_descriptions_without_identity() -> None:
    out = _deidentify(_rich(), _profile(DeidOption.CLEAN_DESCRIPTORS))
    assert out.StudyDescription == "CT CHEST WITH CONTRAST"
    assert _gone(out, "SeriesDescription")  # it named the patient
    assert all(_gone(out, k) for k in (*PATIENT, *DEVICE, "ContentSequence"))


def test_clean_structured_content_keeps_the_report_cleaned() -> None:
    """Review finding 9: free text in structured content may name anyone (a doctor, a hospital), and no
    recogniser here proves it clean: it is emptied; the coded structure stays (before: kept as it was)."""
    ds = _rich()
    item = Dataset()
    item.RelationshipType, item.ValueType = "CONTAINS", "TEXT"
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning = "121071", "DCM", "Finding"
    item.ConceptNameCodeSequence = DicomSequence([concept])
    item.TextValue = "Seen at St Elsewhere on 12/03/2023 by Dr Gregory House"
    ds.ContentSequence.append(item)
    out = _deidentify(ds, _profile(DeidOption.CLEAN_STRUCTURED_CONTENT))
    assert [item.TextValue for item in out.ContentSequence] == ["", "", ""]
    assert [item.ValueType for item in out.ContentSequence] == ["TEXT"] * 3
    assert out.ContentSequence[2].ConceptNameCodeSequence[0].CodeMeaning == "Finding"
    raw = io.BytesIO()
    out.save_as(raw, enforce_file_format=False)
    assert b"House" not in raw.getvalue() and b"Elsewhere" not in raw.getvalue()
    assert all(_gone(out, k) for k in (*PATIENT, *DEVICE, "StudyDescription"))


def test_the_preamble_and_every_identifier_leave_the_bytes() -> None:
    """Review finding 4: the 128-byte preamble was copied verbatim (a name and an NHS number in it)."""
    ds = _rich()
    ds.preamble = b"SMITH^JOHN NHS 9434765919".ljust(128, b"\0")
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    relink = Relink()
    out = Deidentifier(_profile(), Pseudonymiser("opts", KEY)).deidentify_bytes(buffer.getvalue(), relink)
    assert out[:128] == b"\0" * 128 and out[128:132] == b"DICM"
    for needle in (b"SMITH", b"9434765919", b"NHS9434765919", b"CTSCAN01", b"SN-44817"):
        assert needle not in out, needle


def test_retain_longitudinal_shifts_dates_instead_of_removing_them() -> None:
    out = _deidentify(_rich(), _profile(DeidOption.RETAIN_LONGITUDINAL_TEMPORAL))
    assert out.StudyDate and out.StudyDate != "20240105"
    assert all(_gone(out, k) for k in (*PATIENT, *DEVICE))


def test_retain_safe_private_keeps_only_the_safe_listed_element() -> None:
    safe = (SafePrivate(0x0019, 0x0C, "GEMS_ACQU_01"),)
    out = _deidentify(_rich(), _profile(DeidOption.RETAIN_SAFE_PRIVATE, safe=safe))
    private = {int(e.tag): e.value for e in out if e.tag.is_private}
    assert private == {0x00190010: "GEMS_ACQU_01", 0x0019100C: 3}
    assert all(_gone(out, k) for k in (*PATIENT, *DEVICE))


# -- options as configuration: a bad name is refused, naming it -----------------------------------


def test_unknown_option_is_refused_with_its_key() -> None:
    with pytest.raises(ConfigError, match=r"deid\.retain_device_identy: unknown key"):
        parse_profile({"project": "p", "retain_device_identy": True})
    with pytest.raises(ConfigError, match=r"deid\.pixel_risk"):
        parse_profile({"project": "p", "pixel_risk": "ignore"})
    with pytest.raises(ConfigError, match=r"deid\.retain_safe_private: needs a safe_private list"):
        parse_profile({"project": "p", "retain_safe_private": True})
    with pytest.raises(ConfigError, match=r"deid\.project"):
        parse_profile({"project": "../etc"})
    profile = parse_profile({"project": "p", "retain_safe_private": True, "safe_private": ["0019,xx0c,GEMS_ACQU_01"],
                             "clean_descriptors": True})
    assert profile.options == {DeidOption.RETAIN_SAFE_PRIVATE, DeidOption.CLEAN_DESCRIPTORS}
    assert profile.safe_private == (SafePrivate(0x19, 0x0C, "GEMS_ACQU_01"),)


def test_the_file_meta_information_loses_the_sending_devices_identity() -> None:
    ds = _rich()
    ds.file_meta.SourceApplicationEntityTitle = "RGT_CT3"
    ds.file_meta.SendingApplicationEntityTitle = "RGT_PACS"
    ds.file_meta.SourcePresentationAddress = "dicom://10.20.30.40:104"
    ds.file_meta.PrivateInformationCreatorUID = UID("1.2.826.0.1.3680043.9.7.555")
    ds.file_meta.PrivateInformation = b"RGT internal"
    out = _deidentify(ds, _profile())
    meta = {e.keyword: e.value for e in out.file_meta}
    for keyword in ("SourceApplicationEntityTitle", "SendingApplicationEntityTitle", "SourcePresentationAddress",
                    "PrivateInformation"):
        assert meta.get(keyword) in (None, "", b""), keyword
    assert meta.get("PrivateInformationCreatorUID") != "1.2.826.0.1.3680043.9.7.555"
    kept = _deidentify(ds, _profile(DeidOption.RETAIN_DEVICE_IDENTITY))
    assert kept.file_meta.SourceApplicationEntityTitle == "RGT_CT3"


def test_a_patient_is_keyed_by_issuer_and_id_and_an_instance_without_an_id_by_its_study() -> None:
    """Review finding 12: one ID under two issuers merged two patients; every instance without a Patient ID
    became one subject; the re-link table lost the issuer."""
    def pseudonym(patient_id: str | None, issuer: str | None, study: str) -> tuple[str, Relink]:
        ds = _study(study, "20240105", patient_id or "")
        if patient_id is None:
            del ds.PatientID
        if issuer is not None:
            ds.IssuerOfPatientID = issuer
        relink = Relink()
        return str(_deidentify(ds, _profile(), relink=relink).PatientID), relink

    s1, s2 = "1.2.826.0.1.3680043.9.7.201", "1.2.826.0.1.3680043.9.7.202"
    rgt, _ = pseudonym("12345", "RGT", s1)
    rj1, relink = pseudonym("12345", "RJ1", s1)
    assert rgt != rj1 and ("patient", rj1) in relink.entries and relink.entries[("patient", rj1)] == "12345^^^RJ1"
    assert pseudonym("12345", "RGT", s2)[0] == rgt  # the same patient in another study: the same subject
    assert pseudonym("12345", None, s1)[0] == pseudonym("12345", "", s2)[0]  # no issuer: the ID alone, as before
    none1, relink = pseudonym(None, None, s1)
    none2, _ = pseudonym(None, None, s2)
    assert none1 != none2 and relink.entries[("patient", none1)] == f"study:{s1}"
    assert pseudonym("", None, s1)[0] == none1


def test_urls_that_carry_the_original_uids_are_removed() -> None:
    """Review finding 11: Retrieve URL kept the original Study Instance UID (and the PACS host)."""
    ds = _rich()
    study = str(ds.StudyInstanceUID)
    ds.RetrieveURL = f"https://pacs.rgt.nhs.uk/dicomweb/studies/{study}"
    item = Dataset()
    item.RetrieveURI = f"https://pacs.rgt.nhs.uk/wado?studyUID={study}"
    item.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.9.7.555"
    ds.ReferencedImageSequence = DicomSequence([item])
    out = _deidentify(ds, _profile(DeidOption.RETAIN_DEVICE_IDENTITY, DeidOption.CLEAN_DESCRIPTORS))
    raw = io.BytesIO()
    out.save_as(raw, enforce_file_format=False)
    assert study.encode() not in raw.getvalue() and b"pacs.rgt" not in raw.getvalue()
    assert "RetrieveURL" not in out and "RetrieveURI" not in out.ReferencedImageSequence[0]
