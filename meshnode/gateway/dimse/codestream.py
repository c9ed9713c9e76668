"""What a compressed frame's own codestream says about the image: read from its markers, before decoding.

An image header (Rows, Columns, Samples per Pixel) is what a decoder's output
buffer is sized from, but the decoder itself follows the codestream: a 1 KB
JPEG 2000 frame whose header says 64x64 can carry a 12000x12000 codestream
that the decoder expands (hundreds of MB) before anything notices. So the
node reads each frame's dimensions from the codestream (JPEG SOF, JPEG-LS
SOF55, JPEG 2000 SIZ) and converts only when they agree with the header.
The same markers say whether the compression was lossy (JPEG process, JPEG
2000 COD wavelet, JPEG-LS NEAR), for the Lossy Image Compression attributes
of a decompressed copy. Pure parsing: bytes in, a Codestream or an error out.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from protocol.errors import StorageError

JPEG_SYNTAXES = frozenset({
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
})
JPEG_LS_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"})
J2K_SYNTAXES = frozenset({
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203",
})
#: JPEG Start Of Frame markers: C0..CF but DHT (C4), JPG (C8) and DAC (CC); F7: JPEG-LS SOF55
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}
_LOSSLESS_SOF = frozenset({0xC3, 0xC7, 0xCB, 0xCF})
_STANDALONE = frozenset({0x01, 0xD8, *range(0xD0, 0xD8)})


class CodestreamError(StorageError):
    """A compressed frame whose markers cannot be read, or that disagree with the image header."""

    code = 705
    name = "codestream-error"


@dataclass(frozen=True)
class Codestream:
    rows: int
    columns: int
    components: int
    precision: int  # bits per sample (the largest of the components)
    lossy: bool
    method: str  # for Lossy Image Compression Method (0028,2114)


def _u16(data: bytes, at: int) -> int:
    if at + 2 > len(data):
        raise CodestreamError("truncated codestream")
    return int(struct.unpack_from(">H", data, at)[0])


def jpeg(frame: bytes) -> Codestream:
    """A JPEG (ISO 10918-1) or JPEG-LS (ISO 14495-1) frame's SOF (and, for JPEG-LS, the first SOS's NEAR)."""
    if frame[:2] != b"\xff\xd8":
        raise CodestreamError("not a JPEG codestream (no SOI marker)")
    i, sof, sof_at = 2, 0, 0
    while i + 2 <= len(frame):
        if frame[i] != 0xFF:
            raise CodestreamError("malformed JPEG marker segment")
        marker = frame[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        length = _u16(frame, i + 2)
        if length < 2:
            raise CodestreamError("malformed JPEG marker segment")
        if marker in _SOF and not sof:
            if length < 8 or i + 10 > len(frame):
                raise CodestreamError("truncated JPEG SOF segment")
            sof, sof_at = marker, i
            if marker != 0xF7:
                break
        elif marker == 0xDA:  # SOS: JPEG-LS's NEAR follows the component list
            if not sof:
                raise CodestreamError("JPEG scan before any SOF marker")
            count = frame[i + 4] if i + 4 < len(frame) else 0
            near_at = i + 5 + 2 * count
            if near_at >= len(frame):
                raise CodestreamError("truncated JPEG-LS SOS segment")
            near = frame[near_at]
            return _sof(frame, sof, sof_at, lossy=near > 0, method="ISO_14495_1")
        i += 2 + length
    if not sof:
        raise CodestreamError("no JPEG SOF marker")
    if sof == 0xF7:
        raise CodestreamError("no JPEG-LS SOS marker")
    return _sof(frame, sof, sof_at, lossy=sof not in _LOSSLESS_SOF, method="ISO_10918_1")


def _sof(frame: bytes, marker: int, at: int, *, lossy: bool, method: str) -> Codestream:
    precision, rows, columns, components = frame[at + 4], _u16(frame, at + 5), _u16(frame, at + 7), frame[at + 9]
    return Codestream(rows, columns, components, precision, lossy, method)


def j2k(frame: bytes) -> Codestream:
    """A JPEG 2000 (ISO 15444-1, or HTJ2K 15444-15) frame's SIZ and COD segments."""
    at = frame.find(b"\xff\x4f\xff\x51")  # SOC, then SIZ (it must follow SOC); also inside a JP2 'jp2c' box
    if at < 0:
        raise CodestreamError("no JPEG 2000 SOC/SIZ markers")
    siz = at + 2
    length = _u16(frame, siz + 2)
    if length < 41 or siz + 2 + length > len(frame):
        raise CodestreamError("truncated JPEG 2000 SIZ segment")
    xsiz, ysiz, xosiz, yosiz = struct.unpack_from(">IIII", frame, siz + 6)
    components = _u16(frame, siz + 38)
    if components < 1 or 38 + 3 * components > length or xsiz <= xosiz or ysiz <= yosiz:
        raise CodestreamError("malformed JPEG 2000 SIZ segment")
    precision = max((frame[siz + 40 + 3 * c] & 0x7F) + 1 for c in range(components))
    i, reversible = siz + 2 + length, None
    while i + 4 <= len(frame) and reversible is None:
        marker = _u16(frame, i)
        if marker in (0xFF90, 0xFF93, 0xFFD9):  # SOT, SOD, EOC: the main header is over
            break
        seg = _u16(frame, i + 2)
        if marker == 0xFF52:  # COD: ... SPcod's last byte: 0 = 9-7 irreversible, 1 = 5-3 reversible
            if i + 14 > len(frame) or seg < 12:
                raise CodestreamError("truncated JPEG 2000 COD segment")
            reversible = frame[i + 13] == 1
        i += 2 + seg
    if reversible is None:
        raise CodestreamError("no JPEG 2000 COD marker in the main header")
    return Codestream(ysiz - yosiz, xsiz - xosiz, components, precision, not reversible, "ISO_15444_1")


def read(transfer_syntax: str, frame: bytes) -> Codestream | None:
    """The frame's codestream header for the syntaxes the node decodes by codestream; None for the others
    (RLE: its decoder writes into the header-sized buffer; video syntaxes are never decoded)."""
    if transfer_syntax in JPEG_SYNTAXES or transfer_syntax in JPEG_LS_SYNTAXES:
        return jpeg(frame)
    if transfer_syntax in J2K_SYNTAXES:
        return j2k(frame)
    return None


def check(stream: Codestream, rows: int, columns: int, samples: int, bits_allocated: int) -> None:
    """CodestreamError unless the codestream describes the image the header declares."""
    if (stream.rows, stream.columns, stream.components) != (rows, columns, samples) \
            or stream.precision > bits_allocated:
        raise CodestreamError(
            f"the codestream is {stream.columns}x{stream.rows}, {stream.components} component(s) of "
            f"{stream.precision} bits; the header says {columns}x{rows}, {samples} of at most {bits_allocated}")
