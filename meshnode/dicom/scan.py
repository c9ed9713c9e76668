"""Structural scan of DICOM data-set bytes: where every element starts and ends.

This is the node's own, strict view of a file, independent of pydicom: it
walks element headers, sequences, items and encapsulated fragments
iteratively (no recursion, so no RecursionError), checks that every length
fits inside the file and inside the item that encloses it, and limits how
deeply sequences nest. It reads element headers only, never values (apart
from a few small captured ones), through one small read-ahead window.

The encoding rules follow what pydicom does when it reads the same bytes, so
the two parsers can be cross-checked: the VR of an explicit element whose VR
bytes are not letters is read as implicit, a sequence item in an explicit VR
data set may be encoded implicitly, and an undefined-length element is a
sequence when its VR is SQ or UN (or, implicitly, when the dictionary or the
next tag says so); otherwise it holds encapsulated fragments.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import BinaryIO

from pydicom.datadict import dictionary_VR
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

from meshnode.dicom.errors import DicomDepthError, MalformedDicomError, TruncatedDicomError

UNDEFINED_LENGTH = 0xFFFFFFFF
ITEM_TAG = 0xFFFEE000
ITEM_DELIMITER_TAG = 0xFFFEE00D
SEQUENCE_DELIMITER_TAG = 0xFFFEE0DD
MAX_SEQUENCE_DEPTH = 32
MAX_CAPTURE = 1024

_WINDOW = 16 * 1024
_LONG_VRS = frozenset(str(vr) for vr in EXPLICIT_VR_LENGTH_32)


def tag_text(tag: int) -> str:
    """`(gggg,eeee)`: how tags appear in messages."""
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


class ByteSource:
    """Random access to a seekable binary stream through one read-ahead window."""

    def __init__(self, stream: BinaryIO, size: int) -> None:
        self._stream = stream
        self.size = size
        self._start = 0
        self._buf = b""

    def read(self, pos: int, n: int) -> bytes:
        """Up to `n` bytes at `pos` (fewer only at the end of the stream)."""
        offset = pos - self._start
        if 0 <= offset and offset + n <= len(self._buf):
            return self._buf[offset : offset + n]
        self._stream.seek(pos)
        self._buf = self._stream.read(max(n, _WINDOW))
        self._start = pos
        return self._buf[:n]


@dataclass(frozen=True, slots=True)
class ElementHeader:
    """One data element's header, as found at `tag_pos`."""

    tag: int
    vr: str | None  # None when read as implicit VR
    length: int  # UNDEFINED_LENGTH for undefined
    tag_pos: int
    value_pos: int


@dataclass(frozen=True)
class ScanResult:
    """Where a top-level scan ended, and why."""

    end: int  # offset of the stop element's tag, or the limit
    stopped_at: ElementHeader | None  # the top-level element `stop` selected
    captured: dict[int, bytes] = field(default_factory=dict)


@dataclass(slots=True)
class _Context:
    is_sequence: bool
    end: int | None  # None: undefined length, ends at a delimiter
    implicit: bool
    top: bool = False


def looks_implicit(source: ByteSource, pos: int) -> bool | None:
    """pydicom's test: are the two bytes where an explicit VR would be not letters?

    None when there are not enough bytes to tell.
    """
    raw = source.read(pos + 4, 2)
    if len(raw) < 2:
        return None
    return not (0x40 < raw[0] < 0x5B and 0x40 < raw[1] < 0x5B)


