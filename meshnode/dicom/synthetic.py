"""Synthetic DICOM studies for tests, demos and benchmarks.

Realistic enough for a PACS to accept and a viewer to show: proper Part 10
files (128-byte preamble, 'DICM', File Meta Information), consistent Study /
Series / Frame of Reference UIDs, positions stepping by slice thickness,
rescale and window values. Pixels are a cheap phantom (a body-shaped ellipse
with fat, lungs that change size along the body, a spine, and noise), never
constant, so blocks differ between slices.

Everything is deterministic for a seed: UIDs are `2.25.` + a number hashed
from the seed and the item's role, pixels come from a seeded generator, and
dates are fixed, so the same call writes the same bytes.

    paths = generate_ct_study(out_dir, slices=300, seed=7)

The names in GENERATORS map to the generators, for a CLI.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    RLELossless,
    UID,
)

from protocol.errors import LocalProtocolError
from meshnode.dicom.synthetic_modules import (
    TemplateWriter,
    enhanced_ct_groups,
    image_pixel_module,
    study_module,
)

log = logging.getLogger(__name__)

DEFAULT_PATIENT_ID = "SYN0000001"
DEFAULT_PATIENT_NAME = "SYNTHETIC^PATIENT"


def synthetic_uid(seed: int, *roles: object) -> str:
    """A deterministic UID under 2.25 (a 128-bit number from the seed and roles)."""
    digest = hashlib.sha256(repr((seed, *roles)).encode()).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


@dataclass(frozen=True)
class StudyIdentity:
    """Who and what the study is about; every field has a harmless default."""

    seed: int = 0
    study_uid: str | None = None
    patient_id: str = DEFAULT_PATIENT_ID
    patient_name: str = DEFAULT_PATIENT_NAME
    study_description: str = "SYNTHETIC STUDY"

    @property
    def study_instance_uid(self) -> str:
        return self.study_uid or synthetic_uid(self.seed, "study")

    def uid(self, *roles: object) -> str:
        """A UID for a series, instance or frame of reference of this study."""
        return synthetic_uid(self.seed, self.study_instance_uid, *roles)


class _Phantom:
    """A cheap, seeded body-like image generator (values in HU, int16)."""

    def __init__(self, rows: int, columns: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        jitter = rng.uniform(-0.04, 0.04, size=3).astype(np.float32)
        y = np.linspace(-1.0, 1.0, rows, dtype=np.float32)[:, None]
        x = np.linspace(-1.0, 1.0, columns, dtype=np.float32)[None, :]
        body = (x / (0.88 + jitter[0])) ** 2 + (y / (0.68 + jitter[1])) ** 2
        self._inside = body <= 1.0
        base = np.full((rows, columns), -1000, dtype=np.int16)
        base[self._inside] = 40
        base[self._inside & (body > 0.82)] = -90
        base[(x / 0.11) ** 2 + ((y - 0.42 - jitter[2]) / 0.11) ** 2 <= 1.0] = 700
        self._base = base
        self._lung_x2 = np.minimum((x + 0.38) ** 2, (x - 0.38) ** 2)
        self._lung_y2 = (y + 0.03) ** 2
        self._size = rows * columns
        self._noise = rng.integers(-24, 25, size=2 * self._size, dtype=np.int16)

    def hu(self, z: float, index: int) -> NDArray[np.int16]:
        """The slice at relative position z in [0, 1]."""
        scale = 0.3 + 0.7 * math.sin(math.pi * min(max(z, 0.0), 1.0))
        lungs = self._lung_x2 / (0.24 * scale) ** 2 + self._lung_y2 / (0.42 * scale) ** 2 <= 1.0
        image = self._base.copy()
        image[lungs & self._inside] = -850
        offset = (index * 7919) % self._size
        image += self._noise[offset : offset + self._size].reshape(image.shape)
        return image


def _study(identity: StudyIdentity, *, modality: str) -> Dataset:
    return study_module(
        study_uid=identity.study_instance_uid,
        seed=identity.seed,
        patient_id=identity.patient_id,
        patient_name=identity.patient_name,
        study_description=identity.study_description,
        modality=modality,
    )


def _ds(value: float) -> str:
    """A Decimal String (short enough for the positions and spacings used here)."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def _file_meta(sop_class: str, sop_instance: str, transfer_syntax: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    return meta


def _write(path: Path, dataset: Dataset) -> Path:
    dcmwrite(path, dataset, enforce_file_format=True)
    return path


