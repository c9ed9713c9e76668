from __future__ import annotations

from pathlib import Path

import pytest

from meshnode.dicom.synthetic import generate_compressed, generate_ct_study

PATIENT_ID = "PID-4471-SECRET"
PATIENT_NAME = "DOE^JANE^SECRET"


@pytest.fixture
def ct_slice(tmp_path: Path) -> Path:
    """One small synthetic CT slice (32 x 32, 2048 pixel bytes)."""
    return generate_ct_study(
        tmp_path / "ct",
        slices=1,
        rows=32,
        columns=32,
        seed=3,
        patient_id=PATIENT_ID,
        patient_name=PATIENT_NAME,
    )[0]


@pytest.fixture
def rle_slice(tmp_path: Path) -> Path:
    """One small synthetic CT slice with RLE Lossless (encapsulated) pixel data."""
    return generate_compressed(
        tmp_path / "rle",
        images=1,
        rows=48,
        columns=48,
        seed=5,
        patient_id=PATIENT_ID,
        patient_name=PATIENT_NAME,
    )[0]
