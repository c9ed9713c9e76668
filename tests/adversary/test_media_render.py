"""Key images and previews (meshnode.study.preview.render_frame) against frames built to exhaust memory
(MEDIA review M2, M3): refused from the header and the codestream's own header, before anything is decoded."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, features
from pydicom.encaps import encapsulate

from meshnode.study.preview import MAX_FRAME_BYTES, PreviewError, render_frame
from tests.meshnode.study.test_render_frame import ds_bytes, secondary_capture


def _encoded(fmt: str, size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("L", size, 0).save(buf, format=fmt, **({"quality": 10} if fmt == "JPEG" else {}))
    return buf.getvalue()


@pytest.mark.parametrize("fmt,ts", [("JPEG", "1.2.840.10008.1.2.4.50"), ("JPEG2000", "1.2.840.10008.1.2.4.90")])
def test_a_codestream_larger_than_its_header_is_refused_before_decoding(fmt: str, ts: str) -> None:
    """Review M2: the header says 16 x 16 (256 bytes, far under MAX_FRAME_BYTES); the codestream inside
    declares 4000 x 4000, which the decoder allocated before anyone compared (the reviewer's 10000 x 10000
    grew the process by hundreds of MB). Failed before: it was rendered."""
    if fmt == "JPEG2000" and not features.check("jpg_2000"):
        pytest.skip("Pillow without OpenJPEG")
    ds = secondary_capture(16, 16, encapsulate([_encoded(fmt, (4000, 4000))]), photometric="MONOCHROME2",
                           samples=1, ts=ts)
    with pytest.raises(PreviewError, match="does not declare the size"):
        render_frame(ds_bytes(ds), 4096)


def test_a_codestream_of_the_right_size_renders() -> None:
    ds = secondary_capture(64, 48, encapsulate([_encoded("JPEG", (48, 64))]), photometric="MONOCHROME2",
                           samples=1, ts="1.2.840.10008.1.2.4.50")
    assert Image.open(io.BytesIO(render_frame(ds_bytes(ds), None))).size == (48, 64)


@pytest.mark.parametrize("max_side", [4096, None])
def test_a_one_bit_frame_is_budgeted_as_decoded(max_side: int | None) -> None:
    """Review M3: 1 bit a pixel, 16384 x 16384: 32 MB stored (passed MAX_FRAME_BYTES), 256 MB unpacked by
    pydicom, then float32 copies (1 GB). The budget is the decoded size now: refused from the header."""
    side = 16384
    assert side * side // 8 <= MAX_FRAME_BYTES < side * side
    ds = secondary_capture(side, side, bytes(side * side // 8), photometric="MONOCHROME2", samples=1, bits=1)
    with pytest.raises(PreviewError, match="too large"):
        render_frame(ds_bytes(ds), max_side)


def test_a_small_one_bit_frame_renders() -> None:
    bits = np.packbits(np.array([[1, 0] * 8] * 16, dtype=np.uint8), bitorder="little").tobytes()
    ds = secondary_capture(16, 16, bits, photometric="MONOCHROME2", samples=1, bits=1)
    img = Image.open(io.BytesIO(render_frame(ds_bytes(ds), None)))
    assert (img.getpixel((0, 0)), img.getpixel((1, 0))) == (255, 0)
