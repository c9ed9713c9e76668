"""The byte layout of a STORED (uncompressed) ZIP archive, ZIP64 where needed: pure, no I/O.

Why hand-written: a patient's download is served by HTTP range requests and resumed (If-Range), so any byte
range [start, stop) of an archive that was never written anywhere must be producible on its own, and its size
known before the first byte (Content-Length). Python's zipfile writes sequentially to a file; zipstream-ng
can announce the size but only streams from the start; stream-zip (maintained) is a sequential generator;
zipseeker (unmaintained since 2020) computes the size but its own docs say it cannot skip parts, because it
needs every CRC-32 at the end. Here the caller supplies each entry's CRC-32 lazily (only the data descriptors
and central directory records in the range ask for it), so a range in the middle of a multi-GiB archive costs
the bytes it covers, and `pieces` is a generator: bytes flow as they are produced.

Stored, not deflated: DICOM pixel data rarely compresses, and stored makes every byte's offset a function of
the names and sizes alone. Each entry is one local file header with general-purpose flag bit 3 (CRC-32 zero:
it follows the data, so the header goes out before the data is read; the sizes stay in the header, which
APPNOTE 4.4.4 allows ("SHOULD" be zero) and which streaming readers need to find the end of stored data:
Python zipfile, Info-ZIP unzip -t, 7z t and bsdtar all accept it, tests/meshnode/study/test_zip_layout.py),
its data, a data descriptor (signature 0x08074b50, CRC-32, sizes: 8 bytes each when the entry is ZIP64),
and at the end one central directory record
per entry, a ZIP64 end-of-central-directory record and locator when any count, size or offset needs them
(an entry >= 4 GiB, an offset beyond 4 GiB, more than 65534 entries), and the end-of-central-directory
record. Modification times are fixed (1980-01-01 00:00), so the same entries always give the same bytes.

    layout = ZipLayout.plan([("DICOMDIR", 1234), ...])
    layout.size                        # the archive's length
    for piece in layout.pieces(start, stop, crc_of):
        bytes                          # header bytes to send as they are
        DataPiece(entry, offset, length)  # those bytes of entry `entry`'s data
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum

from protocol.errors import LocalProtocolError

U16 = 0xFFFF
U32 = 0xFFFFFFFF
#: DOS date 1980-01-01, time 00:00:00: a fixed timestamp for every entry (deterministic bytes)
DOS_DATE = (0 << 9) | (1 << 5) | 1
DOS_TIME = 0
#: Unix (3) made-by, spec version 4.5 (ZIP64); external attributes: a regular file, mode 0644
MADE_BY = (3 << 8) | 45
EXTERNAL_ATTR = 0o100644 << 16
MAX_NAME = 0xFFFF

LOCAL_SIG = 0x04034B50
CENTRAL_SIG = 0x02014B50
ZIP64_EOCD_SIG = 0x06064B50
ZIP64_LOCATOR_SIG = 0x07064B50
EOCD_SIG = 0x06054B50

DESCRIPTOR_SIG = 0x08074B50
#: general-purpose flag bit 3: CRC-32 (and sizes) in a data descriptor after the data
FLAG_DESCRIPTOR = 0x0008

LOCAL_FIXED = 30
CENTRAL_FIXED = 46
ZIP64_EOCD_SIZE = 56
ZIP64_LOCATOR_SIZE = 20
EOCD_SIZE = 22


class MediaSetError(LocalProtocolError):
    """A media set that cannot be built as asked: entries no ZIP can hold (a name too long or not ASCII, a
    negative size), a byte range outside the archive, too many instances."""

    code = 990
    name = "media-set-error"


@dataclass(frozen=True)
class DataPiece:
    """`length` bytes of entry `entry`'s data, from `offset` into it."""

    entry: int
    offset: int
    length: int


class _Kind(Enum):
    LOCAL = 1
    DATA = 2
    CENTRAL = 3
    TAIL = 4
    DESCRIPTOR = 5


@dataclass(frozen=True)
class _Region:
    start: int
    length: int
    kind: _Kind
    entry: int


@dataclass(frozen=True)
class ZipEntry:
    name: bytes
    size: int
    #: offset of its local file header in the archive
    header_offset: int
    #: sizes and offset in a ZIP64 extra field (local and central)
    zip64: bool

    @property
    def data_offset(self) -> int:
        return self.header_offset + LOCAL_FIXED + len(self.name) + (20 if self.zip64 else 0)

    @property
    def descriptor_size(self) -> int:
        return 24 if self.zip64 else 16


def _descriptor(entry: ZipEntry, crc: int) -> bytes:
    if entry.zip64:
        return struct.pack("<IIQQ", DESCRIPTOR_SIG, crc, entry.size, entry.size)
    return struct.pack("<IIII", DESCRIPTOR_SIG, crc, entry.size, entry.size)


def _local_header(entry: ZipEntry) -> bytes:
    version = 45 if entry.zip64 else 20
    size32 = U32 if entry.zip64 else entry.size
    extra = struct.pack("<HHQQ", 0x0001, 16, entry.size, entry.size) if entry.zip64 else b""
    return struct.pack("<IHHHHHIIIHH", LOCAL_SIG, version, FLAG_DESCRIPTOR, 0, DOS_TIME, DOS_DATE, 0, size32,
                       size32, len(entry.name), len(extra)) + entry.name + extra


