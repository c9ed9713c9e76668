"""Byte-range parsing (meshnode.web.byte_range): pure, against a model of RFC 9110 §14 and hostile text."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshnode.web.byte_range import MAX_HEADER, ByteRange, RangeNotSatisfiable, wanted_range

sizes = st.integers(min_value=0, max_value=10**15)


@given(sizes, st.integers(min_value=0, max_value=10**16), st.integers(min_value=0, max_value=10**16))
def test_first_last_matches_the_rfc(size: int, first: int, last: int) -> None:
    header = f"bytes={first}-{last}"
    if last < first:
        assert wanted_range(header, size) is None  # invalid: ignored
    elif first >= size:
        with pytest.raises(RangeNotSatisfiable):
            wanted_range(header, size)
    else:
        assert wanted_range(header, size) == ByteRange(first, min(last + 1, size), size)


@given(sizes, st.integers(min_value=0, max_value=10**16))
def test_open_ended_and_suffix(size: int, n: int) -> None:
    if n >= size:
        with pytest.raises(RangeNotSatisfiable):
            wanted_range(f"bytes={n}-", size)
    else:
        assert wanted_range(f"bytes={n}-", size) == ByteRange(n, size, size)
    if n == 0 or size == 0:
        with pytest.raises(RangeNotSatisfiable):
            wanted_range(f"bytes=-{n}", size)
    else:
        assert wanted_range(f"bytes=-{n}", size) == ByteRange(size - min(n, size), size, size)


def _inside_nothing_or_416(header: str, size: int) -> None:
    try:
        got = wanted_range(header, size)
    except RangeNotSatisfiable as exc:
        assert exc.size == size
        return
    if got is not None:
        assert 0 <= got.start < got.stop <= size and got.size == size
        assert got.content_range == f"bytes {got.start}-{got.stop - 1}/{size}"


@given(st.text(max_size=300), sizes)
def test_any_text_gives_a_range_inside_the_body_nothing_or_416(header: str, size: int) -> None:
    _inside_nothing_or_416(header, size)


@given(st.text(alphabet="0123456789-=, bytesBYTES\t+x", max_size=60), sizes)
def test_range_shaped_text_never_escapes_the_body(header: str, size: int) -> None:
    _inside_nothing_or_416(header, size)


def test_huge_numbers_are_not_parsed_into_huge_ints() -> None:
    big = "9" * (MAX_HEADER - 10)
    with pytest.raises(RangeNotSatisfiable):
        wanted_range(f"bytes={big}-", 1000)
    assert wanted_range(f"bytes=0-{big}", 1000) == ByteRange(0, 1000, 1000)
    assert wanted_range(f"bytes=-{big}", 1000) == ByteRange(0, 1000, 1000)
    assert wanted_range(f"bytes={big}-5", 1000) is None  # last < first
    assert wanted_range("bytes=" + "9" * (MAX_HEADER + 1) + "-", 1000) is None  # over-long: ignored


def test_several_ranges_and_other_units_are_ignored() -> None:
    for header in ("bytes=0-1,3-4", "bytes=0-1,", "bytes=,0-1", "pages=1-2", "bytes", "=0-1", "bytes=-", "bytes=1"):
        assert wanted_range(header, 100) is None, header


def test_if_range() -> None:
    assert wanted_range("bytes=0-9", 100, '"v1"', '"v1"') == ByteRange(0, 10, 100)
    assert wanted_range("bytes=0-9", 100, '"v2"', '"v1"') is None
    assert wanted_range("bytes=0-9", 100, 'W/"v1"', 'W/"v1"') is None  # a weak tag never matches (strong compare)
    assert wanted_range("bytes=0-9", 100, "Sat, 05 Dec 2026 10:00:00 GMT", '"v1"') is None
    assert wanted_range("bytes=999-", 100, '"v2"', '"v1"') is None  # not 416: the whole current body
