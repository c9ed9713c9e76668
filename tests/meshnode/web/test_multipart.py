"""The STOW-RS multipart parser: round trips in any chunking, and a bad-input corpus."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshnode.web.multipart import (
    MultipartError,
    MultipartParser,
    PartData,
    PartEnded,
    PartStarted,
    check_boundary,
    content_type_params,
)
from protocol.errors import LimitError

BOUNDARY = b"0f3cf5c0-70e0-41ef-baef-c6f9f65ec3e1"


def encode(parts: list[bytes], boundary: bytes = BOUNDARY, leading_crlf: bool = True) -> bytes:
    """Like dicomweb-client's encoder: CRLF before every delimiter, headers, closing delimiter."""
    out = b""
    for i, p in enumerate(parts):
        out += (b"\r\n" if leading_crlf or i else b"") + b"--" + boundary + b"\r\nContent-Type: application/dicom\r\n\r\n" + p
    return out + b"\r\n--" + boundary + b"--"


def parse(body: bytes, chunks: list[int] | None = None, **limits: int) -> list[tuple[dict[str, str], bytes]]:
    parser = MultipartParser(BOUNDARY, max_part_bytes=limits.get("max_part_bytes", 1 << 20),
                             max_parts=limits.get("max_parts", 100))
    events = []
    pos = 0
    for size in chunks or [len(body)]:
        events += parser.feed(body[pos:pos + size])
        pos += size
    events += parser.feed(body[pos:])
    events += parser.close()
    parts: list[tuple[dict[str, str], bytes]] = []
    current = b""
    for e in events:
        if isinstance(e, PartStarted):
            parts.append((e.headers, b""))
            current = b""
        elif isinstance(e, PartData):
            current += e.data
        elif isinstance(e, PartEnded):
            assert e.size == len(current)
            parts[-1] = (parts[-1][0], current)
    return parts


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=6), st.lists(st.integers(1, 64), max_size=40),
       st.booleans())
def test_round_trip_any_chunking(parts: list[bytes], chunks: list[int], leading_crlf: bool) -> None:
    got = parse(encode(parts, leading_crlf=leading_crlf), chunks)
    assert [p for _, p in got] == parts
    assert all(h == {"content-type": "application/dicom"} for h, _ in got)


def test_data_that_looks_almost_like_a_boundary() -> None:
    tricky = b"\r\n--" + BOUNDARY[:-1] + b"x and \r\n-- more \r\n"
    assert [p for _, p in parse(encode([tricky, b"b"]), [3] * 200)] == [tricky, b"b"]


def test_preamble_epilogue_and_padding() -> None:
    body = (b"this is a preamble\r\n--" + BOUNDARY + b"  \t\r\nContent-Type: application/dicom\r\n\r\nabc\r\n--"
            + BOUNDARY + b"--\r\nepilogue ignored")
    assert parse(body) == [({"content-type": "application/dicom"}, b"abc")]


@pytest.mark.parametrize("body, why", [
    (b"", "no opening boundary"),
    (b"--" + BOUNDARY + b"\r\nContent-Type: application/dicom\r\n\r\nabc", "no closing boundary"),
    (b"--" + BOUNDARY + b"\r\nContent-Type: application/dicom\r\n", "inside a part's headers"),
    (b"--" + BOUNDARY, "right after a boundary"),
])
def test_truncated_bodies(body: bytes, why: str) -> None:
    with pytest.raises(MultipartError, match=why):
        parse(body)


def test_wrong_boundary_is_refused_without_buffering_the_body() -> None:
    body = encode([b"x" * 100_000], boundary=b"another-boundary")
    parser = MultipartParser(BOUNDARY, max_part_bytes=1 << 20, max_parts=10)
    with pytest.raises(MultipartError, match="wrong boundary"):
        for i in range(0, len(body), 1000):
            parser.feed(body[i:i + 1000])


@pytest.mark.parametrize("body", [
    b"--" + BOUNDARY + b"garbage\r\n\r\nx\r\n--" + BOUNDARY + b"--",
    b"--" + BOUNDARY + b"\r\nNo colon here\r\n\r\nx\r\n--" + BOUNDARY + b"--",
    b"--" + BOUNDARY + b"\r\n Bad: name\r\n\r\nx\r\n--" + BOUNDARY + b"--",
    b"--" + BOUNDARY + b"\r\nContent-Type: \xff\r\n\r\nx\r\n--" + BOUNDARY + b"--",
])
def test_malformed_framing(body: bytes) -> None:
    with pytest.raises(MultipartError):
        parse(body)


def test_limits() -> None:
    with pytest.raises(LimitError, match="larger than"):
        parse(encode([b"x" * 2000]), max_part_bytes=1000)
    with pytest.raises(LimitError, match="more than 3 parts"):
        parse(encode([b"a"] * 4), max_parts=3)
    huge_headers = b"--" + BOUNDARY + b"\r\nX: " + b"y" * 10_000 + b"\r\n\r\nx\r\n--" + BOUNDARY + b"--"
    with pytest.raises(LimitError, match="headers longer"):
        parse(huge_headers)


def test_content_type_and_boundary_checks() -> None:
    kind, params = content_type_params('multipart/related; type="application/dicom"; boundary="a;b=c"')
    assert kind == "multipart/related" and params == {"type": "application/dicom", "boundary": "a;b=c"}
    assert check_boundary("0f3cf5c0-70e0") == b"0f3cf5c0-70e0"
    for bad in ("", "x" * 71, "ends with space ", "quote\"inside", "\u00e9"):
        with pytest.raises(MultipartError):
            check_boundary(bad)
