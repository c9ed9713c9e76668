"""Byte layout of a DICOM file: preamble, meta header, header, pixel value, trailer.

`scan_layout` finds, without pydicom and without reading any value it does
not need, the three regions an instance is split into:

    [0, header_end)          preamble, meta header and every element before
                             the Pixel Data value, including the Pixel Data
                             element's own tag/VR/length
    [header_end, pixel_end)  the top-level Pixel Data (or Float / Double Float
                             Pixel Data) value; for encapsulated pixel data the
                             fragment items up to and including the sequence
                             delimiter
    [pixel_end, file_size)   the trailer (elements after the pixel data)

A deflated data set has no usable offsets: its whole file is the header
region and `has_pixel_data` is False, but the inflated stream is still
scanned (bounded in size) so a malformed one is refused.
"""

from __future__ import annotations

import io
import logging
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydicom.values import converters

from meshnode.dicom.errors import (
    DicomError,
    DicomLimitError,
    MalformedDicomError,
    NotDicomError,
    TruncatedDicomError,
)
from meshnode.dicom.scan import (
    UNDEFINED_LENGTH,
    ByteSource,
    DatasetScanner,
    ElementHeader,
    looks_implicit,
)

log = logging.getLogger(__name__)

PIXEL_DATA_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
TRANSFER_SYNTAX_TAG = 0x00020010

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"

MAX_INFLATED_SIZE = 1 << 30

# Groups a data set may plausibly start with when a file has no 'DICM' prefix.
_HEADERLESS_FIRST_GROUPS = frozenset({0x0002, 0x0008, 0x0010, 0x0018, 0x0020, 0x0028})
_EXECUTABLE_MAGIC = (b"MZ", b"\x7fELF")
_INFLATE_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileLayout:
    """Where the regions of one DICOM file are, and how its data set is encoded."""

    file_size: int
    header_end: int
    pixel_end: int
    has_pixel_data: bool
    encapsulated: bool
    pixel_tag: int | None  # top-level pixel element, also for deflated files
    pixel_element_offset: int | None  # offset of its tag (in the inflated stream if deflated)
    pixel_length: int | None  # value length of native pixel data; None if encapsulated/absent
    dataset_offset: int  # first byte after the meta header
    transfer_syntax_uid: str
    implicit_vr: bool
    little_endian: bool
    flags: frozenset[str]

    @property
    def trailer_size(self) -> int:
        return self.file_size - self.pixel_end


def scan_layout(path: Path) -> FileLayout:
    """The byte layout of the DICOM file at `path`; DicomError if it has none."""
    with path.open("rb") as stream:
        size = stream.seek(0, io.SEEK_END)
        if size == 0:
            raise NotDicomError("empty file")
        return _scan(ByteSource(stream, size))


def scan_layout_stream(stream: BinaryIO, size: int) -> FileLayout:
    """scan_layout for a file already open (`size`: its size when opened), so that what is scanned and what
    is read afterwards through the same descriptor are one file."""
    if size == 0:
        raise NotDicomError("empty file")
    return _scan(ByteSource(stream, size))


def scan_layout_bytes(data: bytes) -> FileLayout:
    """The byte layout of a DICOM file held in memory (a received C-STORE or STOW-RS part)."""
    if not data:
        raise NotDicomError("empty file")
    return _scan(ByteSource(io.BytesIO(data), len(data)))


