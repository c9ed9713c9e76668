"""An instance's first frame as PNG: for the person deciding whether a held instance's pixels carry
identifiers (full size), and the staff portal's series thumbnails on the send page (`max_side`).

pydicom decodes the pixel data (its handlers: numpy for native data, Pillow and the others installed for
compressed transfer syntaxes); the frame is windowed to 8 bits by its own minimum and maximum (a reviewer
looks for text, not for diagnosis) and written with Pillow. Only for review at the sender: nothing here is sent.
"""

from __future__ import annotations

import io
import logging
import zlib

import numpy as np
import pydicom
import pydicom.filereader
import pydicom.pixels.utils
import pydicom.uid
from PIL import Image
from pydicom.pixels.processing import convert_color_space

from protocol.errors import LocalProtocolError

log = logging.getLogger(__name__)

#: a frame whose decoded bytes (Rows x Columns x SamplesPerPixel x BitsAllocated / 8) exceed this is not
#: rendered (a preview, not a viewer): checked from the header, before anything is decoded
MAX_FRAME_BYTES = 32 * 1024 * 1024
#: a deflated data set is inflated at most this far (the frame and its attributes; a zip bomb is refused)
MAX_INFLATED = MAX_FRAME_BYTES + 4 * 1024 * 1024


class PreviewError(LocalProtocolError):
    """An instance whose pixels cannot be rendered here (no pixel data, an unsupported encoding)."""

    code = 953
    name = "preview-error"


def _check_inflated_size(data: bytes) -> None:
    """A Deflated Explicit VR Little Endian data set is inflated whole by pydicom: refuse one that inflates
    beyond MAX_INFLATED before it is (bounded streaming inflate, the output thrown away)."""
    raw = io.BytesIO(data)
    pydicom.filereader.read_preamble(raw, False)
    meta = pydicom.filereader._read_file_meta_info(raw)  # what dcmread reads first (pydicom 3)
    if meta.get("TransferSyntaxUID") != pydicom.uid.DeflatedExplicitVRLittleEndian:
        return
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = len(inflater.decompress(raw.read(), MAX_INFLATED + 1))
    if total > MAX_INFLATED or inflater.unconsumed_tail:
        raise PreviewError("the instance is too large to preview")


def _frame_bytes(ds: pydicom.Dataset) -> int:
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    samples, bits = int(ds.get("SamplesPerPixel", 1) or 1), int(ds.get("BitsAllocated", 8) or 8)
    return (rows * columns * samples * bits + 7) // 8


def decode_first_frame(ds: pydicom.Dataset) -> np.ndarray:
    """Frame 1 only (a multi-frame instance's other frames are not decoded)."""
    return np.asarray(pydicom.pixels.utils.pixel_array(ds, index=0))


def render_png(data: bytes, max_side: int | None = None) -> bytes:
    """Frame 1 as an 8-bit PNG; `max_side`: scaled down (aspect kept) so neither side exceeds it. A frame
    over MAX_FRAME_BYTES is refused from its header, before anything is decoded; only frame 1 is decoded,
    and a thumbnail is subsampled before any arithmetic on it."""
    return render_frame(data, max_side)


def render_frame(data: bytes, max_side: int | None = None, *, index: int = 0, fmt: str = "PNG") -> bytes:
    """Frame `index` (0-based) as an 8-bit image in Pillow format `fmt` ("PNG" or "JPEG"), with the limits of
    render_png (only that frame is decoded)."""
    try:
        _check_inflated_size(data)
        ds = pydicom.dcmread(io.BytesIO(data))
        if "PixelData" not in ds:
            raise PreviewError("the instance has no pixel data to look at (an encapsulated document or model)")
        if _frame_bytes(ds) > MAX_FRAME_BYTES:
            raise PreviewError("the instance is too large to preview")
        frame = np.asarray(pydicom.pixels.utils.pixel_array(ds, index=index))
    except PreviewError:
        raise
    except Exception as exc:  # any decoder failure (pydicom raises many kinds): one clear error
        raise PreviewError(f"the pixel data cannot be decoded here ({type(exc).__name__})") from None
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if max_side is not None:  # every step-th pixel, to about twice the thumbnail's side, before any arithmetic
        step = max(1, max(frame.shape[0], frame.shape[1]) // (2 * max_side))
        frame = frame[::step, ::step]
    if samples == 1:
        frame = frame.astype(np.float32)
        low, high = float(frame.min()), float(frame.max())
        scaled = (frame - low) / (high - low) * 255.0 if high > low else np.zeros_like(frame)
        if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
            scaled = 255.0 - scaled
        image = Image.fromarray(scaled.astype(np.uint8), mode="L")
    else:
        if str(ds.get("PhotometricInterpretation", "")).startswith("YBR"):
            frame = convert_color_space(frame, str(ds.PhotometricInterpretation), "RGB")
        image = Image.fromarray(np.clip(frame, 0, 255).astype(np.uint8), mode="RGB")
    if max_side is not None:
        image.thumbnail((max_side, max_side))
    out = io.BytesIO()
    if fmt == "JPEG":
        image.save(out, format="JPEG", quality=90)
    else:
        image.save(out, format="PNG")
    return out.getvalue()
