"""Header-only edits leave every pixel block, and so its CID, unchanged."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from meshnode.dicom import InstancePlan, block_ranges, plan_instance
from protocol.cid import CID

from .helpers import assert_round_trip

CHUNK = 512


def _edit_header(source: Path, target: Path) -> None:
    """A patient ID reconciliation and a corrected description, saved by pydicom."""
    ds = pydicom.dcmread(source)
    ds.PatientID = "RECONCILED-PATIENT-ID-000123"
    ds.StudyDescription = "CT CHEST WITH CONTRAST (CORRECTED)"
    ds.save_as(target)


def _cids_by_region(path: Path, plan: InstancePlan) -> dict[str, list[CID]]:
    blocks = assert_round_trip(path, plan, CHUNK)
    regions: dict[str, list[CID]] = {"header": [], "pixel": [], "trailer": []}
    for (start, _), block in zip(block_ranges(plan, CHUNK), blocks, strict=True):
        if start < plan.header_end:
            region = "header"
        elif start < plan.pixel_end:
            region = "pixel"
        else:
            region = "trailer"
        regions[region].append(CID.of(block))
    return regions


@pytest.mark.parametrize("fixture", ["ct_slice", "rle_slice"])
def test_header_edit_keeps_pixel_blocks(
    fixture: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    original: Path = request.getfixturevalue(fixture)
    edited = tmp_path / "edited.dcm"
    _edit_header(original, edited)

    before, after = plan_instance(original), plan_instance(edited)
    assert after.attributes.patient_id == "RECONCILED-PATIENT-ID-000123"
    assert after.header_end != before.header_end  # the header changed length
    assert after.layout.encapsulated == before.layout.encapsulated == (fixture == "rle_slice")
    old, new = _cids_by_region(original, before), _cids_by_region(edited, after)
    assert len(old["pixel"]) > 1
    assert new["pixel"] == old["pixel"]
    assert new["header"] != old["header"]
    assert new["trailer"] == old["trailer"] == []


def test_pixel_blocks_are_aligned_to_the_value_not_the_file(ct_slice: Path) -> None:
    plan = plan_instance(ct_slice)
    ranges = block_ranges(plan, CHUNK)
    pixel_starts = [start for start, _ in ranges if plan.header_end <= start < plan.pixel_end]
    assert pixel_starts == list(range(plan.header_end, plan.pixel_end, CHUNK))
    assert plan.pixel_end - plan.header_end == 32 * 32 * 2
