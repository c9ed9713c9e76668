"""render_frame's pixels (MEDIA review M1, M7, m2, m3): colour converted once, a monochrome image through its
own rescale and window, 16-bit colour scaled, palette colour through its palette."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, generate_uid

from meshnode.study.preview import render_frame


def ds_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def secondary_capture(rows: int, cols: int, pixels: bytes, *, photometric: str, samples: int, bits: int = 8,
                      signed: int = 0, ts: str = "1.2.840.10008.1.2.1") -> Dataset:
    """A Secondary Capture instance with these pixels (the review's helper)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(ts)
    ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, samples
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, signed
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.PixelData = pixels
    return ds


def _pixels(ds: Dataset, **kw: Any) -> Image.Image:
    return Image.open(io.BytesIO(render_frame(ds_bytes(ds), None, **kw)))


def test_ybr_full_is_converted_once() -> None:
    """Review M1: pure red in YBR_FULL (Y 76, Cb 85, Cr 255) rendered green: pydicom 3's pixel_array already
    returns RGB and render_frame converted again (staff thumbnails too)."""
    ds = secondary_capture(4, 4, bytes([76, 85, 255]) * 16, photometric="YBR_FULL", samples=3)
    r, g, b = _pixels(ds).convert("RGB").getpixel((0, 0))
    assert r > 200 and g < 50 and b < 50, (r, g, b)


def _ct(window: tuple[Any, Any] | None, **extra: Any) -> Dataset:
    px = np.array([[-1000, 20, 60, 3000]], dtype="<i2")
    ds = secondary_capture(1, 4, px.tobytes(), photometric="MONOCHROME2", samples=1, bits=16, signed=1)
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    for k, v in extra.items():
        setattr(ds, k, v)
    return ds


def test_a_ct_key_image_uses_its_own_window() -> None:
    """Review M7: CT brain (air -1000, grey matter 20, white matter 60 HU, bone 3000) with its window C 40
    W 80: min/max over [-1000, 3000] left grey and white matter 2-3 levels apart (no brain to see)."""
    img = _pixels(_ct((40, 80)))
    air, grey, white, bone = (int(img.getpixel((i, 0))) for i in range(4))
    assert (air, bone) == (0, 255)
    assert white - grey > 100, (grey, white)
    # PS3.3 C.11.2.1.2.1 LINEAR: x=20 -> ((20 - 39.5) / 79 + 0.5) * 255
    assert grey == int(((20 - 39.5) / 79 + 0.5) * 255)


def test_the_window_applies_to_rescaled_values_and_takes_the_first() -> None:
    """Stored values 0..4000 with intercept -1000 are the same HU; two windows: the first is used."""
    px = np.array([[0, 1020, 1060, 4000]], dtype="<u2")
    ds = secondary_capture(1, 4, px.tobytes(), photometric="MONOCHROME2", samples=1, bits=16)
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1000
    ds.WindowCenter, ds.WindowWidth = [40, 500], [80, 2000]
    assert [int(_pixels(ds).getpixel((i, 0))) for i in range(4)] == [
        int(_pixels(_ct((40, 80))).getpixel((i, 0))) for i in range(4)]


def test_monochrome1_is_inverted_and_no_window_falls_back_to_min_max() -> None:
    img = _pixels(_ct(None, PhotometricInterpretation="MONOCHROME1"))
    assert (int(img.getpixel((0, 0))), int(img.getpixel((3, 0)))) == (255, 0)
    bad = _pixels(_ct((40, 0)))  # an unusable window (width 0): min/max
    assert (int(bad.getpixel((0, 0))), int(bad.getpixel((3, 0)))) == (0, 255)


def test_sigmoid_voi_lut_function() -> None:
    img = _pixels(_ct((40, 80), VOILUTFunction="SIGMOID"))
    assert int(img.getpixel((0, 0))) == 0 and int(img.getpixel((3, 0))) == 255
    assert 0 < int(img.getpixel((1, 0))) < int(img.getpixel((2, 0))) < 255


def test_16_bit_rgb_is_scaled_not_clipped() -> None:
    """Review m2: mid grey (32768, 32768, 32768) in 16-bit RGB came out white."""
    px = np.array([[[32768, 32768, 32768], [1000, 0, 0]]], dtype="<u2")
    img = _pixels(secondary_capture(1, 2, px.tobytes(), photometric="RGB", samples=3, bits=16)).convert("RGB")
    assert img.getpixel((0, 0)) == (128, 128, 128)
    assert img.getpixel((1, 0)) == (3, 0, 0)


def test_palette_color_goes_through_its_palette() -> None:
    """Review m3: PALETTE COLOR indices were windowed as grey."""
    ds = secondary_capture(1, 2, bytes([0, 1]), photometric="PALETTE COLOR", samples=1)
    for colour in ("Red", "Green", "Blue"):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [2, 0, 16])
    ds.RedPaletteColorLookupTableData = np.array([0xFFFF, 0], "<u2").tobytes()
    ds.GreenPaletteColorLookupTableData = np.array([0, 0xFFFF], "<u2").tobytes()
    ds.BluePaletteColorLookupTableData = np.array([0, 0], "<u2").tobytes()
    img = _pixels(ds).convert("RGB")
    assert (img.getpixel((0, 0)), img.getpixel((1, 0))) == ((255, 0, 0), (0, 255, 0))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_thumbnail_and_format_still_work(fmt: str) -> None:
    px = (np.arange(64 * 64, dtype="<u2").reshape(64, 64)).tobytes()
    ds = secondary_capture(64, 64, px, photometric="MONOCHROME2", samples=1, bits=16)
    img = Image.open(io.BytesIO(render_frame(ds_bytes(ds), 16, fmt=fmt)))
    assert img.format == fmt and max(img.size) <= 16


@pytest.mark.parametrize("ts", ["1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"])
def test_native_syntaxes_from_bytes_and_from_a_file(ts: str) -> None:
    """Native frames are read from the file alone (review M4); deflated data sets are inflated whole."""
    px = np.arange(64 * 64, dtype="<u2").reshape(64, 64)
    data = ds_bytes(secondary_capture(64, 64, px.tobytes(), photometric="MONOCHROME2", samples=1, bits=16,
                                      ts=ts))
    png = render_frame(data, None)
    assert png == render_frame(io.BytesIO(data), None)
    img = Image.open(io.BytesIO(png))
    assert (int(img.getpixel((0, 0))), int(img.getpixel((63, 63)))) == (0, 255)
