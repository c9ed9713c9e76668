"""Review 2 finding 3: a thumbnail (or a de-identification preview) of a hostile instance. A small instance
whose header promises a huge frame (a deflated data set of zeros, or an encapsulated one) is refused from its
header before any decoder runs; a multi-frame instance decodes frame 1 only."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pydicom
import pydicom.pixels.utils
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

from meshnode.study import preview
from meshnode.study.preview import PreviewError, render_png


def _instance(rows: int, columns: int, *, samples: int = 1, bits: int = 16, frames: int = 1,
              syntax: UID = ExplicitVRLittleEndian, pixels: bytes | None = None) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.7")
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, columns, samples
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PhotometricInterpretation = "MONOCHROME2" if samples == 1 else "RGB"
    if samples == 3:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = pixels if pixels is not None else bytes(rows * columns * samples * bits // 8 * frames)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every call of pydicom's decoder (pydicom.pixels.utils.pixel_array), with its keyword arguments."""
    calls: list[dict[str, Any]] = []
    real = pydicom.pixels.utils.pixel_array

    def spy(src: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return real(src, **kwargs)

    monkeypatch.setattr(pydicom.pixels.utils, "pixel_array", spy)
    return calls


@pytest.mark.parametrize("samples", [1, 3])
def test_a_deflated_bomb_is_refused_before_it_is_inflated_or_decoded(decodes: list[dict[str, Any]],
                                                                     samples: int) -> None:
    data = _instance(8192, 8192, samples=samples, syntax=DeflatedExplicitVRLittleEndian)
    assert len(data) < 1024 * 1024  # a few hundred kB that would decode to 384 MB
    for side in (128, None):  # the thumbnail and the de-identification preview
        with pytest.raises(PreviewError, match="too large"):
            render_png(data, side)
    assert decodes == []


def test_a_huge_frame_is_refused_from_its_header(decodes: list[dict[str, Any]]) -> None:
    fragment = encapsulate([b"\x00" * 64])  # an RLE frame that promises 8192 x 8192 x 16 bits
    data = _instance(8192, 8192, syntax=RLELossless, pixels=fragment)
    with pytest.raises(PreviewError, match="too large"):
        render_png(data, 128)
    assert decodes == []
    # 32 MB is the budget: 4096 x 4096 x 16 bits is exactly it, one byte more per frame is not
    assert preview._frame_bytes(pydicom.dcmread(io.BytesIO(_instance(4096, 4096)))) == preview.MAX_FRAME_BYTES


def test_only_the_first_frame_is_decoded(decodes: list[dict[str, Any]]) -> None:
    frames = [np.full((64, 64), v, dtype=np.uint16) for v in (0, 1000, 2000)]
    frames[0][:32] = 500  # frame 1: top half bright, bottom half dark
    data = _instance(64, 64, frames=3, pixels=b"".join(f.tobytes() for f in frames))
    image = Image.open(io.BytesIO(render_png(data, 16)))
    assert image.size == (16, 16)
    assert image.getpixel((8, 2)) == 255 and image.getpixel((8, 14)) == 0
    assert [c.get("index") for c in decodes] == [0]
