"""Deterministic CBOR (RFC 8949 section 4.2) for everything dicom-mesh puts on the wire.

The subset is deliberately small: unsigned and negative integers (64-bit),
byte strings, UTF-8 text, arrays, maps with text or integer keys, true,
false and null. No floats, no tags, no indefinite lengths.

Encoding is always deterministic: shortest-form heads, map keys sorted by
the bytewise order of their encodings. Decoding untrusted bytes is strict:
each call uses a fresh decoder, nesting is limited, every declared length is
checked against the bytes that remain before anything is allocated, and any
encoding that is not the deterministic one (a long-form head, unsorted or
duplicate map keys, an indefinite length) is refused. A decoded item therefore
always re-encodes to exactly the bytes it came from.
"""

from __future__ import annotations

import struct
from typing import TypeAlias, Union

from protocol.errors import DecodeError, LimitError, LocalProtocolError, NonCanonicalError

CborKey: TypeAlias = Union[str, int]
CborValue: TypeAlias = Union[
    None, bool, int, bytes, str, list["CborValue"], dict[CborKey, "CborValue"]
]

DEFAULT_MAX_DEPTH = 16
DEFAULT_MAX_ITEMS = 1_000_000

_UINT64_MAX = (1 << 64) - 1
_TAG_NAMES = {28: "shared-reference (tag 28)", 29: "shared-reference (tag 29)"}


def _head(major: int, value: int) -> bytes:
    mt = major << 5
    if value < 24:
        return bytes((mt | value,))
    if value < 0x100:
        return bytes((mt | 24, value))
    if value < 0x10000:
        return bytes((mt | 25,)) + struct.pack(">H", value)
    if value < 0x100000000:
        return bytes((mt | 26,)) + struct.pack(">I", value)
    return bytes((mt | 27,)) + struct.pack(">Q", value)


def byte_string_head(length: int) -> bytes:
    """The head of a byte string of `length` bytes (what precedes its content in an encoding)."""
    if not 0 <= length <= _UINT64_MAX:
        raise LocalProtocolError("byte string length out of range")
    return _head(2, length)


def _encode_into(out: bytearray, value: CborValue, depth: int) -> None:
    if depth > DEFAULT_MAX_DEPTH * 4:
        raise LocalProtocolError("value nested too deeply to encode")
    if value is None:
        out.append(0xF6)
    elif value is True:
        out.append(0xF5)
    elif value is False:
        out.append(0xF4)
    elif isinstance(value, int):
        if 0 <= value <= _UINT64_MAX:
            out += _head(0, value)
        elif -(1 << 64) <= value < 0:
            out += _head(1, -1 - value)
        else:
            raise LocalProtocolError(f"integer {value} does not fit in 64 bits")
    elif isinstance(value, bytes):
        out += _head(2, len(value))
        out += value
    elif isinstance(value, str):
        try:
            raw = value.encode("utf-8")
        except UnicodeEncodeError:
            raise LocalProtocolError("text with a lone surrogate cannot be encoded as UTF-8") from None
        out += _head(3, len(raw))
        out += raw
    elif isinstance(value, list):
        out += _head(4, len(value))
        for item in value:
            _encode_into(out, item, depth + 1)
    elif isinstance(value, dict):
        entries: list[tuple[bytes, CborValue]] = []
        for key, item in value.items():
            if isinstance(key, bool) or not isinstance(key, (str, int)):
                raise LocalProtocolError(f"map key {key!r} is not text or integer")
            key_buf = bytearray()
            _encode_into(key_buf, key, depth + 1)
            entries.append((bytes(key_buf), item))
        entries.sort(key=lambda e: e[0])
        out += _head(5, len(entries))
        for key_bytes, item in entries:
            out += key_bytes
            _encode_into(out, item, depth + 1)
    else:
        raise LocalProtocolError(f"type {type(value).__name__} cannot be encoded")


def encode(value: CborValue) -> bytes:
    """Deterministic encoding of value (RFC 8949 section 4.2.1)."""
    out = bytearray()
    _encode_into(out, value, 0)
    return bytes(out)


