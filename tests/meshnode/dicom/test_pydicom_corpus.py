"""Every file bundled with pydicom: round-trips byte for byte, or is refused clearly.

The bundle (pydicom/data: test_files with its subdirectories, charset_files,
palettes; read from disk, nothing is downloaded) covers what ingest must
handle, for example:
  implicit VR LE         MR_small_implicit.dcm, rtplan.dcm, priv_SQ.dcm
  explicit VR LE         CT_small.dcm, MR_small.dcm (with a trailer after the pixel data)
  explicit VR BE         MR_small_bigendian.dcm, ExplVR_BigEnd.dcm, rtdose_expb.dcm
  deflated               image_dfl.dcm
  JPEG baseline          SC_rgb_jpeg_dcmtk.dcm, SC_rgb_dcmtk_+eb+cy+np.dcm
  JPEG extended          JPGExtended.dcm, JPEG-lossy.dcm
  JPEG lossless SV1      SC_rgb_jpeg_gdcm.dcm
  JPEG-LS                MR_small_jpeg_ls_lossless.dcm, JPEGLSNearLossless_16.dcm
  JPEG 2000              JPEG2000.dcm, MR_small_jp2klossless.dcm,
                         JPEG2000-embedded-sequence-delimiter.dcm (delimiter bytes in a fragment)
  RLE                    MR_small_RLE.dcm, SC_rgb_rle_16bit.dcm
  encapsulated multi-frame  SC_rgb_rle_2frame.dcm, rtdose_rle.dcm, SC_rgb_rle_32bit_2frame.dcm
  no preamble, no meta   ExplVR_LitEndNoMeta.dcm, ExplVR_BigEndNoMeta.dcm, rtstruct.dcm
  transfer syntax lies   SC_rgb_jpeg.dcm (says explicit, is implicit)
  UN / private sequences UN_sequence.dcm, nested_priv_SQ.dcm
test_coverage_of_the_bundle checks that this variety is really there.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pydicom
import pydicom.data
import pytest
from pydicom.errors import InvalidDicomError

from meshnode.dicom import (
    DicomError,
    MissingUidError,
    NotDicomError,
    PixelDataMismatchError,
    TruncatedDicomError,
    plan_instance,
    scan_layout,
)
from meshnode.dicom.structure import PIXEL_DATA_TAGS

from .helpers import assert_round_trip

DATA_ROOT = Path(pydicom.data.__file__).parent
CORPUS = sorted(
    str(path.relative_to(DATA_ROOT))
    for folder in ("test_files", "charset_files", "palettes")
    for path in (DATA_ROOT / folder).rglob("*")
    if path.is_file() and path.suffix != ".py" and "__pycache__" not in path.parts
)

# DICOM files without the 128-byte preamble and 'DICM': pydicom reads them
# only with force=True; the node accepts them, flagged.
HEADERLESS = {
    "test_files/ExplVR_BigEndNoMeta.dcm",
    "test_files/ExplVR_LitEndNoMeta.dcm",
    "test_files/rtstruct.dcm",
}

# Damaged files the node refuses (pydicom reads most of them leniently).
DAMAGED: dict[str, tuple[type[DicomError], str]] = {
    # pixel data cut short
    "test_files/MR_truncated.dcm": (TruncatedDicomError, "pixel data value runs 62 bytes past"),
    # cut inside a sequence
    "test_files/rtplan_truncated.dcm": (TruncatedDicomError, "runs 265 bytes past the end"),
    # items removed without fixing the enclosing sequence's length
    "test_files/dicomdirtests/DICOMDIR-nooffset": (TruncatedDicomError, "sequence item at offset"),
    # 128 bytes of padding after the pixel data
    "test_files/MR_small_padded.dcm": (PixelDataMismatchError, "8320 bytes but"),
    # Rows x Columns describe 400 bytes, the value has 6000
    "test_files/badVR.dcm": (PixelDataMismatchError, "6000 bytes but"),
    # "same as CT_small.dcm without a meta header", but with a stray first byte
    "test_files/no_meta.dcm": (NotDicomError, "no 'DICM' prefix"),
}


def _pydicom_dataset(path: Path, *, force: bool) -> pydicom.Dataset | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pydicom.dcmread(path, force=force, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError):
            return None


def _has_all_uids(ds: pydicom.Dataset) -> bool:
    return all(ds.get(k) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"))


@pytest.mark.parametrize("name", CORPUS)
def test_bundled_file(name: str) -> None:
    path = DATA_ROOT / name
    if name in DAMAGED:
        error, reason = DAMAGED[name]
        with pytest.raises(error) as refused:
            plan_instance(path)
        assert reason in refused.value.reason
        return
    ds = _pydicom_dataset(path, force=name in HEADERLESS)
    if ds is None:
        # pydicom cannot read it as DICOM (README, JSON, gzip, ICC profile...)
        with pytest.raises(NotDicomError) as refused:
            plan_instance(path)
        assert "no 'DICM' prefix at offset 128" in refused.value.reason
        return
    layout = scan_layout(path)
    assert_round_trip(path, layout)
    assert_round_trip(path, layout, chunk_size=512)
    if name in HEADERLESS:
        assert "no-preamble" in layout.flags
    if not _has_all_uids(ds):
        with pytest.raises(MissingUidError) as refused:
            plan_instance(path)
        assert refused.value.reason.startswith("missing ")
        return
    plan = plan_instance(path)
    assert plan.layout == layout
    assert plan.attributes.sop_instance_uid == ds.SOPInstanceUID
    assert plan.attributes.study_instance_uid == ds.StudyInstanceUID
    _check_pixel_region_against_pydicom(path, layout)


def _check_pixel_region_against_pydicom(path: Path, layout: object) -> None:
    """The split points are where pydicom itself finds the pixel data value."""
    from meshnode.dicom import FileLayout

    assert isinstance(layout, FileLayout)
    if not layout.has_pixel_data:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, force=True)
    raw = next(ds.get_item(tag) for tag in sorted(PIXEL_DATA_TAGS) if tag in ds)
    assert raw.value_tell == layout.header_end
    value_end = raw.value_tell + len(raw.value)
    assert layout.pixel_end == (value_end + 8 if layout.encapsulated else value_end)


def test_coverage_of_the_bundle() -> None:
    """The corpus really contains every encoding the DESIGN asks ingest to handle."""
    syntaxes: set[str] = set()
    flags: set[str] = set()
    multiframe_encapsulated = trailer = False
    for name in CORPUS:
        try:
            plan = plan_instance(DATA_ROOT / name)
        except DicomError:
            continue
        syntaxes.add(plan.transfer_syntax_uid)
        flags |= plan.flags
        frames = plan.attributes.number_of_frames or 1
        multiframe_encapsulated |= plan.layout.encapsulated and frames > 1
        trailer |= plan.has_pixel_data and plan.layout.trailer_size > 0
    required = {
        "1.2.840.10008.1.2": "implicit VR little endian",
        "1.2.840.10008.1.2.1": "explicit VR little endian",
        "1.2.840.10008.1.2.2": "explicit VR big endian",
        "1.2.840.10008.1.2.1.99": "deflated",
        "1.2.840.10008.1.2.4.50": "JPEG baseline",
        "1.2.840.10008.1.2.4.51": "JPEG extended",
        "1.2.840.10008.1.2.4.70": "JPEG lossless SV1",
        "1.2.840.10008.1.2.4.80": "JPEG-LS lossless",
        "1.2.840.10008.1.2.4.90": "JPEG 2000 lossless",
        "1.2.840.10008.1.2.4.91": "JPEG 2000",
        "1.2.840.10008.1.2.5": "RLE lossless",
        "": "no meta header",
    }
    missing = {uid: what for uid, what in required.items() if uid not in syntaxes}
    assert not missing
    assert {"no-preamble", "no-meta-header", "deflated", "transfer-syntax-mismatch"} <= flags
    assert multiframe_encapsulated
    assert trailer


_KEYWORDS = {
    "study_instance_uid": "StudyInstanceUID",
    "series_instance_uid": "SeriesInstanceUID",
    "sop_instance_uid": "SOPInstanceUID",
    "sop_class_uid": "SOPClassUID",
    "patient_name": "PatientName",
    "patient_id": "PatientID",
    "patient_birth_date": "PatientBirthDate",
    "patient_sex": "PatientSex",
    "modality": "Modality",
    "study_date": "StudyDate",
    "study_time": "StudyTime",
    "study_description": "StudyDescription",
    "accession_number": "AccessionNumber",
    "series_description": "SeriesDescription",
    "photometric_interpretation": "PhotometricInterpretation",
    "series_number": "SeriesNumber",
    "instance_number": "InstanceNumber",
    "rows": "Rows",
    "columns": "Columns",
    "number_of_frames": "NumberOfFrames",
    "samples_per_pixel": "SamplesPerPixel",
    "bits_allocated": "BitsAllocated",
}


_INTS = {
    "SeriesNumber",
    "InstanceNumber",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "SamplesPerPixel",
    "BitsAllocated",
}


def _pydicom_value(ds: pydicom.Dataset, keyword: str, as_int: bool) -> object:
    value = ds.get(keyword)
    if isinstance(value, pydicom.multival.MultiValue):
        value = value[0] if as_int else "\\".join(str(v) for v in value)
    if as_int:
        return None if value in (None, "") else int(value)
    return "" if value is None else str(value)


@pytest.mark.parametrize("name", CORPUS)
def test_attributes_match_pydicom(name: str) -> None:
    """Our own decoding of the listed attributes agrees with pydicom's."""
    try:
        plan = plan_instance(DATA_ROOT / name)
    except DicomError:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(DATA_ROOT / name, force=True, stop_before_pixels=True)
    for field, keyword in _KEYWORDS.items():
        expected = _pydicom_value(ds, keyword, as_int=keyword in _INTS)
        assert getattr(plan.attributes, field) == expected, field