def _ct_series(
    identity: StudyIdentity,
    *,
    kind: str,
    rows: int,
    columns: int,
    series_number: int,
    thickness: float,
) -> Dataset:
    ds = _study(identity, modality="CT")
    ds.SOPClassUID = CTImageStorage
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SeriesInstanceUID = identity.uid("series", kind, series_number)
    ds.SeriesNumber = series_number
    ds.SeriesDescription = "SYNTHETIC AXIAL"
    ds.FrameOfReferenceUID = identity.uid("frame-of-reference")
    ds.PositionReferenceIndicator = ""
    ds.BodyPartExamined = "CHEST"
    ds.KVP = "120"
    ds.SliceThickness = _ds(thickness)
    ds.ConvolutionKernel = "STANDARD"
    ds.PatientPosition = "HFS"
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.PixelSpacing = [_ds(0.7), _ds(0.7)]
    image_pixel_module(ds, rows=rows, columns=columns, bits_stored=16, signed=True)
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    return ds


def generate_ct_study(
    out_dir: Path,
    *,
    slices: int,
    rows: int = 512,
    columns: int = 512,
    seed: int = 0,
    study_uid: str | None = None,
    patient_id: str = DEFAULT_PATIENT_ID,
    patient_name: str = DEFAULT_PATIENT_NAME,
    study_description: str = "SYNTHETIC CT CHEST",
    series_number: int = 1,
    slice_thickness: float = 1.25,
) -> list[Path]:
    """One axial CT series: CT Image Storage, explicit VR little endian, int16."""
    identity = StudyIdentity(seed, study_uid, patient_id, patient_name, study_description)
    out_dir.mkdir(parents=True, exist_ok=True)
    ds = _ct_series(
        identity,
        kind="ct",
        rows=rows,
        columns=columns,
        series_number=series_number,
        thickness=slice_thickness,
    )
    phantom = _Phantom(rows, columns, seed)
    writer = TemplateWriter(ds)
    x0, y0 = _ds(-0.7 * columns / 2), _ds(-0.7 * rows / 2)
    paths = []
    for index in range(slices):
        sop_uid = identity.uid("ct", series_number, index)
        z = _ds(-index * slice_thickness)
        changes = Dataset()
        changes.SOPInstanceUID = sop_uid
        changes.InstanceNumber = index + 1
        changes.ImagePositionPatient = [x0, y0, z]
        changes.SliceLocation = z
        stored = phantom.hu(index / max(slices - 1, 1), index) + np.int16(1024)
        paths.append(
            writer.write(
                out_dir / f"ct_{series_number:03d}_{index + 1:05d}.dcm",
                file_meta=_file_meta(CTImageStorage, sop_uid, ExplicitVRLittleEndian),
                changes=changes,
                pixel_data=stored.tobytes(),
            )
        )
    log.debug("wrote %d synthetic CT slices", slices)
    return paths


def generate_dx_study(
    out_dir: Path,
    *,
    images: int = 30,
    rows: int = 2048,
    columns: int = 2048,
    seed: int = 0,
    study_uid: str | None = None,
    patient_id: str = DEFAULT_PATIENT_ID,
    patient_name: str = DEFAULT_PATIENT_NAME,
    study_description: str = "SYNTHETIC DX CHEST",
    series_number: int = 1,
) -> list[Path]:
    """Digital X-Ray (for presentation) images, 16-bit unsigned, 12 bits stored."""
    identity = StudyIdentity(seed, study_uid, patient_id, patient_name, study_description)
    out_dir.mkdir(parents=True, exist_ok=True)
    ds = _study(identity, modality="DX")
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SeriesInstanceUID = identity.uid("series", "dx", series_number)
    ds.SeriesNumber = series_number
    ds.SeriesDescription = "SYNTHETIC CHEST PA"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.ImagerPixelSpacing = [_ds(0.15), _ds(0.15)]
    ds.PixelSpacing = [_ds(0.15), _ds(0.15)]
    image_pixel_module(ds, rows=rows, columns=columns, bits_stored=12, signed=False)
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.WindowCenter = "2048"
    ds.WindowWidth = "4096"
    phantom = _Phantom(rows, columns, seed)
    paths = []
    for index in range(images):
        sop_uid = identity.uid("dx", series_number, index)
        ds.file_meta = _file_meta(ds.SOPClassUID, sop_uid, ExplicitVRLittleEndian)
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = index + 1
        attenuation = phantom.hu(0.5, index).astype(np.int32) + 1000  # 0 (air) .. ~1700
        pixels = np.clip(3800 - attenuation * 2, 0, 4095).astype(np.uint16)
        ds.PixelData = pixels.tobytes()
        paths.append(_write(out_dir / f"dx_{series_number:03d}_{index + 1:05d}.dcm", ds))
    return paths


