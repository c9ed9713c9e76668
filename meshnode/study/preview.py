"""An instance's first frame as PNG: for the person deciding whether a held instance's pixels carry
identifiers (full size), and the staff portal's series thumbnails on the send page (`max_side`).

pydicom decodes the pixel data (its handlers: numpy for native data, Pillow and the others installed for
compressed transfer syntaxes; pydicom 3 already returns YBR as RGB, so it is not converted again: review
M1). A monochrome frame goes to 8 bits through its Modality LUT (Rescale Slope/Intercept) and its first
Window Center/Width (VOI LUT Function LINEAR, LINEAR_EXACT or SIGMOID, PS3.3 C.11.2.1.2), by its own
minimum and maximum only when it has no usable window, MONOCHROME1 inverted (review M7); colour frames
with more than 8 bits stored are scaled down, PALETTE COLOR goes through its palette (pydicom's
apply_color_lut). Written with Pillow.

Memory (review M2/M3): the frame's decoded size (Rows x Columns x SamplesPerPixel x whole bytes a sample:
a 1-bit sample decodes to one byte) is checked against MAX_FRAME_BYTES from the header, and a compressed
frame's own codestream header (JPEG SOF, JPEG-LS SOF55, JPEG 2000 SIZ) must declare Rows x Columns, before
anything is decoded; the 8-bit output is computed in row blocks of at most BLOCK_PIXELS, so a render holds
the stored instance, the decoded frame and an 8-bit copy, never float copies of the frame.
"""

from __future__ import annotations

import io
import logging
import zlib
from typing import BinaryIO

import numpy as np
import pydicom
import pydicom.encaps
import pydicom.filereader
import pydicom.pixels.utils
import pydicom.uid
from PIL import Image
from pydicom.pixels.processing import apply_color_lut

from protocol.errors import LocalProtocolError, StorageError

log = logging.getLogger(__name__)

#: a frame whose decoded bytes (Rows x Columns x SamplesPerPixel x whole bytes a sample, a 1-bit sample
#: counting one byte) exceed this is not rendered (a preview, not a viewer): checked from the header, and a
#: compressed frame's codestream must declare the same size, before anything is decoded
MAX_FRAME_BYTES = 32 * 1024 * 1024
#: the float work of windowing is done on blocks of rows of at most this many samples
BLOCK_PIXELS = 1 << 18
#: a deflated data set is inflated at most this far (the frame and its attributes; a zip bomb is refused)
MAX_INFLATED = MAX_FRAME_BYTES + 4 * 1024 * 1024


class PreviewError(LocalProtocolError):
    """An instance whose pixels cannot be rendered here (no pixel data, an unsupported encoding)."""

    code = 953
    name = "preview-error"


def _check_inflated_size(raw: BinaryIO) -> str | None:
    """A Deflated Explicit VR Little Endian data set is inflated whole by pydicom: refuse one that inflates
    beyond MAX_INFLATED before it is (bounded streaming inflate, the output thrown away). Returns the
    transfer syntax; `raw` is left at its start."""
    raw.seek(0)
    try:
        return _inflated_size_checked(raw)
    finally:
        raw.seek(0)


def _inflated_size_checked(raw: BinaryIO) -> str | None:
    pydicom.filereader.read_preamble(raw, False)
    meta = pydicom.filereader._read_file_meta_info(raw)  # what dcmread reads first (pydicom 3)
    syntax = meta.get("TransferSyntaxUID")
    if syntax != pydicom.uid.DeflatedExplicitVRLittleEndian:
        return str(syntax) if syntax else None
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = len(inflater.decompress(raw.read(), MAX_INFLATED + 1))
    if total > MAX_INFLATED or inflater.unconsumed_tail:
        raise PreviewError("the instance is too large to preview")
    return str(syntax)


def _frame_bytes(ds: pydicom.Dataset) -> int:
    """The decoded frame's bytes: a sample takes whole bytes (pydicom unpacks 1-bit data to one byte each)."""
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    samples, bits = int(ds.get("SamplesPerPixel", 1) or 1), int(ds.get("BitsAllocated", 8) or 8)
    return rows * columns * samples * max(1, (bits + 7) // 8)


_JPEG_FAMILY = {pydicom.uid.JPEGBaseline8Bit, pydicom.uid.JPEGExtended12Bit, pydicom.uid.JPEGLossless,
                pydicom.uid.JPEGLosslessSV1, pydicom.uid.JPEGLSLossless, pydicom.uid.JPEGLSNearLossless}
_J2K_FAMILY = {pydicom.uid.JPEG2000Lossless, pydicom.uid.JPEG2000, pydicom.uid.HTJ2KLossless,
               pydicom.uid.HTJ2KLosslessRPCL, pydicom.uid.HTJ2K}
#: start-of-frame markers: SOF0-SOF15 but DHT (C4), JPG (C8), DAC (CC); JPEG-LS SOF55 (F7)
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}


