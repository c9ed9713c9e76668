"""Decoder bugs the fuzz run found, as readable tests (the raw inputs are in crashers/)."""

from __future__ import annotations

import pytest

from meshnode.web.auth import bearer_or_basic
from meshnode.web.multipart import MultipartParser, PartData, PartStarted


@pytest.mark.parametrize("header", ["Basic \x9c\xa7\xb1\x93", "Basic dXNlcjp0b2tlbg\xe9=", "basic \xff"])
def test_basic_credentials_with_non_ascii_text_are_no_token(header: str) -> None:
    """Found by http_auth_headers: base64 of non-ASCII text raised a plain ValueError (an HTTP 500
    that skipped the failed-authentication count) instead of giving no token."""
    assert bearer_or_basic(header) is None


def _parts(body: bytes, step: int) -> list[tuple[dict[str, str], bytes]]:
    parser = MultipartParser(b"BOUNDARY", max_part_bytes=1024, max_parts=8)
    events = []
    for start in range(0, len(body), step):
        events += parser.feed(body[start:start + step])
    events += parser.close()
    parts: list[tuple[dict[str, str], bytes]] = []
    for event in events:
        if isinstance(event, PartStarted):
            parts.append((event.headers, b""))
        elif isinstance(event, PartData):
            parts[-1] = (parts[-1][0], parts[-1][1] + event.data)
    return parts


# A dash-boundary in the middle of a preamble line is not a delimiter (RFC 2046: it must start the
# body or follow a CRLF); in this body the only delimiter is the closing one: no parts.
MID_LINE = b"preamble text DICM--BOUNDARY\r\n\r\nsmuggled\r\n--BOUNDARY--"


@pytest.mark.parametrize("step", [1, 5, 7, 13, len(MID_LINE)])
def test_a_dash_boundary_inside_a_preamble_line_never_opens_the_body(step: int) -> None:
    """Found by stow_multipart: when a read ended just before `--BOUNDARY` inside the preamble,
    the parser took it as the opening delimiter, so the parts depended on how TCP cut the body."""
    assert _parts(MID_LINE, step) == []


@pytest.mark.parametrize("step", [1, 2, 3, 5, 11, 64])
def test_parts_do_not_depend_on_how_the_body_is_read(step: int) -> None:
    body = (b"preamble DICM--BOUNDARY-- x\r\n--BOUNDARY\r\nContent-Type: application/dicom\r\n\r\n"
            b"first\r\n--BOUNDARY\r\n\r\nsecond\r\n--BOUNDARY--")
    assert _parts(body, step) == _parts(body, len(body)) == [
        ({"content-type": "application/dicom"}, b"first"), ({}, b"second")]
