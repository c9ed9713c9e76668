"""Splitting and reassembly, independent of any particular file."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshnode.dicom import (
    HashingBlocks,
    InstanceChangedError,
    block_ranges,
    iter_instance_blocks,
    plan_instance,
    reassemble,
)
from protocol.errors import LocalProtocolError


@dataclass(frozen=True)
class Regions:
    file_size: int
    header_end: int
    pixel_end: int
    has_pixel_data: bool


def test_ranges_cover_each_region_separately() -> None:
    regions = Regions(file_size=2600, header_end=700, pixel_end=2500, has_pixel_data=True)
    assert block_ranges(regions, 1000) == [
        (0, 700),
        (700, 1700),
        (1700, 2500),
        (2500, 2600),
    ]


def test_large_header_is_split_and_no_pixel_data_means_plain_chunks() -> None:
    with_pixels = Regions(file_size=2600, header_end=2100, pixel_end=2600, has_pixel_data=True)
    assert block_ranges(with_pixels, 1000) == [(0, 1000), (1000, 2000), (2000, 2100), (2100, 2600)]
    without = Regions(file_size=2600, header_end=2600, pixel_end=2600, has_pixel_data=False)
    assert block_ranges(without, 1000) == [(0, 1000), (1000, 2000), (2000, 2600)]


def test_bad_arguments_are_refused() -> None:
    regions = Regions(file_size=10, header_end=8, pixel_end=4, has_pixel_data=True)
    with pytest.raises(LocalProtocolError):
        block_ranges(regions, 4)
    with pytest.raises(LocalProtocolError):
        block_ranges(Regions(10, 4, 8, True), 0)


def test_hashing_blocks_matches_reassemble(ct_slice: Path) -> None:
    plan = plan_instance(ct_slice)
    hashed = HashingBlocks(iter_instance_blocks(ct_slice, plan, 700))
    with pytest.raises(LocalProtocolError):
        hashed.digest()
    blocks = list(hashed)
    expected = hashlib.sha256(ct_slice.read_bytes()).digest()
    assert hashed.digest() == expected
    assert hashed.size == plan.file_size
    assert hashed.count == len(blocks)
    assert reassemble(iter(blocks), io.BytesIO()) == (plan.file_size, expected)


def test_file_changed_after_planning_is_detected(ct_slice: Path) -> None:
    plan = plan_instance(ct_slice)
    with ct_slice.open("ab") as out:
        out.write(b"\0\0")
    with pytest.raises(InstanceChangedError):
        list(iter_instance_blocks(ct_slice, plan))
