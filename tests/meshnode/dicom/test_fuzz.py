"""Damaged input never escapes as anything but a DicomError, and what is accepted round-trips."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshnode.dicom import DicomError, plan_instance
from meshnode.dicom.synthetic import generate_compressed, generate_ct_study, generate_multiframe

from .helpers import assert_round_trip, nested_sequences, write_minimal


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Small valid files of each shape, as bytes."""
    root = tmp_path_factory.mktemp("seeds")
    paths = {
        "ct": generate_ct_study(root / "ct", slices=1, rows=8, columns=8)[0],
        "rle": generate_compressed(root / "rle", rows=8, columns=8)[0],
        "multiframe": generate_multiframe(root / "mf", frames=2, rows=4, columns=4)[0],
        "nested": write_minimal(
            root / "nested.dcm", tail=nested_sequences(5, defined_length=False)
        ),
    }
    return {name: path.read_bytes() for name, path in paths.items()}


def _plan_or_refuse(path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about what it tolerates
        try:
            plan = plan_instance(path)
        except DicomError as error:
            assert error.reason
            return
    assert_round_trip(path, plan, chunk_size=128)


@pytest.mark.parametrize(("name", "step"), [("ct", 3), ("rle", 3), ("nested", 1)])
def test_truncations(seeds: dict[str, bytes], tmp_path: Path, name: str, step: int) -> None:
    data = seeds[name]
    path = tmp_path / "cut.dcm"
    for at in range(0, len(data), step):
        path.write_bytes(data[:at])
        try:
            plan = plan_instance(path)
        except DicomError:
            continue
        # only a cut exactly between two header elements can still parse, and
        # then the pixel data is simply not there
        assert not plan.has_pixel_data, at
        assert_round_trip(path, plan)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    name=st.sampled_from(["ct", "rle", "multiframe", "nested"]),
    edits=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=6),
)
def test_random_byte_edits(
    seeds: dict[str, bytes], tmp_path: Path, name: str, edits: list[tuple[int, int]]
) -> None:
    data = bytearray(seeds[name])
    for position, value in edits:
        data[position % len(data)] = value
    path = tmp_path / "edited.dcm"
    path.write_bytes(bytes(data))
    _plan_or_refuse(path)
