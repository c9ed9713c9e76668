"""The attributes a node lists, matches (C-FIND, QIDO-RS) and checks, read with pydicom.

Only the top-level elements named here are read (`specific_tags`), never the
pixel data (`stop_before_pixels`), and no value is decoded beyond what the
attribute needs. pydicom's read is cross-checked against the structural scan:
it must stop exactly where the scan found the pixel data element (or the end
of the file) and must have chosen the same encoding.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.charset import decode_bytes, default_encoding
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.valuerep import PN_DELIMS, TEXT_VR_DELIMS

from meshnode.dicom.errors import DicomDepthError, MalformedDicomError, MissingUidError
from meshnode.dicom.structure import FileLayout

log = logging.getLogger(__name__)

# Values longer than this are not read (pydicom defers them); no attribute
# the node reads is legitimately anywhere near it.
MAX_ATTRIBUTE_BYTES = 1024

_UID_RE = re.compile(r"[0-9]+(\.[0-9]+)*")
_IS_RE = re.compile(r"[+-]?[0-9]{1,12}")

# name -> (tag, VR). The VR is ours, not the file's: a wrong explicit VR in
# the file changes nothing here.
_TEXT: dict[str, tuple[int, str]] = {
    "study_instance_uid": (0x0020000D, "UI"),
    "series_instance_uid": (0x0020000E, "UI"),
    "sop_instance_uid": (0x00080018, "UI"),
    "sop_class_uid": (0x00080016, "UI"),
    "patient_name": (0x00100010, "PN"),
    "patient_id": (0x00100020, "LO"),
    "patient_birth_date": (0x00100030, "DA"),
    "patient_sex": (0x00100040, "CS"),
    "modality": (0x00080060, "CS"),
    "study_date": (0x00080020, "DA"),
    "study_time": (0x00080030, "TM"),
    "study_description": (0x00081030, "LO"),
    "accession_number": (0x00080050, "SH"),
    "series_description": (0x0008103E, "LO"),
    "photometric_interpretation": (0x00280004, "CS"),
}
_INTEGER: dict[str, tuple[int, str]] = {
    "series_number": (0x00200011, "IS"),
    "instance_number": (0x00200013, "IS"),
    "rows": (0x00280010, "US"),
    "columns": (0x00280011, "US"),
    "number_of_frames": (0x00280008, "IS"),
    "samples_per_pixel": (0x00280002, "US"),
    "bits_allocated": (0x00280100, "US"),
}
TAGS: tuple[int, ...] = tuple(tag for tag, _ in (*_TEXT.values(), *_INTEGER.values()))


@dataclass(frozen=True)
class InstanceAttributes:
    """Plain values of the attributes the node needs; "" / None when absent.

    Text is as pydicom decodes it with the file's character set (person names
    in their DICOM form, `Family^Given`); dates and times as stored.
    """

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    patient_name: str
    patient_id: str
    patient_birth_date: str
    patient_sex: str
    modality: str
    study_date: str
    study_time: str
    study_description: str
    accession_number: str
    series_number: int | None
    series_description: str
    instance_number: int | None
    rows: int | None
    columns: int | None
    number_of_frames: int | None
    samples_per_pixel: int | None
    bits_allocated: int | None
    photometric_interpretation: str


def uid_digest(uid: str) -> str:
    """A short hash of a UID, for logs (DESIGN.md: log hashed UIDs, no patient data)."""
    return hashlib.sha256(uid.encode("ascii", "replace")).hexdigest()[:16]


def read_attributes(path: Path | bytes, layout: FileLayout) -> tuple[InstanceAttributes, frozenset[str]]:
    """The instance's attributes (of the file at `path`, or held in memory) and any flags raised.

    Raises MalformedDicomError when pydicom cannot read the header or reads
    it differently from the structural scan, MissingUidError when a Study,
    Series or SOP Instance UID is absent or invalid.
    """
    if isinstance(path, bytes):
        dataset = _read_dataset_from(io.BytesIO(path), layout)
    else:
        with path.open("rb") as stream:
            dataset = _read_dataset_from(stream, layout)
    return _attributes_of(dataset, layout.transfer_syntax_uid)


def read_header_attributes(stream: BinaryIO) -> InstanceAttributes:
    """The attributes of an instance read from the start of its bytes, without a structural scan.

    For instances already stored as blocks (a received study checked against
    its manifest): values are decoded exactly as `read_attributes` decodes
    them at ingest, so the two can be compared. Reading stops before the
    pixel data. Raises MalformedDicomError when pydicom cannot read the
    header, MissingUidError when a Study, Series or SOP Instance UID is
    absent or invalid.
    """
    try:
        dataset = dcmread(stream, defer_size=MAX_ATTRIBUTE_BYTES, stop_before_pixels=True, force=True,
                          specific_tags=list(TAGS))
    except RecursionError:
        raise DicomDepthError("sequences nested too deeply for pydicom to read") from None
    except Exception as exc:  # untrusted input: pydicom fails in many ways
        log.debug("pydicom refused a header: %s", type(exc).__name__)
        raise MalformedDicomError(f"pydicom cannot read the header ({type(exc).__name__})") from None
    try:
        return _attributes_of(dataset, "")[0]
    except (ValueError, LookupError, TypeError) as exc:  # a character set pydicom cannot decode, say
        raise MalformedDicomError(f"the header's attributes cannot be decoded ({type(exc).__name__})") from None


def _attributes_of(dataset: Dataset, transfer_syntax_uid: str) -> tuple[InstanceAttributes, frozenset[str]]:
    flags: set[str] = set()
    encodings = _encodings(dataset)

    def text(name: str) -> str:
        tag, vr = _TEXT[name]
        return _text(_raw_value(dataset, tag, name, flags), vr, encodings)

    def integer(name: str) -> int | None:
        tag, vr = _INTEGER[name]
        raw = dataset.get_item(tag, keep_deferred=True)
        data = _raw_value(dataset, tag, name, flags)
        little = raw.is_little_endian if isinstance(raw, RawDataElement) else True
        value = _integer(data, vr, little)
        if data and value is None:
            flags.add("malformed-attribute")
            log.debug("attribute %s is not a valid %s", name, vr)
        return value

    attributes = InstanceAttributes(
        study_instance_uid=text("study_instance_uid"),
        series_instance_uid=text("series_instance_uid"),
        sop_instance_uid=text("sop_instance_uid"),
        sop_class_uid=text("sop_class_uid"),
        transfer_syntax_uid=transfer_syntax_uid,
        patient_name=text("patient_name"),
        patient_id=text("patient_id"),
        patient_birth_date=text("patient_birth_date"),
        patient_sex=text("patient_sex"),
        modality=text("modality"),
        study_date=text("study_date"),
        study_time=text("study_time"),
        study_description=text("study_description"),
        accession_number=text("accession_number"),
        series_number=integer("series_number"),
        series_description=text("series_description"),
        instance_number=integer("instance_number"),
        rows=integer("rows"),
        columns=integer("columns"),
        number_of_frames=integer("number_of_frames"),
        samples_per_pixel=integer("samples_per_pixel"),
        bits_allocated=integer("bits_allocated"),
        photometric_interpretation=text("photometric_interpretation"),
    )
    _check_uids(attributes)
    return attributes, frozenset(flags)


def _read_dataset_from(stream: BinaryIO, layout: FileLayout) -> Dataset:
    try:
        dataset = dcmread(
            stream,
            defer_size=MAX_ATTRIBUTE_BYTES,
            stop_before_pixels=True,
            force="no-preamble" in layout.flags,
            specific_tags=list(TAGS),
        )
        stopped_at = stream.tell()
    except RecursionError:
        raise DicomDepthError("sequences nested too deeply for pydicom to read") from None
    except Exception as exc:  # untrusted input: pydicom fails in many ways
        log.debug("pydicom refused a header: %s", type(exc).__name__)
        raise MalformedDicomError(
            f"pydicom cannot read the header ({type(exc).__name__})"
        ) from None
    if "deflated" not in layout.flags:
        expected = layout.pixel_element_offset
        if expected is None:
            expected = layout.file_size
        if stopped_at != expected:
            raise MalformedDicomError(
                f"pydicom stopped reading at offset {stopped_at}, the scan at {expected}"
            )
    # (pydicom reports the transfer syntax's encoding even when it read the
    # data set in the other one, so only a plain file can be compared)
    encoding = dataset.original_encoding
    plain = not layout.flags & {"transfer-syntax-mismatch", "deflated"}
    if plain and encoding != (layout.implicit_vr, layout.little_endian):
        raise MalformedDicomError("pydicom and the scan read the data set in different encodings")
    return dataset


def _raw_value(dataset: Dataset, tag: int, name: str, flags: set[str]) -> bytes:
    """The element's undecoded value bytes; b"" when absent or not read."""
    # keep_deferred: without it, get_item "reads" any raw value held as None (a deferred one, and an
    # empty one with an unknown VR), converting it and raising whatever pydicom raises
    raw = dataset.get_item(tag, keep_deferred=True)
    if not isinstance(raw, RawDataElement):
        return b""  # absent (a sequence is never one of ours)
    if raw.value is None:
        if raw.length:  # pydicom deferred it: longer than MAX_ATTRIBUTE_BYTES
            flags.add("oversized-attribute")
            log.debug("attribute %s is longer than %d bytes; ignored", name, MAX_ATTRIBUTE_BYTES)
        return b""
    return bytes(raw.value)