def _central_extra(entry: ZipEntry) -> bytes:
    if not entry.zip64:
        return b""
    return struct.pack("<HHQQQ", 0x0001, 24, entry.size, entry.size, entry.header_offset)


def _central_record(entry: ZipEntry, crc: int) -> bytes:
    version = 45 if entry.zip64 else 20
    size32 = U32 if entry.zip64 else entry.size
    offset32 = U32 if entry.zip64 else entry.header_offset
    extra = _central_extra(entry)
    return struct.pack("<IHHHHHHIIIHHHHHII", CENTRAL_SIG, MADE_BY, version, FLAG_DESCRIPTOR, 0, DOS_TIME,
                       DOS_DATE, crc,
                       size32, size32, len(entry.name), len(extra), 0, 0, 0, EXTERNAL_ATTR,
                       offset32) + entry.name + extra


class ZipLayout:
    """Every offset of one archive. Build with `ZipLayout.plan`."""

    def __init__(self, entries: tuple[ZipEntry, ...], regions: list[_Region], tail: bytes, size: int,
                 central_offset: int) -> None:
        self.entries = entries
        #: where the central directory starts
        self.central_offset = central_offset
        self._regions = regions
        self._starts = [r.start for r in regions]
        self._tail = tail
        self.size = size

    @classmethod
    def plan(cls, files: Sequence[tuple[str, int]], *, force_zip64: bool = False) -> ZipLayout:
        """`files`: (name, size) in archive order. `force_zip64`: every entry and the end records in ZIP64
        form even when small (tests; readers must handle both)."""
        entries: list[ZipEntry] = []
        regions: list[_Region] = []
        pos = 0
        for index, (name, size) in enumerate(files):
            try:
                raw = name.encode("ascii")
            except UnicodeEncodeError:
                raise MediaSetError("ZIP entry names here are ASCII only") from None
            if not raw or len(raw) > MAX_NAME or size < 0:
                raise MediaSetError("a ZIP entry needs a name (at most 65535 bytes) and a size >= 0")
            zip64 = force_zip64 or size >= U32 or pos >= U32
            entry = ZipEntry(raw, size, pos, zip64)
            entries.append(entry)
            header = entry.data_offset - pos
            regions.append(_Region(pos, header, _Kind.LOCAL, index))
            if size:
                regions.append(_Region(entry.data_offset, size, _Kind.DATA, index))
            regions.append(_Region(entry.data_offset + size, entry.descriptor_size, _Kind.DESCRIPTOR, index))
            pos = entry.data_offset + size + entry.descriptor_size
        cd_offset = pos
        for index, entry in enumerate(entries):
            length = CENTRAL_FIXED + len(entry.name) + len(_central_extra(entry))
            regions.append(_Region(pos, length, _Kind.CENTRAL, index))
            pos += length
        cd_size = pos - cd_offset
        count = len(entries)
        tail = b""
        zip64_end = force_zip64 or count >= U16 or cd_size >= U32 or cd_offset >= U32
        if zip64_end:
            tail += struct.pack("<IQHHIIQQQQ", ZIP64_EOCD_SIG, ZIP64_EOCD_SIZE - 12, MADE_BY, 45, 0, 0,
                                count, count, cd_size, cd_offset)
            tail += struct.pack("<IIQI", ZIP64_LOCATOR_SIG, 0, pos, 1)
            # the classic record keeps what fits; a field that does not holds its maximum (read the ZIP64 one)
            tail += struct.pack("<IHHHHIIH", EOCD_SIG, 0, 0, min(count, U16), min(count, U16), min(cd_size, U32),
                                min(cd_offset, U32), 0)
        else:
            tail += struct.pack("<IHHHHIIH", EOCD_SIG, 0, 0, count, count, cd_size, cd_offset, 0)
        regions.append(_Region(pos, len(tail), _Kind.TAIL, -1))
        return cls(tuple(entries), regions, tail, pos + len(tail), cd_offset)

    def _region_bytes(self, region: _Region, crc_of: Callable[[int], int]) -> bytes:
        if region.kind is _Kind.LOCAL:
            return _local_header(self.entries[region.entry])
        if region.kind is _Kind.DESCRIPTOR:
            return _descriptor(self.entries[region.entry], crc_of(region.entry))
        if region.kind is _Kind.CENTRAL:
            return _central_record(self.entries[region.entry], crc_of(region.entry))
        return self._tail

    def check_range(self, start: int, stop: int) -> None:
        if not 0 <= start <= stop <= self.size:
            raise MediaSetError(f"range [{start}, {stop}) is outside the archive (size {self.size})")

    def pieces(self, start: int, stop: int, crc_of: Callable[[int], int]) -> Iterator[bytes | DataPiece]:
        """Bytes [start, stop) of the archive as header bytes and pieces of entry data, in order, produced
        one by one (a generator: check the range first with `check_range`, the generator checks it again).
        `crc_of(i)`: entry i's CRC-32, asked for only when its data descriptor or central directory record
        is reached (after the pieces before it were consumed)."""
        self.check_range(start, stop)
        i = bisect.bisect_right(self._starts, start) - 1
        pos = start
        while pos < stop:
            region = self._regions[i]
            lo = pos - region.start
            hi = min(stop - region.start, region.length)
            if region.kind is _Kind.DATA:
                yield DataPiece(region.entry, lo, hi - lo)
            else:
                yield self._region_bytes(region, crc_of)[lo:hi]
            pos = region.start + hi
            i += 1