class DatasetScanner:
    """Walks data-set bytes in one encoding (endianness is fixed per scan)."""

    def __init__(self, source: ByteSource, *, little_endian: bool) -> None:
        self._src = source
        self._little = little_endian
        e = "<" if little_endian else ">"
        self._tag_len = struct.Struct(e + "HHL")
        self._explicit = struct.Struct(e + "HH2sH")
        self._u32 = struct.Struct(e + "L")

    def scan(
        self,
        start: int,
        limit: int,
        *,
        implicit: bool,
        stop: Callable[[int], bool] | None = None,
        capture: Collection[int] = (),
    ) -> ScanResult:
        """Scan top-level elements from `start` up to exactly `limit`.

        Stops early, before the element's value, at the first top-level tag
        for which `stop` is true. Values of top-level tags in `capture` (up to
        MAX_CAPTURE bytes) are returned.
        """
        pos = start
        stack = [_Context(is_sequence=False, end=limit, implicit=implicit, top=True)]
        captured: dict[int, bytes] = {}
        while True:
            ctx = stack[-1]
            if ctx.end is not None and pos >= ctx.end:
                if pos > ctx.end:  # pragma: no cover - every step is bounds-checked first
                    raise MalformedDicomError(f"element at offset {pos} overruns its container")
                if ctx.top:
                    return ScanResult(pos, None, captured)
                stack.pop()
                continue
            if ctx.is_sequence:
                pos = self._next_item(pos, ctx, stack)
                continue
            head = self._element_header(pos, ctx)
            if head.tag == ITEM_DELIMITER_TAG and ctx.end is None and not ctx.top:
                stack.pop()
                pos = head.value_pos
                continue
            if head.tag >> 16 == 0xFFFE:
                raise MalformedDicomError(
                    f"unexpected item or delimiter tag {tag_text(head.tag)} at offset {pos}"
                )
            if ctx.top and stop is not None and stop(head.tag):
                return ScanResult(pos, head, captured)
            if head.length == UNDEFINED_LENGTH:
                if self._is_sequence(head, undefined=True):
                    self._push_sequence(stack, None, ctx.implicit)
                    pos = head.value_pos
                else:
                    pos = self.skip_fragments(head.value_pos, ctx.end)
                continue
            end = head.value_pos + head.length
            self._check_end(end, ctx.end, f"value of {tag_text(head.tag)} at offset {pos}")
            if ctx.top and head.tag in capture and head.length <= MAX_CAPTURE:
                captured[head.tag] = self._src.read(head.value_pos, head.length)
            if head.length and self._is_sequence(head, undefined=False):
                self._push_sequence(stack, end, ctx.implicit)
                pos = head.value_pos
            else:
                pos = end

    def skip_fragments(self, pos: int, container_end: int | None) -> int:
        """Walk encapsulated fragments (items of defined length) to just past
        the sequence delimiter; return that offset."""
        while True:
            tag, length = self._item_header(pos, container_end)
            if tag == SEQUENCE_DELIMITER_TAG:
                if length != 0:
                    raise MalformedDicomError(
                        f"sequence delimiter with non-zero length at offset {pos}"
                    )
                return pos + 8
            if tag != ITEM_TAG:
                raise MalformedDicomError(
                    f"expected a fragment item at offset {pos}, found {tag_text(tag)}"
                )
            if length == UNDEFINED_LENGTH:
                raise MalformedDicomError(f"fragment item of undefined length at offset {pos}")
            end = pos + 8 + length
            self._check_end(end, container_end, f"fragment item at offset {pos}")
            pos = end

    # -- internals -----------------------------------------------------

    def _push_sequence(self, stack: list[_Context], end: int | None, implicit: bool) -> None:
        depth = sum(1 for c in stack if c.is_sequence) + 1
        if depth > MAX_SEQUENCE_DEPTH:
            raise DicomDepthError(f"sequences nested deeper than {MAX_SEQUENCE_DEPTH} levels")
        stack.append(_Context(is_sequence=True, end=end, implicit=implicit))

    def _next_item(self, pos: int, ctx: _Context, stack: list[_Context]) -> int:
        tag, length = self._item_header(pos, ctx.end)
        if tag == SEQUENCE_DELIMITER_TAG:
            if ctx.end is not None:
                raise MalformedDicomError(
                    f"sequence delimiter inside a defined-length sequence at offset {pos}"
                )
            stack.pop()
            return pos + 8
        if tag != ITEM_TAG:
            raise MalformedDicomError(
                f"expected a sequence item at offset {pos}, found {tag_text(tag)}"
            )
        start = pos + 8
        item_end: int | None = None
        if length != UNDEFINED_LENGTH:
            item_end = start + length
            self._check_end(item_end, ctx.end, f"sequence item at offset {pos}")
        implicit = ctx.implicit
        if not implicit and item_end != start:
            implicit = looks_implicit(self._src, start) or False
        stack.append(_Context(is_sequence=False, end=item_end, implicit=implicit))
        return start

    def _need(self, pos: int, n: int, container_end: int | None, what: str) -> bytes:
        if container_end is not None and pos + n > container_end and container_end < self._src.size:
            raise MalformedDicomError(f"{what} at offset {pos} crosses the end of its container")
        raw = self._src.read(pos, n)
        if len(raw) < n:
            raise TruncatedDicomError(f"file ends inside the {what} at offset {pos}")
        return raw

    def _check_end(self, end: int, container_end: int | None, what: str) -> None:
        if end > self._src.size:
            raise TruncatedDicomError(
                f"{what} runs {end - self._src.size} bytes past the end of the file"
            )
        if container_end is not None and end > container_end:
            raise MalformedDicomError(f"{what} crosses the end of its container")

    def _item_header(self, pos: int, container_end: int | None) -> tuple[int, int]:
        group, elem, length = self._tag_len.unpack(self._need(pos, 8, container_end, "item header"))
        return group << 16 | elem, length

    def _element_header(self, pos: int, ctx: _Context) -> ElementHeader:
        raw = self._need(pos, 8, ctx.end, "element header")
        if ctx.implicit:
            group, elem, length = self._tag_len.unpack(raw)
            return ElementHeader(group << 16 | elem, None, length, pos, pos + 8)
        group, elem, vr_bytes, short_length = self._explicit.unpack(raw)
        tag = group << 16 | elem
        if group == 0xFFFE or not (b"AA" <= vr_bytes <= b"ZZ"):
            # items and delimiters carry no VR; other non-letters: pydicom
            # assumes the writer switched to implicit VR for this element
            (length,) = self._u32.unpack_from(raw, 4)
            return ElementHeader(tag, None, length, pos, pos + 8)
        vr = vr_bytes.decode("ascii", "replace")
        if vr in _LONG_VRS:
            ext = self._need(pos + 8, 4, ctx.end, "element header")
            (length,) = self._u32.unpack(ext)
            return ElementHeader(tag, vr, length, pos, pos + 12)
        return ElementHeader(tag, vr, short_length, pos, pos + 8)

    def _is_sequence(self, head: ElementHeader, *, undefined: bool) -> bool:
        if head.vr == "SQ":
            return True
        if head.vr == "UN":
            return undefined  # PS3.5 6.2.2: undefined-length UN is a sequence
        if head.vr is not None:
            return False
        try:
            return str(dictionary_VR(head.tag)) == "SQ"
        except KeyError:
            if not undefined:
                return False  # unknown, defined length: opaque bytes
            nxt = self._src.read(head.value_pos, 4)
            if len(nxt) < 4:
                return False
            group, elem, _ = self._tag_len.unpack(nxt + bytes(4))
            tag: int = group << 16 | elem
            return tag == ITEM_TAG
