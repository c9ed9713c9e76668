"""Decoder bugs the fuzz run found, as readable tests (the raw inputs are in crashers/)."""

from __future__ import annotations

import io
import struct

import pytest
from pydicom import dcmwrite

from meshnode.dicom.errors import DicomError
from meshnode.dicom.layout import plan_instance

from meshnode.storage.users import MemoryUserStore
from meshnode.web.auth import bearer_or_basic
from meshnode.web.multipart import MultipartError, MultipartParser, PartData, PartStarted
from protocol.errors import LimitError
from tests.meshnode.dicom.helpers import minimal_dataset
from tests.meshnode.web.asgi import call
from tests.meshnode.web.test_app_auth import Clock, make_app


@pytest.mark.parametrize("header", ["Basic \x9c\xa7\xb1\x93", "Basic dXNlcjp0b2tlbg\xe9=", "basic \xff"])
def test_basic_credentials_with_non_ascii_text_are_no_token(header: str) -> None:
    """Found by http_auth_headers: base64 of non-ASCII text raised a plain ValueError (an HTTP 500
    that skipped the failed-authentication count) instead of giving no token."""
    assert bearer_or_basic(header) is None


async def test_non_ascii_basic_credentials_are_a_failed_login_not_a_server_error() -> None:
    """The same bug through the web app: 401 and a counted failure (the brute-force accounting),
    where the ValueError escaped the app before."""
    app, _ = make_app(MemoryUserStore(), Clock())
    reply = await call(app, "GET", "/read/x", headers={"Authorization": "Basic \u00e9t\u00e9=="})
    assert reply.status == 401 and app.stats.auth_failures == 1


def _parts(body: bytes, step: int, max_header_bytes: int = 8192) -> list[tuple[dict[str, str], bytes]]:
    parser = MultipartParser(b"BOUNDARY", max_part_bytes=1024, max_parts=8, max_header_bytes=max_header_bytes)
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


@pytest.mark.parametrize("vr", [b"U\x00", b"X\x01", b"Q\x7f"])
@pytest.mark.parametrize("tag", [0x00280011, 0x00100010, 0x0020000D])
def test_a_listed_attribute_with_an_unknown_vr_is_a_dicom_error_or_ignored(vr: bytes, tag: int) -> None:
    """Found by dicom_ingest_scan: a listed attribute (here Columns, Patient's Name or Study UID)
    with an unknown explicit VR and no value made pydicom raise NotImplementedError from inside
    read_attributes (its get_item performs a 'deferred read' of any value it holds as None)."""
    ds = minimal_dataset()
    ds.add_new(tag, "LO", None)  # an empty element, in tag order; its VR bytes are replaced below
    out = io.BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    empty = struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, b"LO", 0)
    assert out.getvalue().count(empty) == 1
    data = out.getvalue().replace(empty, empty[:4] + vr + b"\x00\x00")
    try:
        plan = plan_instance(data)
    except DicomError:
        return
    assert plan.attributes.columns is None and plan.attributes.patient_name == ""


@pytest.mark.parametrize("step", [1, 7, 64, 10_000])
def test_the_preamble_limit_does_not_depend_on_how_the_body_is_read(step: int) -> None:
    """Found by stow_multipart: a preamble longer than the limit was refused when it arrived in
    small reads but accepted when the delimiter came in the same read."""
    for preamble, refused in ((b"x" * 8192, False), (b"x" * 8193, True)):
        body = preamble + b"\r\n--BOUNDARY\r\n\r\npart\r\n--BOUNDARY--"
        if refused:
            with pytest.raises(MultipartError, match="no multipart boundary"):
                _parts(body, step)
        else:
            assert _parts(body, step) == [({}, b"part")]


@pytest.mark.parametrize("step", [1, 3, 6, 7, 10_000])
def test_the_part_header_limit_does_not_depend_on_how_the_body_is_read(step: int) -> None:
    """Found by stow_multipart: headers within the limit were refused when a read ended inside the
    blank line that ends them (the limit was checked against the buffered bytes, terminator included)."""
    parser_limit = 64
    for size, refused in ((parser_limit, False), (parser_limit + 1, True)):
        header = b"X-Pad: " + b"p" * (size - len(b"X-Pad: "))
        body = b"--BOUNDARY\r\n" + header + b"\r\n\r\npart\r\n--BOUNDARY--"
        if refused:
            with pytest.raises(LimitError, match="part headers longer"):
                _parts(body, step, max_header_bytes=parser_limit)
        else:
            assert _parts(body, step, max_header_bytes=parser_limit) == [({"x-pad": header[7:].decode()}, b"part")]


@pytest.mark.parametrize("step", [1, 5, 10_000])
def test_the_transport_padding_limit_does_not_depend_on_how_the_body_is_read(step: int) -> None:
    """Found by reading the parser after the two limits above: padding after a boundary was refused
    past 80 bytes when it arrived alone in the buffer, accepted at any length when its CRLF came along."""
    for padding, refused in ((80, False), (81, True)):
        body = b"--BOUNDARY" + b" " * padding + b"\r\n\r\npart\r\n--BOUNDARY--"
        if refused:
            with pytest.raises(MultipartError, match="garbage after a multipart boundary"):
                _parts(body, step)
        else:
            assert _parts(body, step) == [({}, b"part")]
