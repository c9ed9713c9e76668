"""A DICOMDIR (Basic Directory IOD, PS3.3 F; PS3.10 8) for File IDs we choose, as bytes, deterministically.

pydicom's FileSet writes a DICOMDIR only together with the instances it copies and renames itself, so the
records are made here: pydicom's own directory recorders (pydicom.fileset.DIRECTORY_RECORDERS: the keys
PS3.3 F.5 requires for PATIENT, STUDY, SERIES and the other record types) build each record from the
instance's header and pydicom's writer encodes it; IMAGE records (most of a DICOMDIR, and they hold no
text) are encoded directly from what storage knows, 10x cheaper. Every offset is a fixed-size UL, so each
record is encoded once with zero offsets and its two offsets patched in place once all positions are known.
Type 1 keys of a record that are Type 2 (so often empty) in the instance are invented, as dcmtk's
`dcmmkdir +I` does (it uses DCMTKPAT/DCMTKSTUDY + 6 digits and counters; review M5): Patient ID "MESHPT" +
the patient's File ID number, Study ID the Accession Number (else "MESHST" + the study's number in the set),
Study Date and Time the series', acquisition's, content's or creation's (else 19000101 000000, dcmmkdir's
error values: it would use today, which changes the bytes), Series Number and Instance Number the
series' and instance's sequence numbers (from 1) in their File IDs.
A header still missing a key its record type requires gets a record with what it has (every key of the
record types' lists below), rather than leaving the instance out of the patient's set; the File ID, SOP
class, SOP instance and transfer syntax are always there. Explicit VR Little Endian, File-set ID
"DICOM_MESH", File-set Consistency Flag 0.
"""

from __future__ import annotations

import hashlib
import logging
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.fileset import DIRECTORY_RECORDERS
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian

from meshnode.dicom.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from meshnode.storage.records import InstanceRecord, hash_uid

log = logging.getLogger(__name__)

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
FILE_SET_ID = "DICOM_MESH"


@dataclass(frozen=True)
class DirInstance:
    """One instance of the set: its File ID components, what storage knows of it, and its header (pydicom,
    without pixel data) when it was read: the first instance of each series, and any non-image instance."""

    file_id: tuple[str, ...]
    record: InstanceRecord
    header: Dataset | None


def patient_key(record: InstanceRecord) -> tuple[str, str]:
    """One PATIENT record per Patient ID (review m5: two spellings of a name made two records with one ID);
    by name only when the ID is empty."""
    patient_id = record.study.patient_id
    return (patient_id, "") if patient_id else ("", record.study.patient_name)


def _four_level_table() -> dict[str, str]:
    """pydicom's SOP class -> record type table (PS3.3 F.5: private in pydicom.fileset, so checked here:
    review m6, a silent empty fallback would have made every SR, PDF and RT object an IMAGE record)."""
    import pydicom.fileset

    table = getattr(pydicom.fileset, "_FOUR_LEVEL_SOP_CLASSES", None)
    if not isinstance(table, dict) or table.get("1.2.840.10008.5.1.4.1.1.88.11") != "SR DOCUMENT":
        raise ImportError("pydicom.fileset._FOUR_LEVEL_SOP_CLASSES (SOP class -> DICOMDIR record type) is "
                          "missing or changed in this pydicom: meshnode.study.dicomdir needs it")
    return dict(table)


_RECORD_TYPES = _four_level_table()


def record_type(record: InstanceRecord) -> str:
    """The fourth-level record type for the instance's SOP class (pydicom's table; IMAGE otherwise)."""
    if record.sop_class_uid in _RECORD_TYPES:
        return _RECORD_TYPES[record.sop_class_uid]
    if record.sop_class_uid.startswith("1.2.840.10008.5.1.4.1.1.104."):
        return "ENCAP DOC"
    return "IMAGE"