def _encodings(dataset: Dataset) -> list[str]:
    """Python codecs for the data set's Specific Character Set (pydicom reads it first)."""
    encodings = dataset.original_character_set
    if isinstance(encodings, str):
        return [encodings]
    return list(encodings) or [default_encoding]


def _text(data: bytes, vr: str, encodings: list[str]) -> str:
    """Decode like pydicom, but without its value validation (which logs values)."""
    if vr == "PN":
        names = []
        for name in data.split(b"\\"):
            raw_groups = name.rstrip(b"\x00 ").split(b"=")
            groups = [decode_bytes(g, encodings, PN_DELIMS) for g in raw_groups]
            while groups and not groups[-1]:
                groups.pop()
            names.append("=".join(groups).rstrip("\x00 "))
        return "\\".join(names).strip("\x00 ")
    if vr in ("LO", "SH"):
        decoded = decode_bytes(data, encodings, TEXT_VR_DELIMS)
    else:  # UI, CS, DA, TM, IS: the default repertoire
        decoded = data.decode("ascii", "replace")
    return "\\".join(v.strip("\x00 ") for v in decoded.split("\\")).strip("\x00 ")


def _integer(data: bytes, vr: str, little_endian: bool) -> int | None:
    """The first value of a US or IS element; None when absent or invalid."""
    if not data:
        return None
    if vr == "US":
        if len(data) % 2:
            return None
        return int.from_bytes(data[:2], "little" if little_endian else "big")
    first = data.decode("ascii", "replace").split("\\")[0].strip("\x00 ")
    return int(first) if _IS_RE.fullmatch(first) else None


def _check_uids(attributes: InstanceAttributes) -> None:
    for label, uid in (
        ("Study Instance UID", attributes.study_instance_uid),
        ("Series Instance UID", attributes.series_instance_uid),
        ("SOP Instance UID", attributes.sop_instance_uid),
        ("SOP Class UID", attributes.sop_class_uid),  # Type 1 (SOP Common); the DICOMDIR names it (review M6)
    ):
        if not uid:
            raise MissingUidError(f"missing {label}")
        if len(uid) > 64 or not _UID_RE.fullmatch(uid):
            raise MissingUidError(f"{label} is not a valid UID")
