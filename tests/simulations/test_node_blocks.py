"""The model's blocks at the node's granularity are the node's own (meshnode/dicom/blocks.py): per instance, a
header block, then the pixel data in 1 MiB chunks."""

from __future__ import annotations

import pytest

from simulations.engine import wire_sizes
from simulations.engine.state import Study


def _study(images: int, nbytes: float) -> Study:
    return Study(7, 0.0, 0, [1, 2], 0, 2, images, nbytes, nbytes / images, True)


def test_node_blocks_are_a_header_then_1_mib_pixel_chunks_per_instance() -> None:
    mib = wire_sizes.REAL_BLOCK
    s = _study(24, 11_841_216.0)
    s.split(float(mib), node_blocks=True)
    assert s.per_image == 2 and len(s.cids) == 48 == len(set(s.cids))
    assert s.sizes[0] == wire_sizes.HEADER_BYTES and s.sizes[1] == pytest.approx(11_841_216.0 / 24 - 2048)
    assert sum(s.sizes) == pytest.approx(s.nbytes)
    big = _study(3, 3 * (2048 + 2.5 * mib))  # 2.5 MiB of pixels: three chunks, the last half a MiB
    big.split(float(mib), node_blocks=True)
    assert big.per_image == 4 and big.sizes[:4] == (2048.0, float(mib), float(mib), 0.5 * mib)
    tiny = _study(2, 1000.0)  # an instance smaller than a header: half header, half pixels, never negative
    tiny.split(float(mib), node_blocks=True)
    assert tiny.sizes == (250.0, 250.0, 250.0, 250.0)


def test_byte_blocks_are_kept_below_and_above_the_node_granularity() -> None:
    s = _study(24, 11_841_216.0)
    s.split(float(wire_sizes.REAL_BLOCK))
    assert s.per_image == 0 and len(s.cids) == 12
    s.split(float(1 << 30))
    assert s.per_image == 0 and len(s.cids) == 1
