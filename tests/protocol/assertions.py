"""Test helpers: exact error-class assertions and a deliberately loose CBOR writer.

`raises_exactly` insists on the precise MeshError subclass (a NonCanonicalError
where a DecodeError is expected fails, and vice versa), because the class is
what becomes the wire error code.

`loose_encode` writes CBOR the strict codec would never produce (long-form
heads, map keys in a chosen order) so the decoder's refusals can be tested.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from protocol import cbor
from protocol.cbor import CborValue
from protocol.errors import MeshError


@contextmanager
def raises_exactly(
    cls: type[MeshError], match: str | None = None
) -> Iterator[pytest.ExceptionInfo[MeshError]]:
    """Like pytest.raises, but the exception must be exactly cls (not a subclass)."""
    with pytest.raises(MeshError, match=match) as info:
        yield info
    assert type(info.value) is cls, f"expected {cls.__name__}, got {type(info.value).__name__}: {info.value}"
    assert info.value.code == cls.code


def head(major: int, value: int, width: int = 0) -> bytes:
    """A CBOR head with a chosen argument width (0 = inline, else 1, 2, 4 or 8 bytes)."""
    if width == 0:
        assert value < 24
        return bytes((major << 5 | value,))
    info = {1: 24, 2: 25, 4: 26, 8: 27}[width]
    fmt = {1: ">B", 2: ">H", 4: ">I", 8: ">Q"}[width]
    return bytes((major << 5 | info,)) + struct.pack(fmt, value)


def shortest_width(value: int) -> int:
    if value < 24:
        return 0
    if value < 0x100:
        return 1
    if value < 0x10000:
        return 2
    if value < 0x100000000:
        return 4
    return 8


KeyOrder = Callable[[list[tuple[bytes, bytes]]], list[tuple[bytes, bytes]]]


def canonical_order(pairs: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return sorted(pairs)


def reversed_order(pairs: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return sorted(pairs, reverse=True)


def loose_encode(
    value: CborValue, *, int_width: int | None = None, key_order: KeyOrder = canonical_order
) -> bytes:
    """Encode value; integers get head width int_width (when it fits), maps use key_order."""

    def width_for(arg: int) -> int:
        short = shortest_width(arg)
        if int_width is None or int_width < short or (int_width == 0 and arg >= 24):
            return short
        return int_width

    if value is None or isinstance(value, bool) or isinstance(value, (bytes, str)):
        return cbor.encode(value)
    if isinstance(value, int):
        if value >= 0:
            return head(0, value, width_for(value))
        return head(1, -1 - value, width_for(-1 - value))
    if isinstance(value, list):
        return head(4, len(value), shortest_width(len(value))) + b"".join(
            loose_encode(v, int_width=int_width, key_order=key_order) for v in value
        )
    assert isinstance(value, dict)
    pairs = [
        (loose_encode(k, int_width=int_width, key_order=key_order), loose_encode(v, int_width=int_width, key_order=key_order))
        for k, v in value.items()
    ]
    return head(5, len(pairs), shortest_width(len(pairs))) + b"".join(k + v for k, v in key_order(pairs))


def map_of_encoded(pairs: list[tuple[CborValue, bytes]]) -> bytes:
    """A map whose values are already-encoded bytes, keys in the given order."""
    return head(5, len(pairs), shortest_width(len(pairs))) + b"".join(cbor.encode(k) + v for k, v in pairs)