def find_native_pixel_value(data: bytes) -> tuple[int, int] | None:
    """(value offset, value length) of the top-level native pixel data of a file still arriving.

    For splitting a C-STORE's data set into blocks while it arrives: known as
    soon as `data` reaches the pixel data element's header. None while it
    does not, and for files whose blocks cannot be predicted that early
    (deflated, encapsulated pixel data, no 'DICM' prefix, malformed): the
    complete file is scanned and checked in full afterwards anyway.
    """
    src = ByteSource(io.BytesIO(data), len(data))
    try:
        if src.read(128, 4) != b"DICM" or struct.unpack("<H", src.read(132, 2))[0] != 0x0002:
            return None
        meta = DatasetScanner(src, little_endian=True).scan(
            132, src.size, implicit=False, stop=lambda tag: tag >> 16 != 0x0002, capture=(TRANSFER_SYNTAX_TAG,))
        if meta.stopped_at is None:
            return None
        ts = meta.captured.get(TRANSFER_SYNTAX_TAG, b"").decode("ascii", "replace").strip("\x00 ")
        if not ts or ts == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
            return None
        implicit, little = _encoding(src, meta.end, ts, set())
        head = DatasetScanner(src, little_endian=little).scan(meta.end, src.size, implicit=implicit,
                                                               stop=PIXEL_DATA_TAGS.__contains__)
    except (DicomError, struct.error):
        return None
    pixel = head.stopped_at
    if pixel is None or pixel.length == UNDEFINED_LENGTH:
        return None
    return pixel.value_pos, pixel.length


def _scan(src: ByteSource) -> FileLayout:
    flags: set[str] = set()
    if src.read(128, 4) == b"DICM":
        meta_start = 132
        if src.read(0, 4).startswith(_EXECUTABLE_MAGIC):
            flags.add("executable-preamble")
    else:
        meta_start = 0
        flags.add("no-preamble")
        if not _looks_like_element(src):
            raise NotDicomError(
                "no 'DICM' prefix at offset 128 and no DICOM data element at offset 0"
            )

    ts = ""
    dataset_offset = meta_start
    first = src.read(meta_start, 2)
    if len(first) == 2 and struct.unpack("<H", first)[0] == 0x0002:
        meta = DatasetScanner(src, little_endian=True).scan(
            meta_start,
            src.size,
            implicit=False,
            stop=lambda tag: tag >> 16 != 0x0002,
            capture=(TRANSFER_SYNTAX_TAG,),
        )
        dataset_offset = meta.end
        raw_ts = meta.captured.get(TRANSFER_SYNTAX_TAG, b"")
        ts = raw_ts.decode("ascii", "replace").strip("\x00 ")
        if not ts:
            flags.add("no-transfer-syntax")
    else:
        flags.add("no-meta-header")

    if ts == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        return _scan_deflated(src, dataset_offset, ts, flags)
    implicit, little = _encoding(src, dataset_offset, ts, flags)
    body = _scan_body(src, dataset_offset, implicit=implicit, little=little)
    pixel = body.pixel
    return FileLayout(
        file_size=src.size,
        header_end=pixel.value_pos if pixel else src.size,
        pixel_end=body.pixel_end if pixel else src.size,
        has_pixel_data=pixel is not None,
        encapsulated=body.encapsulated,
        pixel_tag=pixel.tag if pixel else None,
        pixel_element_offset=pixel.tag_pos if pixel else None,
        pixel_length=None if pixel is None or body.encapsulated else pixel.length,
        dataset_offset=dataset_offset,
        transfer_syntax_uid=ts,
        implicit_vr=implicit,
        little_endian=little,
        flags=frozenset(flags),
    )


@dataclass(frozen=True)
class _Body:
    pixel: ElementHeader | None
    pixel_end: int
    encapsulated: bool


def _scan_body(src: ByteSource, start: int, *, implicit: bool, little: bool) -> _Body:
    """Scan a data set to its end: header, pixel value, trailer."""
    scanner = DatasetScanner(src, little_endian=little)
    head = scanner.scan(start, src.size, implicit=implicit, stop=PIXEL_DATA_TAGS.__contains__)
    pixel = head.stopped_at
    if pixel is None:
        return _Body(None, src.size, False)
    encapsulated = pixel.length == UNDEFINED_LENGTH
    if encapsulated:
        pixel_end = scanner.skip_fragments(pixel.value_pos, src.size)
    else:
        pixel_end = pixel.value_pos + pixel.length
        if pixel_end > src.size:
            raise TruncatedDicomError(
                f"pixel data value runs {pixel_end - src.size} bytes past the end of the file"
            )
    if pixel_end < src.size:
        scanner.scan(pixel_end, src.size, implicit=implicit)
    return _Body(pixel, pixel_end, encapsulated)


