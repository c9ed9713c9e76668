"""HTTP byte ranges (RFC 9110 §14) for resumable downloads: one Range header against a body of known size.

Pure (no I/O): the download handler (meshnode.web.patient_web) asks `wanted_range` what to send.

    no Range, or a Range this server ignores     -> None: the whole body, 200
    one satisfiable range                        -> ByteRange: 206 with Content-Range
    one range that starts at or past the end,
    or a suffix of zero bytes ("bytes=-0")       -> RangeNotSatisfiable: 416 with Content-Range: bytes */size

Ignored (the whole body is sent, as §14.2 allows): a unit other than bytes, a syntactically invalid range
(negative numbers, last < first, garbage), several ranges (no multipart/byteranges: a resuming download asks
for one), and an If-Range that does not name the current entity tag. Numbers of any length are read without
int() of unbounded text: more than MAX_DIGITS digits is past any body's end.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.errors import LocalProtocolError

#: a position with more digits than this is treated as past the end (no body is 10^19 bytes)
MAX_DIGITS = 19
#: a Range header longer than this is ignored (a real client's single range is a few dozen characters)
MAX_HEADER = 200


class RangeNotSatisfiable(LocalProtocolError):
    """The one range asked for lies wholly past the body's end (answered 416)."""

    code = 992
    name = "range-not-satisfiable"

    def __init__(self, size: int) -> None:
        super().__init__(f"the range asked for is not within the {size} bytes of this file")
        self.size = size


@dataclass(frozen=True)
class ByteRange:
    """Bytes [start, stop) of a body of `size` bytes (start < stop <= size)."""

    start: int
    stop: int
    size: int

    @property
    def length(self) -> int:
        return self.stop - self.start

    @property
    def content_range(self) -> str:
        return f"bytes {self.start}-{self.stop - 1}/{self.size}"


_PAST_END = -1  # a number with more than MAX_DIGITS digits


def _number(text: str) -> int | None:
    """A non-negative decimal written in ASCII digits; _PAST_END when too long to matter; None otherwise."""
    if not text or not text.isascii() or not text.isdigit():
        return None
    if len(text) > MAX_DIGITS:
        return _PAST_END
    return int(text)


def wanted_range(header: str | None, size: int, if_range: str | None = None, etag: str = "") -> ByteRange | None:
    """What to send of a body of `size` bytes (entity tag `etag`, quoted) for this Range header."""
    if header is None or size < 0:
        return None
    if if_range is not None and (not etag or if_range.strip() != etag or if_range.strip().startswith("W/")):
        return None  # If-Range names another version (or a date): the whole current body
    if len(header) > MAX_HEADER:
        return None
    unit, sep, spec = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    specs = spec.split(",")
    if len(specs) != 1:
        return None
    first_text, dash, last_text = specs[0].strip().partition("-")
    if not dash:
        return None
    first_text, last_text = first_text.strip(), last_text.strip()
    if not first_text:  # suffix: the last N bytes
        suffix = _number(last_text)
        if suffix is None:
            return None
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable(size)
        if suffix == _PAST_END or suffix > size:
            suffix = size
        return ByteRange(size - suffix, size, size)
    first = _number(first_text)
    if first is None:
        return None
    last: int | None = None
    if last_text:
        last = _number(last_text)
        if last is None:
            return None
        if first != _PAST_END and last != _PAST_END and last < first:
            return None  # invalid (§14.1.1): ignored
        if first == _PAST_END and last != _PAST_END:
            return None  # first has more digits than last: last < first
    if first == _PAST_END or first >= size:
        raise RangeNotSatisfiable(size)
    stop = size if last is None or last == _PAST_END or last >= size else last + 1
    return ByteRange(first, stop, size)
