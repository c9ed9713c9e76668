"""The synthetic study generator: valid, consistent, decodable, deterministic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage, EnhancedCTImageStorage, RLELossless

from meshnode.dicom import plan_instance
from meshnode.dicom.synthetic import (
    GENERATORS,
    generate,
    generate_compressed,
    generate_ct_study,
    generate_dx_study,
    generate_multiframe,
)
from protocol.errors import LocalProtocolError

from .helpers import assert_round_trip


def test_ct_series_is_consistent(tmp_path: Path) -> None:
    paths = generate_ct_study(tmp_path, slices=4, rows=24, columns=20, seed=11, patient_id="P-1")
    slices = [pydicom.dcmread(p) for p in paths]
    assert len({ds.StudyInstanceUID for ds in slices}) == 1
    assert len({ds.SeriesInstanceUID for ds in slices}) == 1
    assert len({ds.FrameOfReferenceUID for ds in slices}) == 1
    assert len({ds.SOPInstanceUID for ds in slices}) == 4
    for index, ds in enumerate(slices):
        assert ds.SOPClassUID == CTImageStorage
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.preamble == bytes(128)
        assert ds.InstanceNumber == index + 1
        assert ds.PatientID == "P-1"
        assert (ds.Rows, ds.Columns, ds.BitsAllocated, ds.PixelRepresentation) == (24, 20, 16, 1)
    z = [float(ds.ImagePositionPatient[2]) for ds in slices]
    steps = {round(a - b, 6) for a, b in zip(z, z[1:], strict=False)}
    assert steps == {float(slices[0].SliceThickness)}


def test_ct_pixels_decode_and_vary(tmp_path: Path) -> None:
    paths = generate_ct_study(tmp_path, slices=3, rows=64, columns=64, seed=2)
    arrays = [pydicom.dcmread(p).pixel_array for p in paths]
    for array in arrays:
        assert array.shape == (64, 64) and array.dtype == np.int16
        assert len(np.unique(array)) > 50  # not constant
        hu = array.astype(np.int32) - 1024
        assert hu.min() < -900 and hu.max() > 500  # air and bone
    assert not np.array_equal(arrays[0], arrays[1])


def test_generated_files_plan_and_round_trip(tmp_path: Path) -> None:
    paths = generate_ct_study(tmp_path / "ct", slices=2, rows=16, columns=16)
    paths += generate_dx_study(tmp_path / "dx", images=1, rows=32, columns=40)
    paths += generate_multiframe(tmp_path / "mf", frames=3, rows=16, columns=16)
    paths += generate_multiframe(tmp_path / "mfr", frames=3, rows=16, columns=16, compressed=True)
    paths += generate_compressed(tmp_path / "rle", images=2, rows=16, columns=16)
    for path in paths:
        plan = plan_instance(path)
        assert plan.has_pixel_data
        assert not plan.flags
        assert_round_trip(path, plan, chunk_size=256)


def test_rle_instance_decodes(tmp_path: Path) -> None:
    (path,) = generate_compressed(tmp_path, rows=40, columns=36, seed=4)
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == RLELossless
    array = ds.pixel_array
    assert array.shape == (40, 36) and len(np.unique(array)) > 50
    assert plan_instance(path).layout.encapsulated


def test_multiframe_instance(tmp_path: Path) -> None:
    (path,) = generate_multiframe(tmp_path, frames=5, rows=16, columns=16, compressed=True)
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == EnhancedCTImageStorage
    assert ds.NumberOfFrames == 5
    assert ds.pixel_array.shape == (5, 16, 16)
    positions = [
        float(item.PlanePositionSequence[0].ImagePositionPatient[2])
        for item in ds.PerFrameFunctionalGroupsSequence
    ]
    assert positions == [0.0, -1.25, -2.5, -3.75, -5.0]
    plan = plan_instance(path)
    assert plan.attributes.number_of_frames == 5


def test_dx_is_unsigned_12_bit(tmp_path: Path) -> None:
    (path,) = generate_dx_study(tmp_path, images=1, rows=48, columns=32)
    ds = pydicom.dcmread(path)
    array = ds.pixel_array
    assert array.dtype == np.uint16 and int(array.max()) <= 4095
    assert ds.Modality == "DX" and ds.PixelRepresentation == 0


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    def run(where: str, seed: int) -> list[bytes]:
        paths = generate_ct_study(tmp_path / where, slices=2, rows=16, columns=16, seed=seed)
        paths += generate_compressed(tmp_path / where, rows=16, columns=16, seed=seed)
        return [p.read_bytes() for p in paths]

    assert run("a", 5) == run("b", 5)
    assert run("c", 6) != run("a", 5)


def test_study_uid_can_be_given(tmp_path: Path) -> None:
    study = "1.2.826.0.1.3680043.10.999.1"
    ct = generate_ct_study(tmp_path / "ct", slices=1, rows=8, columns=8, study_uid=study)
    dx = generate_dx_study(tmp_path / "dx", images=1, rows=8, columns=8, study_uid=study)
    series = {pydicom.dcmread(p).SeriesInstanceUID for p in ct + dx}
    assert {pydicom.dcmread(p).StudyInstanceUID for p in ct + dx} == {study}
    assert len(series) == 2  # same series number, different series


def test_generate_by_name(tmp_path: Path) -> None:
    assert set(GENERATORS) == {"ct", "dx", "multiframe", "rle"}
    (path,) = generate("ct", tmp_path, slices=1, rows=8, columns=8)
    assert path.exists()
    with pytest.raises(LocalProtocolError):
        generate("mri", tmp_path)