def generate_multiframe(
    out_dir: Path,
    *,
    frames: int = 16,
    rows: int = 256,
    columns: int = 256,
    seed: int = 0,
    study_uid: str | None = None,
    patient_id: str = DEFAULT_PATIENT_ID,
    patient_name: str = DEFAULT_PATIENT_NAME,
    study_description: str = "SYNTHETIC ENHANCED CT",
    series_number: int = 1,
    slice_thickness: float = 1.25,
    compressed: bool = False,
) -> list[Path]:
    """One Enhanced CT instance with `frames` frames (RLE Lossless if `compressed`)."""
    identity = StudyIdentity(seed, study_uid, patient_id, patient_name, study_description)
    out_dir.mkdir(parents=True, exist_ok=True)
    sop_uid = identity.uid("enhanced-ct", series_number)
    ds = _study(identity, modality="CT")
    ds.file_meta = _file_meta(EnhancedCTImageStorage, sop_uid, ExplicitVRLittleEndian)
    ds.SOPClassUID = EnhancedCTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.SeriesInstanceUID = identity.uid("series", "enhanced-ct", series_number)
    ds.SeriesNumber = series_number
    ds.SeriesDescription = "SYNTHETIC ENHANCED AXIAL"
    ds.InstanceNumber = 1
    ds.FrameOfReferenceUID = identity.uid("frame-of-reference")
    ds.PositionReferenceIndicator = ""
    image_pixel_module(ds, rows=rows, columns=columns, bits_stored=16, signed=True)
    ds.NumberOfFrames = frames
    enhanced_ct_groups(
        ds,
        frames=frames,
        thickness=_ds(slice_thickness),
        origin=(_ds(-0.7 * columns / 2), _ds(-0.7 * rows / 2)),
        positions=[_ds(-i * slice_thickness) for i in range(frames)],
        dimension_uid=identity.uid("dimension-organization"),
    )
    phantom = _Phantom(rows, columns, seed)
    volume = np.stack(
        [phantom.hu(i / max(frames - 1, 1), i) + np.int16(1024) for i in range(frames)]
    )
    ds.PixelData = volume.tobytes()
    name = "enhanced_ct_rle.dcm" if compressed else "enhanced_ct.dcm"
    if compressed:
        ds.compress(RLELossless, volume, encoding_plugin="pydicom", generate_instance_uid=False)
    return [_write(out_dir / name, ds)]


def generate_compressed(
    out_dir: Path,
    *,
    images: int = 1,
    rows: int = 128,
    columns: int = 128,
    seed: int = 0,
    study_uid: str | None = None,
    patient_id: str = DEFAULT_PATIENT_ID,
    patient_name: str = DEFAULT_PATIENT_NAME,
    study_description: str = "SYNTHETIC CT RLE",
    series_number: int = 1,
    slice_thickness: float = 1.25,
) -> list[Path]:
    """CT slices with encapsulated RLE Lossless pixel data (pydicom's own encoder)."""
    identity = StudyIdentity(seed, study_uid, patient_id, patient_name, study_description)
    out_dir.mkdir(parents=True, exist_ok=True)
    phantom = _Phantom(rows, columns, seed)
    paths = []
    for index in range(images):
        ds = _ct_series(
            identity,
            kind="ct-rle",
            rows=rows,
            columns=columns,
            series_number=series_number,
            thickness=slice_thickness,
        )
        sop_uid = identity.uid("ct-rle", series_number, index)
        ds.file_meta = _file_meta(CTImageStorage, sop_uid, ExplicitVRLittleEndian)
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = index + 1
        z = -index * slice_thickness
        ds.ImagePositionPatient = [_ds(-0.7 * columns / 2), _ds(-0.7 * rows / 2), _ds(z)]
        ds.SliceLocation = _ds(z)
        stored = phantom.hu(index / max(images - 1, 1), index) + np.int16(1024)
        ds.PixelData = stored.tobytes()
        ds.compress(RLELossless, stored, encoding_plugin="pydicom", generate_instance_uid=False)
        paths.append(_write(out_dir / f"rle_{series_number:03d}_{index + 1:05d}.dcm", ds))
    return paths


GENERATORS: dict[str, Callable[..., list[Path]]] = {
    "ct": generate_ct_study,
    "dx": generate_dx_study,
    "multiframe": generate_multiframe,
    "rle": generate_compressed,
}


def generate(kind: str, out_dir: Path, **options: Any) -> list[Path]:
    """Run the generator named `kind` (a key of GENERATORS)."""
    try:
        generator = GENERATORS[kind]
    except KeyError:
        raise LocalProtocolError(f"unknown synthetic study kind {kind!r}") from None
    return generator(out_dir, **options)
