"""An instance's first frame as PNG: for the person deciding whether a held instance's pixels carry
identifiers (full size), and the staff portal's series thumbnails on the send page (`max_side`).

pydicom decodes the pixel data (its handlers: numpy for native data, Pillow and the others installed for
compressed transfer syntaxes); the frame is windowed to 8 bits by its own minimum and maximum (a reviewer
looks for text, not for diagnosis) and written with Pillow. Only for review at the sender: nothing here is sent.
"""

from __future__ import annotations

import io
import logging

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels.processing import convert_color_space

from protocol.errors import LocalProtocolError

log = logging.getLogger(__name__)

#: a frame larger than this is not rendered (a preview, not a viewer)
MAX_PIXELS = 64 * 1024 * 1024


class PreviewError(LocalProtocolError):
    """An instance whose pixels cannot be rendered here (no pixel data, an unsupported encoding)."""

    code = 953
    name = "preview-error"


def render_png(data: bytes, max_side: int | None = None) -> bytes:
    """Frame 1 as an 8-bit PNG; `max_side`: scaled down (aspect kept) so neither side exceeds it."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        if "PixelData" not in ds:
            raise PreviewError("the instance has no pixel data to look at (an encapsulated document or model)")
        if int(ds.get("Rows", 0)) * int(ds.get("Columns", 0)) * int(ds.get("NumberOfFrames", 1) or 1) > MAX_PIXELS:
            raise PreviewError("the instance is too large to preview")
        frame = np.asarray(ds.pixel_array)
    except PreviewError:
        raise
    except Exception as exc:  # any decoder failure (pydicom raises many kinds): one clear error
        raise PreviewError(f"the pixel data cannot be decoded here ({type(exc).__name__})") from None
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        frame = frame[0]
    if samples == 1:
        frame = frame.astype(np.float64)
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
    image.save(out, format="PNG")
    return out.getvalue()
