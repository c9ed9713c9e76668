"""A sans-IO parser for multipart/related bodies (RFC 2046, RFC 2387), as STOW-RS uploads them.

    parser = MultipartParser(boundary, max_part_bytes=..., max_parts=...)
    for chunk in body:
        for event in parser.feed(chunk): ...     # PartStarted, PartData, PartEnded
    parser.close()                               # MultipartError unless the closing delimiter was seen

Bytes in, events out; no I/O. Malformed framing raises MultipartError, a part
or a part header over its limit raises LimitError, before anything larger
than the limits is buffered.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from protocol.errors import LimitError, RemoteProtocolError

MAX_HEADER_BYTES = 8192
MAX_PADDING_BYTES = 80  # spaces and tabs allowed between a boundary and its CRLF
_BOUNDARY = re.compile(r"^[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]$")


class MultipartError(RemoteProtocolError):
    """A multipart body whose framing is broken (boundary, part headers, end)."""

    code = 122
    name = "multipart-error"


@dataclass(frozen=True)
class PartStarted:
    headers: dict[str, str]  # lower-case names


@dataclass(frozen=True)
class PartData:
    data: bytes


@dataclass(frozen=True)
class PartEnded:
    size: int


Event = PartStarted | PartData | PartEnded


class _State(Enum):
    PREAMBLE = "preamble"
    AFTER_DELIMITER = "after-delimiter"
    HEADERS = "headers"
    BODY = "body"
    EPILOGUE = "epilogue"


def content_type_params(value: str) -> tuple[str, dict[str, str]]:
    """`multipart/related; type="application/dicom"; boundary=X` -> ("multipart/related", {...})."""
    parts = re.findall(r'(?:[^;"]|"[^"]*")+', value)
    if not parts:
        return "", {}
    params = {}
    for p in parts[1:]:
        k, _, v = p.strip().partition("=")
        v = v.strip()
        if len(v) >= 2 and v[0] == v[-1] == '"':
            v = v[1:-1]
        params[k.strip().lower()] = v
    return parts[0].strip().lower(), params


def check_boundary(boundary: str) -> bytes:
    if not _BOUNDARY.match(boundary):
        raise MultipartError("the multipart boundary is missing or not a valid RFC 2046 boundary")
    return boundary.encode("ascii")


class MultipartParser:
    def __init__(self, boundary: bytes, *, max_part_bytes: int, max_parts: int,
                 max_header_bytes: int = MAX_HEADER_BYTES) -> None:
        self.dash_boundary = b"--" + boundary
        self.delimiter = b"\r\n" + self.dash_boundary
        self.max_part_bytes = max_part_bytes
        self.max_parts = max_parts
        self.max_header_bytes = max_header_bytes
        self._state = _State.PREAMBLE
        self._buf = bytearray()
        self._parts = 0
        self._part_size = 0
        self._preamble_seen = 0
        self.complete = False

    @property
    def parts(self) -> int:
        return self._parts

    def feed(self, data: bytes) -> list[Event]:
        if self.complete and self._state is _State.EPILOGUE:
            return []  # the epilogue is ignored
        self._buf += data
        events: list[Event] = []
        while True:
            before = (self._state, len(self._buf))
            self._step(events)
            if (self._state, len(self._buf)) == before:
                return events

    def close(self) -> list[Event]:
        if not self.complete:
            where = {_State.PREAMBLE: "no opening boundary found", _State.HEADERS: "inside a part's headers",
                     _State.BODY: "inside a part (no closing boundary)",
                     _State.AFTER_DELIMITER: "right after a boundary"}.get(self._state, self._state.value)
            raise MultipartError(f"multipart body ended early: {where}")
        return []

    def _step(self, events: list[Event]) -> None:
        buf = self._buf
        if self._state is _State.PREAMBLE:
            # the first dash-boundary may start the body or follow a CRLF (an empty or real preamble);
            # "starts the body" only while no preamble byte has been dropped, else a dash-boundary in
            # the middle of a preamble line would count when a read happened to end just before it
            at = 0 if self._preamble_seen == 0 and buf.startswith(self.dash_boundary) else -1
            if at < 0:
                found = buf.find(self.delimiter)
                if found >= 0 and self._preamble_seen + found > self.max_header_bytes:
                    # the same limit whether the preamble came in one read or in many
                    raise MultipartError("no multipart boundary where one was expected (wrong boundary?)")
                at = found + 2 if found >= 0 else -1
            if at < 0:
                keep = len(self.delimiter)
                self._preamble_seen += max(0, len(buf) - keep)
                if self._preamble_seen > self.max_header_bytes:
                    raise MultipartError("no multipart boundary where one was expected (wrong boundary?)")
                if len(buf) > keep:
                    del buf[:len(buf) - keep]
                return
            del buf[:at + len(self.dash_boundary)]
            self._state = _State.AFTER_DELIMITER
        elif self._state is _State.AFTER_DELIMITER:
            if len(buf) < 2:
                return
            if buf.startswith(b"--"):
                del buf[:2]
                self.complete = True
                self._state = _State.EPILOGUE
                buf.clear()
                return
            # transport padding (spaces, tabs) may follow a boundary before its CRLF
            stripped = bytes(buf).lstrip(b" \t")
            if len(buf) - len(stripped) > MAX_PADDING_BYTES:  # however the body was cut into reads
                raise MultipartError("garbage after a multipart boundary")
            if len(stripped) < 2:
                return
            if not stripped.startswith(b"\r\n"):
                raise MultipartError("a multipart boundary is not followed by CRLF")
            del buf[:len(buf) - len(stripped) + 2]
            self._parts += 1
            if self._parts > self.max_parts:
                raise LimitError(f"more than {self.max_parts} parts in one request")
            self._state = _State.HEADERS
        elif self._state is _State.HEADERS:
            end = buf.find(b"\r\n\r\n")
            if buf.startswith(b"\r\n"):
                end, skip = 0, 2  # a part without headers
            else:
                skip = 4
            if end < 0:
                # over the limit only once the blank line can no longer start within it (a read may
                # have ended inside it): the same verdict however the body is cut into reads
                if len(buf) > self.max_header_bytes + 3:
                    raise LimitError(f"part headers longer than {self.max_header_bytes} bytes")
                return
            if end > self.max_header_bytes:
                raise LimitError(f"part headers longer than {self.max_header_bytes} bytes")
            headers = self._headers(bytes(buf[:end]))
            del buf[:end + skip]
            self._part_size = 0
            events.append(PartStarted(headers))
            self._state = _State.BODY
        elif self._state is _State.BODY:
            found = buf.find(self.delimiter)
            if found < 0:
                emit = len(buf) - (len(self.delimiter) - 1)
                if emit > 0:
                    self._data(events, bytes(buf[:emit]))
                    del buf[:emit]
                return
            if found:
                self._data(events, bytes(buf[:found]))
            del buf[:found + len(self.delimiter)]
            events.append(PartEnded(self._part_size))
            self._state = _State.AFTER_DELIMITER

    def _data(self, events: list[Event], data: bytes) -> None:
        self._part_size += len(data)
        if self._part_size > self.max_part_bytes:
            raise LimitError(f"a part is larger than {self.max_part_bytes} bytes")
        events.append(PartData(data))

    @staticmethod
    def _headers(raw: bytes) -> dict[str, str]:
        headers: dict[str, str] = {}
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise MultipartError("part headers are not ASCII") from None
        for line in text.split("\r\n"):
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip() or not all(33 <= ord(c) <= 126 for c in name):
                raise MultipartError("a part header line is not `Name: value`")
            headers[name.lower()] = value.strip()
        return headers