def fallback_header(record: InstanceRecord) -> Dataset:
    """What storage knows of an instance, as a header (when the stored header could not be read)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"  # the record's strings are already decoded: write them as UTF-8
    ds.PatientName = record.study.patient_name
    ds.PatientID = record.study.patient_id
    ds.StudyDate = record.study.study_date
    ds.StudyTime = record.study.study_time
    ds.StudyDescription = record.study.description
    ds.StudyInstanceUID = record.study_uid
    ds.StudyID = ""
    ds.AccessionNumber = record.study.accession
    ds.Modality = record.series.modality
    ds.SeriesInstanceUID = record.series_uid
    ds.SeriesNumber = record.series.series_number if record.series.series_number is not None else ""
    ds.InstanceNumber = record.instance_number if record.instance_number is not None else ""
    ds.SOPClassUID = record.sop_class_uid
    ds.SOPInstanceUID = record.sop_instance_uid
    return ds


#: the keys a record keeps from the header when its recorder refuses it (PS3.3 F.5: the record types' keys)
_KEEP_WHEN_INCOMPLETE = {
    "PATIENT": ("PatientName", "PatientID"),
    "STUDY": ("StudyDate", "StudyTime", "StudyDescription", "StudyInstanceUID", "StudyID", "AccessionNumber"),
    "SERIES": ("Modality", "SeriesInstanceUID", "SeriesNumber"),
}
#: a leaf (any other record type): what its F.5 table names, those the header has
_LEAF_KEYS = ("ContentDate", "ContentTime", "InstanceNumber", "DocumentTitle", "MIMETypeOfEncapsulatedDocument",
              "HL7InstanceIdentifier", "ConceptNameCodeSequence", "CompletionFlag", "VerificationFlag",
              "ContentLabel", "ContentDescription", "ContentCreatorName", "PresentationCreationDate",
              "PresentationCreationTime", "ReferencedSeriesSequence", "BlendingSequence", "StationName",
              "Manufacturer", "ManufacturerModelName", "DeviceSerialNumber", "SoftwareVersions",
              "WaveformSequence", "NumberOfFrames", "Rows", "Columns", "ImageType")


#: dcmmkdir's alternative Study Date (and so Time): the series', the acquisition's, the content's; then
#: the instance's creation; then (dcmmkdir: today, which would make the bytes change) its error value
_DATES = ("SeriesDate", "AcquisitionDate", "ContentDate", "InstanceCreationDate")
_TIMES = ("SeriesTime", "AcquisitionTime", "ContentTime", "InstanceCreationTime")


def _first_of(header: Dataset | None, keywords: Sequence[str]) -> str:
    for keyword in keywords:
        value = header.get(keyword) if header is not None else None
        if value:
            return str(value)
    return ""


def _number(component: str) -> int:
    """The sequence number in a File ID component such as SE000003 (3)."""
    return int(component[2:])


def invented_keys(kind: str, item: DirInstance, study_number: int) -> dict[str, tuple[str, object]]:
    """The Type 1 keys of a `kind` record invented for this instance when its header has them empty:
    keyword -> (VR, value), as dcmmkdir +I does (module docstring)."""
    if kind == "PATIENT":
        return {"PatientID": ("LO", f"MESHPT{_number(item.file_id[1]):06d}")}
    if kind == "STUDY":
        accession = item.record.study.accession.strip()
        return {"StudyID": ("SH", accession if 0 < len(accession) <= 16 else f"MESHST{study_number:06d}"),
                "StudyDate": ("DA", _first_of(item.header, _DATES) or "19000101"),
                "StudyTime": ("TM", _first_of(item.header, _TIMES) or "000000")}
    if kind == "SERIES":
        return {"SeriesNumber": ("IS", str(_number(item.file_id[3]) + 1))}
    return {"InstanceNumber": ("IS", str(_number(item.file_id[4]) + 1))}


def _filled(header: Dataset, invented: dict[str, tuple[str, object]]) -> Dataset:
    """`header` with the invented keys where it lacks a value (a new Dataset: the header's elements are
    shared, never changed)."""
    missing = {k: v for k, v in invented.items() if k not in header or header[k].VM == 0}
    if not missing:
        return header
    out = Dataset(header)
    for keyword, (vr, value) in missing.items():
        out.add_new(keyword, vr, value)
    return out


def _record(kind: str, header: Dataset, item: DirInstance, study_number: int) -> Dataset:
    header = _filled(header, invented_keys(kind, item, study_number))
    try:
        out = DIRECTORY_RECORDERS[kind](header)
    except (ValueError, KeyError, AttributeError, TypeError) as exc:
        log.warning("instance %s lacks keys its %s directory record requires (%s); recorded with what it has",
                    hash_uid(item.record.sop_instance_uid), kind, type(exc).__name__)
        out = Dataset()
        for keyword in _KEEP_WHEN_INCOMPLETE.get(kind, _LEAF_KEYS):
            if keyword in header:
                out[keyword] = header[keyword]
    if "SpecificCharacterSet" in header:
        out.SpecificCharacterSet = header.SpecificCharacterSet
    out.OffsetOfTheNextDirectoryRecord = 0
    out.RecordInUseFlag = 0xFFFF
    out.OffsetOfReferencedLowerLevelDirectoryEntity = 0
    out.DirectoryRecordType = kind
    return out


@dataclass
class _Node:
    #: the record encoded with both offsets 0 (they are patched in place: fixed-size UL values)
    body: bytearray
    children: list[_Node]
    offset: int = 0


#: where a record's two offsets' values sit in its encoding: (0004,1400) UL is its first element, then
#: (0004,1410) US, then (0004,1420) UL (explicit VR little endian: 8-byte element headers)
_NEXT_AT, _LOWER_AT = 8, 30
_RECORD_START = struct.pack("<HH2sH", 0x0004, 0x1400, b"UL", 4)


def _element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\0" if vr == b"UI" else b" "
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _image_record(item: DirInstance) -> bytearray:
    """An IMAGE record, encoded directly (the bulk of a DICOMDIR: thousands of them; no text, so no character
    set): the offsets, the record type, the Referenced File ID and SOP/transfer syntax UIDs, Instance Number
    (Type 1: the instance's sequence number in its series when it has none)."""
    rec = item.record
    number = str(rec.instance_number if rec.instance_number is not None else _number(item.file_id[4]) + 1)
    return bytearray(b"".join([
        _element(0x0004, 0x1400, b"UL", struct.pack("<I", 0)),
        _element(0x0004, 0x1410, b"US", struct.pack("<H", 0xFFFF)),
        _element(0x0004, 0x1420, b"UL", struct.pack("<I", 0)),
        _element(0x0004, 0x1430, b"CS", b"IMAGE"),
        _element(0x0004, 0x1500, b"CS", "\\".join(item.file_id).encode("ascii")),
        _element(0x0004, 0x1510, b"UI", rec.sop_class_uid.encode("ascii")),
        _element(0x0004, 0x1511, b"UI", rec.sop_instance_uid.encode("ascii")),
        _element(0x0004, 0x1512, b"UI", rec.transfer_syntax.encode("ascii")),
        _element(0x0020, 0x0013, b"IS", number.encode("ascii")),
    ]))


def _body(record: Dataset) -> bytearray:
    body = bytearray(_encode(record))
    if body[:8] != _RECORD_START or body[22:30] != struct.pack("<HH2sH", 0x0004, 0x1420, b"UL", 4):
        raise RuntimeError("a directory record does not start with its offsets")  # our bug, not input
    return body


def _encode(ds: Dataset) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_dataset(fp, ds)
    return fp.getvalue()


def _tree(instances: Sequence[DirInstance]) -> list[_Node]:
    patients: dict[tuple[str, str], _Node] = {}
    studies: dict[str, _Node] = {}
    series: dict[tuple[str, str], _Node] = {}
    header_of_series: dict[tuple[str, str], Dataset] = {}
    for item in instances:
        rec = item.record
        key = (rec.study_uid, rec.series_uid)
        header = item.header or header_of_series.get(key) or fallback_header(rec)
        header_of_series.setdefault(key, header)
        pkey = patient_key(rec)
        study_number = len(studies) if rec.study_uid not in studies else 0
        if pkey not in patients:
            patients[pkey] = _Node(_body(_record("PATIENT", header, item, study_number)), [])
        if rec.study_uid not in studies:
            studies[rec.study_uid] = _Node(_body(_record("STUDY", header, item, study_number)), [])
            patients[pkey].children.append(studies[rec.study_uid])
        if key not in series:
            series[key] = _Node(_body(_record("SERIES", header, item, study_number)), [])
            studies[rec.study_uid].children.append(series[key])
        kind = record_type(rec)
        if kind == "IMAGE":
            series[key].children.append(_Node(_image_record(item), []))
            continue
        leaf = _record(kind, item.header or fallback_header(rec), item, study_number)
        leaf.ReferencedFileID = list(item.file_id)
        leaf.ReferencedSOPClassUIDInFile = rec.sop_class_uid
        leaf.ReferencedSOPInstanceUIDInFile = rec.sop_instance_uid
        leaf.ReferencedTransferSyntaxUIDInFile = rec.transfer_syntax
        series[key].children.append(_Node(_body(leaf), []))
    return list(patients.values())


def _walk(nodes: list[_Node]) -> list[_Node]:
    out: list[_Node] = []
    for node in nodes:
        out.append(node)
        out.extend(_walk(node.children))
    return out


def build_dicomdir(instances: Sequence[DirInstance]) -> bytes:
    """The DICOMDIR bytes for `instances`, in their order (patients, studies and series in first-seen order)."""
    roots = _tree(instances)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(MEDIA_STORAGE_DIRECTORY)
    ids = hashlib.sha256(b"".join("/".join(i.file_id).encode() + b"=" + i.record.digest for i in instances))
    meta.MediaStorageSOPInstanceUID = UID("2.25." + str(int.from_bytes(ids.digest()[:16], "big")))
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    head.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(head, meta, enforce_standard=True)
    top = Dataset()
    top.FileSetID = FILE_SET_ID
    top.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
    top.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = 0
    top.FileSetConsistencyFlag = 0
    prefix_len = len(head.getvalue()) + len(_encode(top)) + 12  # + the sequence element's header
    ordered = _walk(roots)
    pos = prefix_len
    for node in ordered:
        node.offset = pos
        pos += 8 + len(node.body)
    for siblings in [roots] + [n.children for n in ordered]:
        for this, following in zip(siblings, [*siblings[1:], None]):
            this.body[_NEXT_AT:_NEXT_AT + 4] = struct.pack("<I", following.offset if following else 0)
            this.body[_LOWER_AT:_LOWER_AT + 4] = struct.pack("<I", this.children[0].offset if this.children else 0)
    if roots:
        top.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = roots[0].offset
        top.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = roots[-1].offset
    parts = [head.getvalue(), _encode(top), struct.pack("<HH2sHI", 0x0004, 0x1220, b"SQ", 0, 0xFFFFFFFF)]
    for node in ordered:
        parts.append(struct.pack("<HHI", 0xFFFE, 0xE000, len(node.body)) + bytes(node.body))
    parts.append(struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
    out = b"".join(parts)
    if len(parts[0]) + len(parts[1]) + 12 != prefix_len:
        raise RuntimeError("DICOMDIR prefix length changed between passes")  # our bug, not input
    return out