def _jpeg_size(frame: bytes) -> tuple[int, int] | None:
    """(columns, rows) from a JPEG / JPEG-LS codestream's start-of-frame segment; None when none is found."""
    pos = 2 if frame[:2] == b"\xff\xd8" else -1
    while 0 <= pos and pos + 4 <= len(frame):
        if frame[pos] != 0xFF:
            return None
        marker = frame[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01,) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        length = int.from_bytes(frame[pos + 2:pos + 4], "big")
        if marker in _SOF:
            if pos + 9 > len(frame):
                return None
            rows = int.from_bytes(frame[pos + 5:pos + 7], "big")
            columns = int.from_bytes(frame[pos + 7:pos + 9], "big")
            return columns, rows
        if marker == 0xDA or length < 2:  # start of scan before any frame header
            return None
        pos += 2 + length
    return None


def _j2k_size(frame: bytes) -> tuple[int, int] | None:
    """(columns, rows) from a JPEG 2000 codestream's SIZ segment (inside a JP2 file too)."""
    at = frame.find(b"\xff\x4f\xff\x51")
    if at < 0 or at + 24 > len(frame):
        return None
    x, y, x0, y0 = (int.from_bytes(frame[at + 8 + 4 * i:at + 12 + 4 * i], "big") for i in range(4))
    return x - x0, y - y0


def _check_codestream_size(ds: pydicom.Dataset, index: int) -> None:
    """A compressed frame must declare the size the header says: a decoder allocates what the codestream
    declares (review M2: a 16 x 16 header over a 10000 x 10000 JPEG)."""
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax in _JPEG_FAMILY:
        size_of = _jpeg_size
    elif syntax in _J2K_FAMILY:
        size_of = _j2k_size
    else:
        return  # native (its size is its length), RLE (decoded into Rows x Columns), or not decodable here
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    frame = pydicom.encaps.get_frame(ds.PixelData, index, number_of_frames=frames)
    declared = size_of(frame)
    if declared != (int(ds.Columns), int(ds.Rows)):
        raise PreviewError("the compressed frame does not declare the size its header says")


def decode_first_frame(ds: pydicom.Dataset) -> np.ndarray:
    """Frame 1 only (a multi-frame instance's other frames are not decoded)."""
    return np.asarray(pydicom.pixels.utils.pixel_array(ds, index=0))


