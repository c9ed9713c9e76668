"""The bad-file corpus: each file is refused with its own clear reason, or kept and flagged."""

from __future__ import annotations

import logging
import random
import struct
from pathlib import Path

import pydicom
import pytest

from meshnode.dicom import (
    DicomDepthError,
    DicomError,
    MalformedDicomError,
    MissingUidError,
    NotDicomError,
    PixelDataMismatchError,
    TruncatedDicomError,
    plan_instance,
)

from .conftest import PATIENT_ID, PATIENT_NAME
from .helpers import assert_round_trip, nested_sequences, write_minimal

PNG_HEADER = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(13)


def _refused(path: Path, error: type[DicomError], reason: str) -> DicomError:
    with pytest.raises(error) as refused:
        plan_instance(path)
    assert reason in refused.value.reason, refused.value.reason
    return refused.value


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file"),
        (random.Random(1).randbytes(4096), "no 'DICM' prefix at offset 128"),
        (PNG_HEADER + bytes(200), "no 'DICM' prefix at offset 128"),
        (b"%PDF-1.7\n" + bytes(300), "no 'DICM' prefix at offset 128"),
        (b"\x00" * 10, "no 'DICM' prefix at offset 128"),
    ],
    ids=["empty", "random", "png", "pdf", "tiny"],
)
def test_not_dicom(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "file.dcm"
    path.write_bytes(content)
    _refused(path, NotDicomError, reason)


def test_dicm_prefix_followed_by_garbage(tmp_path: Path) -> None:
    path = tmp_path / "garbage.dcm"
    path.write_bytes(bytes(128) + b"DICM" + random.Random(2).randbytes(2000))
    with pytest.raises(DicomError):
        plan_instance(path)


def _cut(source: Path, at: int, target: Path) -> Path:
    target.write_bytes(source.read_bytes()[:at])
    return target


def test_truncated_in_a_header_value(ct_slice: Path, tmp_path: Path) -> None:
    data = ct_slice.read_bytes()
    at = data.index(b"SYNTHETIC CT CHEST") + 5  # inside (0008,1030) Study Description
    _refused(_cut(ct_slice, at, tmp_path / "cut.dcm"), TruncatedDicomError, "value of (0008,1030)")


def test_truncated_in_an_element_header(ct_slice: Path, tmp_path: Path) -> None:
    plan = plan_instance(ct_slice)
    at = plan.header_end - 3  # inside the Pixel Data element's length field
    _refused(_cut(ct_slice, at, tmp_path / "cut.dcm"), TruncatedDicomError, "element header")


def test_truncated_in_native_pixel_data(ct_slice: Path, tmp_path: Path) -> None:
    plan = plan_instance(ct_slice)
    cut = _cut(ct_slice, plan.header_end + 100, tmp_path / "cut.dcm")
    _refused(cut, TruncatedDicomError, "pixel data value runs 1948 bytes past the end")


def test_truncated_in_encapsulated_pixel_data(rle_slice: Path, tmp_path: Path) -> None:
    plan = plan_instance(rle_slice)
    cut = _cut(rle_slice, plan.pixel_end - 20, tmp_path / "cut.dcm")
    _refused(cut, TruncatedDicomError, "fragment item at offset")


def test_element_length_beyond_end_of_file(ct_slice: Path, tmp_path: Path) -> None:
    data = bytearray(ct_slice.read_bytes())
    value = data.index(b"SYNTHETIC CT CHEST")
    assert data[value - 4 : value - 2] == b"LO"
    data[value - 2 : value] = struct.pack("<H", 0xFFF0)  # Study Description length
    path = tmp_path / "long.dcm"
    path.write_bytes(bytes(data))  # every byte is there; the length points past them
    error = _refused(path, TruncatedDicomError, "value of (0008,1030)")
    assert f"runs {value + 0xFFF0 - len(data)} bytes past the end of the file" in error.reason


def test_element_length_beyond_its_item(tmp_path: Path) -> None:
    inner = struct.pack("<HH2sH", 0x0008, 0x0100, b"SH", 200) + b"X" * 8  # claims 200 bytes
    item = struct.pack("<HHL", 0xFFFE, 0xE000, len(inner)) + inner
    sequence = struct.pack("<HH2sHL", 0x0040, 0xA730, b"SQ", 0, len(item)) + item
    path = write_minimal(tmp_path / "overrun.dcm", tail=sequence + bytes(400))
    _refused(path, MalformedDicomError, "crosses the end of its container")


@pytest.mark.parametrize("defined_length", [False, True], ids=["undefined", "defined"])
@pytest.mark.parametrize("depth", [33, 200])
def test_deeply_nested_sequences(tmp_path: Path, depth: int, defined_length: bool) -> None:
    nested = nested_sequences(depth, defined_length=defined_length)
    path = write_minimal(tmp_path / "nested.dcm", tail=nested)
    _refused(path, DicomDepthError, "nested deeper than 32 levels")


@pytest.mark.parametrize("defined_length", [False, True], ids=["undefined", "defined"])
def test_nesting_at_the_limit_is_accepted(tmp_path: Path, defined_length: bool) -> None:
    nested = nested_sequences(32, defined_length=defined_length)
    path = write_minimal(tmp_path / "nested.dcm", tail=nested)
    plan = plan_instance(path)
    assert plan.attributes.sop_instance_uid == "1.2.3.4.5.6"
    assert_round_trip(path, plan)


def test_rows_columns_inconsistent_with_pixel_data(ct_slice: Path, tmp_path: Path) -> None:
    ds = pydicom.dcmread(ct_slice)
    ds.Rows = 33
    path = tmp_path / "rows.dcm"
    ds.save_as(path)
    _refused(path, PixelDataMismatchError, "native pixel data is 2048 bytes but")


def test_one_padding_byte_is_allowed(tmp_path: Path) -> None:
    path = write_minimal(
        tmp_path / "odd.dcm",
        Rows=3,
        Columns=3,
        SamplesPerPixel=1,
        BitsAllocated=8,
        BitsStored=8,
        HighBit=7,
        PixelRepresentation=0,
        PhotometricInterpretation="MONOCHROME2",
        PixelData=bytes(range(9)) + b"\0",
    )
    plan = plan_instance(path)
    assert plan.pixel_end - plan.header_end == 10


@pytest.mark.parametrize(
    ("keyword", "label"),
    [
        ("SOPInstanceUID", "SOP Instance UID"),
        ("StudyInstanceUID", "Study Instance UID"),
        ("SeriesInstanceUID", "Series Instance UID"),
    ],
)
def test_missing_uid(ct_slice: Path, tmp_path: Path, keyword: str, label: str) -> None:
    ds = pydicom.dcmread(ct_slice)
    delattr(ds, keyword)
    path = tmp_path / "no-uid.dcm"
    ds.save_as(path)
    _refused(path, MissingUidError, f"missing {label}")


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_invalid_uid(ct_slice: Path, tmp_path: Path) -> None:
    ds = pydicom.dcmread(ct_slice)
    ds.SeriesInstanceUID = "1.2.../etc/passwd"
    path = tmp_path / "bad-uid.dcm"
    ds.save_as(path)
    _refused(path, MissingUidError, "Series Instance UID is not a valid UID")


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
@pytest.mark.parametrize("sop_class", ["1.2.840.10008.5.1.4.1.1.2\u00e9", "1.2.840.10008.5.1.4.1.1.2" + ".9" * 40,
                                       "1.2.x"], ids=["non-ascii", "too-long", "letters"])
def test_invalid_sop_class_uid(ct_slice: Path, tmp_path: Path, sop_class: str) -> None:
    """MEDIA review M6: the SOP Class UID was not checked; a non-ASCII one later broke the patient's download
    (DICOMDIR) with a raw UnicodeEncodeError, an 85-character one went into the DICOMDIR as it was."""
    ds = pydicom.dcmread(ct_slice)
    ds.SOPClassUID = sop_class
    path = tmp_path / "bad-class.dcm"
    ds.save_as(path)
    _refused(path, MissingUidError, "SOP Class UID is not a valid UID")


@pytest.mark.parametrize("magic", [b"MZ\x90\x00", b"\x7fELF"], ids=["pe", "elf"])
def test_executable_preamble_is_kept_and_flagged(
    ct_slice: Path, tmp_path: Path, magic: bytes
) -> None:
    data = bytearray(ct_slice.read_bytes())
    data[:4] = magic
    path = tmp_path / "polyglot.dcm"
    path.write_bytes(bytes(data))
    plan = plan_instance(path)
    assert "executable-preamble" in plan.flags
    blocks = assert_round_trip(path, plan)
    assert blocks[0].startswith(magic)


def test_refusals_and_plans_never_log_patient_data(
    ct_slice: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    plan = plan_instance(ct_slice)
    assert plan.attributes.patient_id == PATIENT_ID
    assert plan.attributes.patient_name == PATIENT_NAME
    refused = []
    for at in (300, plan.header_end + 10):
        with pytest.raises(DicomError) as error:
            plan_instance(_cut(ct_slice, at, tmp_path / f"cut{at}.dcm"))
        refused.append(error.value.reason)
    text = caplog.text + "\n".join(refused)
    for secret in (PATIENT_ID, "SECRET", plan.attributes.sop_instance_uid):
        assert secret not in text