def _scan_deflated(src: ByteSource, dataset_offset: int, ts: str, flags: set[str]) -> FileLayout:
    inflated = _inflate(src, dataset_offset, flags)
    flags.add("deflated")
    inner = ByteSource(io.BytesIO(inflated), len(inflated))
    implicit = bool(len(inflated) >= 6 and looks_implicit(inner, 0))
    if implicit:
        flags.add("transfer-syntax-mismatch")
    body = _scan_body(inner, 0, implicit=implicit, little=True)
    pixel = body.pixel
    return FileLayout(
        file_size=src.size,
        header_end=src.size,
        pixel_end=src.size,
        has_pixel_data=False,
        encapsulated=body.encapsulated,
        pixel_tag=pixel.tag if pixel else None,
        pixel_element_offset=pixel.tag_pos if pixel else None,
        pixel_length=None if pixel is None or body.encapsulated else pixel.length,
        dataset_offset=dataset_offset,
        transfer_syntax_uid=ts,
        implicit_vr=implicit,
        little_endian=True,
        flags=frozenset(flags),
    )


def _inflate(src: ByteSource, start: int, flags: set[str]) -> bytes:
    """The raw-deflate stream from `start` to the end of the file, inflated."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out: list[bytes] = []
    total = 0
    pos = start
    try:
        while pos < src.size and not inflater.eof:
            chunk = src.read(pos, min(_INFLATE_CHUNK, src.size - pos))
            pos += len(chunk)
            data = chunk
            while data and not inflater.eof:
                piece = inflater.decompress(data, _INFLATE_CHUNK)
                total += len(piece)
                if total > MAX_INFLATED_SIZE:
                    raise DicomLimitError(
                        f"deflated data set inflates to more than {MAX_INFLATED_SIZE} bytes"
                    )
                out.append(piece)
                data = inflater.unconsumed_tail
    except zlib.error:
        raise MalformedDicomError("deflated data set is not a valid deflate stream") from None
    if not inflater.eof:
        raise TruncatedDicomError("deflated data set ends before its deflate stream does")
    if inflater.unused_data or pos < src.size:
        # pydicom ignores them too; they stay in the file's bytes, flagged
        flags.add("bytes-after-deflate-stream")
    return b"".join(out)


def _encoding(src: ByteSource, start: int, ts: str, flags: set[str]) -> tuple[bool, bool]:
    """(implicit VR, little endian) of the data set at `start`, as pydicom decides it."""
    if ts == IMPLICIT_VR_LITTLE_ENDIAN:
        implicit, little = True, True
    elif ts == EXPLICIT_VR_BIG_ENDIAN:
        implicit, little = False, False
    elif ts:
        implicit, little = False, True  # every other transfer syntax
    else:
        implicit, little = _guess_encoding(src, start)
    found = looks_implicit(src, start)
    if found is not None and found != implicit:
        # pydicom reads by what the first element looks like, whatever the
        # transfer syntax says; so must the scan, or the two would disagree
        flags.add("transfer-syntax-mismatch")
        implicit = found
    return implicit, little


def _guess_encoding(src: ByteSource, start: int) -> tuple[bool, bool]:
    """pydicom's guess for a data set with no transfer syntax (issue 258)."""
    raw = src.read(start, 6)
    if len(raw) < 6:
        return True, True
    group, _, vr = struct.unpack("<HH2s", raw)
    if vr.decode("latin-1") in converters:
        return False, group < 1024
    return True, True


def _looks_like_element(src: ByteSource) -> bool:
    """Does offset 0 hold a plausible first data element (no preamble)?"""
    raw = src.read(0, 8)
    if len(raw) < 8:
        return False
    for fmt in ("<HH", ">HH"):
        group, _ = struct.unpack(fmt, raw[:4])
        if group not in _HEADERLESS_FIRST_GROUPS:
            continue
        vr = raw[4:6].decode("latin-1")
        if vr in converters:
            return True
        (length,) = struct.unpack(fmt[0] + "L", raw[4:8])
        if fmt == "<HH" and length < src.size:
            return True  # implicit VR is always little endian
    return False