def _first_number(ds: pydicom.Dataset, keyword: str) -> float | None:
    """The first value of a DS/IS element as a float; None when absent, empty or not a finite number."""
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        if not value:
            return None
        value = value[0]
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def _to_8_bit(frame: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """A monochrome frame to 8 bits: Modality LUT (Rescale Slope/Intercept), then the first Window
    Center/Width with its VOI LUT Function (LINEAR, LINEAR_EXACT, SIGMOID: PS3.3 C.11.2.1.2), else the
    rescaled minimum and maximum; MONOCHROME1 inverted. Float work in blocks of rows (BLOCK_PIXELS)."""
    slope = _first_number(ds, "RescaleSlope")
    intercept = _first_number(ds, "RescaleIntercept")
    slope = 1.0 if slope is None or slope == 0 else slope
    intercept = 0.0 if intercept is None else intercept
    center, width = _first_number(ds, "WindowCenter"), _first_number(ds, "WindowWidth")
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        function = "LINEAR"
    if center is None or width is None or width < (1 if function == "LINEAR" else 0) or width == 0:
        raw_low, raw_high = (float(frame.min()), float(frame.max())) if frame.size else (0.0, 0.0)
        low, high = sorted((raw_low * slope + intercept, raw_high * slope + intercept))
        center, width, function = (low + high) / 2, max(high - low, 1e-6), "LINEAR_EXACT"
    invert = str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1"
    out = np.empty(frame.shape, dtype=np.uint8)
    rows = max(1, BLOCK_PIXELS // max(1, frame.shape[1] if frame.ndim > 1 else 1))
    for top in range(0, frame.shape[0], rows):
        x = frame[top:top + rows].astype(np.float32) * np.float32(slope) + np.float32(intercept)
        if function == "LINEAR":
            y = ((x - (center - 0.5)) / (width - 1 if width > 1 else 1) + 0.5) * 255.0
        elif function == "LINEAR_EXACT":
            y = ((x - center) / width + 0.5) * 255.0
        else:  # SIGMOID
            y = 255.0 / (1.0 + np.exp(np.clip(-4.0 * (x - center) / width, -80, 80)))
        np.clip(y, 0, 255, out=y)
        if invert:
            y = 255.0 - y
        out[top:top + rows] = y.astype(np.uint8)
    return out


def render_png(data: bytes, max_side: int | None = None) -> bytes:
    """Frame 1 as an 8-bit PNG; `max_side`: scaled down (aspect kept) so neither side exceeds it. A frame
    over MAX_FRAME_BYTES is refused from its header, before anything is decoded; only frame 1 is decoded,
    and a thumbnail is subsampled before any arithmetic on it."""
    return render_frame(data, max_side)


def render_frame(data: bytes | BinaryIO, max_side: int | None = None, *, index: int = 0,
                 fmt: str = "PNG") -> bytes:
    """Frame `index` (0-based) as an 8-bit image in Pillow format `fmt` ("PNG" or "JPEG"), with the limits of
    render_png (only that frame is decoded). `data`: the instance's bytes, or a seekable binary file of them
    (meshnode.storage.block_stream.BlockStream): then a native frame is read alone (pydicom reads its byte
    range), an encapsulated one with the pixel data's fragments only, never the whole instance twice."""
    src: BinaryIO = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        syntax = _check_inflated_size(src)
        deflated = syntax == pydicom.uid.DeflatedExplicitVRLittleEndian
        # large values (the pixel data) are read when used; a deflated set is inflated whole (bounded above)
        ds = pydicom.dcmread(src, defer_size=None if deflated else 256)
        native = syntax is not None and not deflated and not pydicom.uid.UID(syntax).is_compressed
        if "PixelData" not in ds:
            raise PreviewError("the instance has no pixel data to look at (an encapsulated document or model)")
        if _frame_bytes(ds) > MAX_FRAME_BYTES:
            raise PreviewError("the instance is too large to preview")
        if native:  # only the frame's bytes are read from the file
            src.seek(0)
            frame = np.asarray(pydicom.pixels.utils.pixel_array(src, index=index))
        else:
            _check_codestream_size(ds, index)
            frame = np.asarray(pydicom.pixels.utils.pixel_array(ds, index=index))
        if frame.shape[:2] != (int(ds.Rows), int(ds.Columns)):
            raise PreviewError("the decoded frame is not the size its header says")
    except (PreviewError, StorageError):  # StorageError: a stream's block is corrupt or missing
        raise
    except Exception as exc:  # any decoder failure (pydicom raises many kinds): one clear error
        raise PreviewError(f"the pixel data cannot be decoded here ({type(exc).__name__})") from None
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if max_side is not None:  # every step-th pixel, to about twice the thumbnail's side, before any arithmetic
        step = max(1, max(frame.shape[0], frame.shape[1]) // (2 * max_side))
        frame = frame[::step, ::step]
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if samples == 1 and photometric == "PALETTE COLOR":
        try:
            frame = np.asarray(apply_color_lut(frame, ds))
        except Exception as exc:  # a broken palette (pydicom raises several kinds): one clear error
            raise PreviewError(f"the palette cannot be applied ({type(exc).__name__})") from None
        samples = 3
        bits = 16 if frame.dtype.itemsize > 1 else 8
    else:
        bits = int(ds.get("BitsStored", 8) or 8)
    if samples == 1:
        image = Image.fromarray(_to_8_bit(frame, ds), mode="L")
    else:
        if frame.dtype.itemsize > 1 or bits > 8:  # 16-bit colour: scaled (by bits stored), not clipped
            shift = max(0, min(bits, 8 * frame.dtype.itemsize) - 8)
            frame = (frame >> shift).astype(np.uint8) if shift else np.clip(frame, 0, 255).astype(np.uint8)
        image = Image.fromarray(frame.astype(np.uint8, copy=False), mode="RGB")
    if max_side is not None:
        image.thumbnail((max_side, max_side))
    out = io.BytesIO()
    if fmt == "JPEG":
        image.save(out, format="JPEG", quality=90)
    else:
        image.save(out, format="PNG")
    return out.getvalue()