class _Decoder:
    """One-shot strict decoder; a fresh instance per message."""

    def __init__(self, data: bytes, max_depth: int, max_items: int) -> None:
        self.data = data
        self.pos = 0
        self.max_depth = max_depth
        self.items_left = max_items

    def _take(self, n: int) -> bytes:
        if n > len(self.data) - self.pos:
            raise DecodeError(
                f"truncated: need {n} bytes at offset {self.pos}, {len(self.data) - self.pos} remain"
            )
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def _argument(self, info: int, major: int) -> int:
        if info < 24:
            return info
        if info == 31:
            raise DecodeError(f"indefinite-length item (major type {major}) at offset {self.pos - 1}")
        if info > 27:
            raise DecodeError(f"reserved additional information {info} at offset {self.pos - 1}")
        size = 1 << (info - 24)
        raw = self._take(size)
        value = int.from_bytes(raw, "big")
        minimum = 24 if size == 1 else 1 << (8 * (size // 2))
        if value < minimum:
            raise NonCanonicalError(f"non-shortest head at offset {self.pos - size - 1}")
        return value

    def _count_item(self) -> None:
        self.items_left -= 1
        if self.items_left < 0:
            raise LimitError("too many items in one message")

    def item(self, depth: int) -> CborValue:
        if depth > self.max_depth:
            raise LimitError(f"nesting deeper than {self.max_depth}")
        self._count_item()
        initial = self._take(1)[0]
        major, info = initial >> 5, initial & 0x1F
        if major == 7:
            return self._simple(info)
        if major == 6:
            if info == 31:
                raise DecodeError("break code outside an indefinite-length item")
            tag = self._argument(info, major)
            raise DecodeError(f"tag {_TAG_NAMES.get(tag, str(tag))} not allowed")
        arg = self._argument(info, major)
        if major == 0:
            return arg
        if major == 1:
            return -1 - arg
        if major in (2, 3):
            raw = self._take(arg)
            if major == 2:
                return raw
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DecodeError(f"invalid UTF-8 in text string: {exc.reason}") from None
        remaining = len(self.data) - self.pos
        if major == 4:
            if arg > remaining:
                raise DecodeError(f"array of {arg} items declared with {remaining} bytes left")
            return [self.item(depth + 1) for _ in range(arg)]
        # major == 5
        if arg * 2 > remaining:
            raise DecodeError(f"map of {arg} pairs declared with {remaining} bytes left")
        result: dict[CborKey, CborValue] = {}
        previous: bytes | None = None
        for _ in range(arg):
            start = self.pos
            key = self.item(depth + 1)
            key_bytes = self.data[start : self.pos]
            if isinstance(key, bool) or not isinstance(key, (str, int)):
                raise DecodeError("map key must be text or integer")
            if previous is not None:
                if key_bytes == previous:
                    raise DecodeError(f"duplicate map key {key!r}")
                if key_bytes < previous:
                    raise NonCanonicalError(f"map keys not in canonical order at {key!r}")
            previous = key_bytes
            result[key] = self.item(depth + 1)
        return result

    def _simple(self, info: int) -> CborValue:
        if info == 20:
            return False
        if info == 21:
            return True
        if info == 22:
            return None
        if info == 31:
            raise DecodeError("break code outside an indefinite-length item")
        if info in (25, 26, 27):
            raise DecodeError("floating-point values not allowed")
        raise DecodeError(f"simple value {info} not allowed")


def decode(
    data: bytes, *, max_depth: int = DEFAULT_MAX_DEPTH, max_items: int = DEFAULT_MAX_ITEMS
) -> CborValue:
    """Decode exactly one deterministic CBOR item from untrusted bytes."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError("expected bytes")
    decoder = _Decoder(bytes(data), max_depth, max_items)
    value = decoder.item(0)
    if decoder.pos != len(decoder.data):
        raise DecodeError(f"{len(decoder.data) - decoder.pos} trailing bytes after item")
    return value
