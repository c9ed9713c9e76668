"""Exchange protocol messages: exact shapes, limits, a bad-input corpus, response sequencing, have-bitmaps."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import cbor
from protocol import exchange_messages as xm
from protocol.cbor import CborValue
from protocol.cid import CID
from protocol.errors import (
    CertificateRevokedError,
    DecodeError,
    LimitError,
    LocalProtocolError,
    MeshError,
    NonCanonicalError,
    RemoteProtocolError,
    SchemaError,
    UnauthorisedError,
    UnexpectedFrameError,
)
from protocol.framing import ABSOLUTE_MAX_FRAME, encode_frame
from protocol.manifest import MAX_MANIFEST_BYTES

from tests.protocol import factories as f
from tests.protocol.assertions import loose_encode, raises_exactly, reversed_order
from tests.protocol.strategies import cids, wire_text

C1, C2, C3 = (f.block_cid(n) for n in (1, 2, 3))
MID = CID.of(b"manifest")
CID_BYTES = C1.to_bytes()


def test_protocol_ids_and_frame_limits() -> None:
    assert set(xm.FRAME_LIMITS) == {
        "/dicom-mesh/hello/1.0.0", "/dicom-mesh/announce/1.0.0", "/dicom-mesh/have/1.0.0",
        "/dicom-mesh/blocks/1.0.0", "/dicom-mesh/receipt/1.0.0", "/dicom-mesh/recall/1.0.0",
        "/dicom-mesh/forward-report/1.0.0",
    }
    for limits in xm.FRAME_LIMITS.values():
        assert 0 < limits.request <= ABSOLUTE_MAX_FRAME and 0 < limits.response <= ABSOLUTE_MAX_FRAME
    cert = b"c" * xm.MAX_CERT_BYTES
    worst_refusal = xm.Refused(9999, "\U0001f600" * xm.MAX_MESSAGE_CHARS)
    biggest: dict[str, tuple[list[bytes], list[bytes]]] = {
        xm.HELLO_PROTOCOL: ([xm.encode_request(xm.Hello(cert))], [xm.encode_response(xm.Hello(cert))]),
        xm.ANNOUNCE_PROTOCOL: ([xm.encode_request(xm.Announce(b"m" * MAX_MANIFEST_BYTES, cert))], []),
        xm.HAVE_PROTOCOL: (
            [xm.encode_request(xm.HaveRequest(MID))],
            [xm.encode_response(xm.HaveReply(b"\xff" * xm.MAX_BITMAP_BYTES))],
        ),
        xm.BLOCKS_PROTOCOL: (
            [xm.encode_request(xm.BlockRequest(MID, tuple(f.block_cid(i) for i in range(xm.MAX_REQUEST_BLOCKS))))],
            [xm.encode_response(xm.BlockData(C1, b"d" * xm.MAX_BLOCK_BYTES))],
        ),
        xm.RECEIPT_PROTOCOL: ([xm.encode_request(xm.ReceiptDelivery(b"r" * xm.MAX_RECEIPT_BYTES, cert))], []),
        xm.RECALL_PROTOCOL: ([xm.encode_request(xm.RecallDelivery(b"r" * xm.MAX_RECALL_BYTES, cert))], []),
        xm.FORWARD_REPORT_PROTOCOL: (
            [xm.encode_request(xm.ForwardReportDelivery(b"r" * xm.MAX_FORWARD_REPORT_BYTES, cert))], []),
    }
    for protocol_id, (requests, responses) in biggest.items():
        limits = xm.FRAME_LIMITS[protocol_id]
        assert all(len(r) <= limits.request for r in requests), protocol_id
        assert all(len(r) <= limits.response for r in responses + [xm.encode_response(worst_refusal)]), protocol_id
    assert len(xm.encode_response(worst_refusal)) <= xm.REPLY_MAX_FRAME
    assert xm.decode_announce(biggest[xm.ANNOUNCE_PROTOCOL][0][0]).manifest == b"m" * MAX_MANIFEST_BYTES


REQUESTS: list[tuple[xm.Request, dict[str, CborValue], Callable[[bytes], object]]] = [
    (xm.Hello(b"cert"), {"certificate": b"cert"}, xm.decode_hello),
    (xm.Announce(b"man", b"cert"), {"manifest": b"man", "certificate": b"cert"}, xm.decode_announce),
    (xm.HaveRequest(MID), {"manifest": MID.to_bytes()}, xm.decode_have_request),
    (
        xm.BlockRequest(MID, (C2, C1)),
        {"manifest": MID.to_bytes(), "blocks": [C2.to_bytes(), C1.to_bytes()]},
        xm.decode_block_request,
    ),
    (xm.ReceiptDelivery(b"r", b"c"), {"receipt": b"r", "certificate": b"c"}, xm.decode_receipt_delivery),
    (xm.ForwardReportDelivery(b"r", b"c"), {"report": b"r", "certificate": b"c"},
     xm.decode_forward_report_delivery),
    (xm.RecallDelivery(b"r", b"c"), {"recall": b"r", "certificate": b"c"}, xm.decode_recall_delivery),
]


@pytest.mark.parametrize(("message", "wire", "decode"), REQUESTS, ids=[type(r[0]).__name__ for r in REQUESTS])
def test_request_wire_shapes(message: xm.Request, wire: dict[str, CborValue], decode: Callable[[bytes], object]) -> None:
    assert xm.encode_request(message) == cbor.encode(wire)  # type: ignore[arg-type]
    assert decode(cbor.encode(wire)) == message  # type: ignore[arg-type]


RESPONSES: list[tuple[xm.Response, dict[str, CborValue], Callable[[bytes], object]]] = [
    (xm.Hello(b"cert"), {"ok": True, "certificate": b"cert"}, xm.decode_hello_reply),
    (xm.Ack(), {"ok": True}, xm.decode_ack_reply),
    (xm.Refused(404, "revoked"), {"ok": False, "code": 404, "message": "revoked"}, xm.decode_ack_reply),
    (xm.HaveReply(b"\xa0"), {"ok": True, "have": b"\xa0"}, xm.decode_have_reply),
    (xm.BlockData(C1, b"data"), {"ok": True, "cid": CID_BYTES, "data": b"data"}, xm.decode_block_frame),
    (xm.BlockAbsent(C1), {"ok": True, "cid": CID_BYTES, "data": None}, xm.decode_block_frame),
]


@pytest.mark.parametrize(("message", "wire", "decode"), RESPONSES, ids=[type(r[0]).__name__ for r in RESPONSES])
def test_response_wire_shapes(message: xm.Response, wire: dict[str, CborValue], decode: Callable[[bytes], object]) -> None:
    assert xm.encode_response(message) == cbor.encode(wire)  # type: ignore[arg-type]
    assert decode(cbor.encode(wire)) == message  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "decode", [xm.decode_hello_reply, xm.decode_ack_reply, xm.decode_have_reply, xm.decode_block_frame]
)
def test_every_reply_decoder_accepts_a_refusal(decode: Callable[[bytes], object]) -> None:
    assert decode(xm.encode_response(xm.UNAUTHORISED)) == xm.UNAUTHORISED


def test_refusals() -> None:
    refused = xm.Refused.from_error(CertificateRevokedError("serial\nrevoked\x00" + "x" * 600))
    assert refused.code == 404 and len(refused.message) == 512
    assert "\n" not in refused.message and "\x00" not in refused.message
    assert xm.decode_ack_reply(xm.encode_response(refused)) == refused
    error = refused.to_error()
    assert type(error) is CertificateRevokedError and str(error).startswith("peer refused: serial revoked")
    assert type(xm.Refused(9876, "?").to_error()) is RemoteProtocolError
    # The uniform refusal carries nothing but "unauthorised".
    assert xm.UNAUTHORISED == xm.Refused(UnauthorisedError.code, "not authorised")


_REF: dict[str | int, CborValue] = {"ok": False, "code": 600, "message": "no"}
BAD: list[tuple[str, Callable[[bytes], object], CborValue, type[MeshError]]] = [
    # hello
    ("hello not a map", xm.decode_hello, [b"c"], SchemaError),
    ("hello missing certificate", xm.decode_hello, {}, SchemaError),
    ("hello certificate text", xm.decode_hello, {"certificate": "c"}, SchemaError),
    ("hello certificate too big", xm.decode_hello, {"certificate": b"c" * 4097}, LimitError),
    ("hello extra field", xm.decode_hello, {"certificate": b"c", "x": 1}, SchemaError),
    ("hello with ok", xm.decode_hello, {"certificate": b"c", "ok": True}, SchemaError),
    ("hello reply without ok", xm.decode_hello_reply, {"certificate": b"c"}, SchemaError),
    ("hello reply ok missing certificate", xm.decode_hello_reply, {"ok": True}, SchemaError),
    ("hello reply too big", xm.decode_hello_reply, {"ok": True, "certificate": b"c" * 4097}, LimitError),
    # announce
    ("announce missing certificate", xm.decode_announce, {"manifest": b"m"}, SchemaError),
    ("announce missing manifest", xm.decode_announce, {"certificate": b"c"}, SchemaError),
    ("announce manifest text", xm.decode_announce, {"manifest": "m", "certificate": b"c"}, SchemaError),
    ("announce certificate too big", xm.decode_announce, {"manifest": b"m", "certificate": b"c" * 4097}, LimitError),
    ("announce extra", xm.decode_announce, {"manifest": b"m", "certificate": b"c", "priority": "stat"}, SchemaError),
    # ack / refused
    ("ack not a map", xm.decode_ack_reply, True, SchemaError),
    ("ack ok not bool", xm.decode_ack_reply, {"ok": 1}, SchemaError),
    ("ack with junk", xm.decode_ack_reply, {"ok": True, "x": b""}, SchemaError),
    ("refused without message", xm.decode_ack_reply, {"ok": False, "code": 600}, SchemaError),
    ("refused code text", xm.decode_ack_reply, {"ok": False, "code": "600", "message": ""}, SchemaError),
    ("refused code too big", xm.decode_ack_reply, {"ok": False, "code": 10_000, "message": ""}, LimitError),
    ("refused negative code", xm.decode_ack_reply, {"ok": False, "code": -1, "message": ""}, LimitError),
    ("refused message too long", xm.decode_ack_reply, {"ok": False, "code": 1, "message": "m" * 513}, LimitError),
    ("refused control char", xm.decode_ack_reply, {"ok": False, "code": 1, "message": "a\rb"}, SchemaError),
    ("refused with payload", xm.decode_block_frame, {**_REF, "cid": CID_BYTES}, SchemaError),
    # have
    ("have request missing manifest", xm.decode_have_request, {}, SchemaError),
    ("have request short cid", xm.decode_have_request, {"manifest": CID_BYTES[:-1]}, SchemaError),
    ("have request long cid", xm.decode_have_request, {"manifest": CID_BYTES + b"\x00"}, SchemaError),
    ("have request cid wrong codec", xm.decode_have_request, {"manifest": b"\x01\x71" + CID_BYTES[2:]}, SchemaError),
    ("have request cid text", xm.decode_have_request, {"manifest": str(C1)}, SchemaError),
    ("have request extra", xm.decode_have_request, {"manifest": CID_BYTES, "blocks": []}, SchemaError),
    ("have reply missing bitmap", xm.decode_have_reply, {"ok": True}, SchemaError),
    ("have reply bitmap text", xm.decode_have_reply, {"ok": True, "have": "ff"}, SchemaError),
    ("have reply bitmap too big", xm.decode_have_reply, {"ok": True, "have": b"\x00" * 125_001}, LimitError),
    # blocks
    ("block request no blocks", xm.decode_block_request, {"manifest": CID_BYTES, "blocks": []}, SchemaError),
    ("block request 65 blocks", xm.decode_block_request,
     {"manifest": CID_BYTES, "blocks": [f.block_cid(i).to_bytes() for i in range(65)]}, LimitError),
    ("block request duplicate", xm.decode_block_request, {"manifest": CID_BYTES, "blocks": [CID_BYTES, CID_BYTES]}, SchemaError),
    ("block request short cid", xm.decode_block_request, {"manifest": CID_BYTES, "blocks": [CID_BYTES[:35]]}, SchemaError),
    ("block request blocks not array", xm.decode_block_request, {"manifest": CID_BYTES, "blocks": CID_BYTES}, SchemaError),
    ("block request missing manifest", xm.decode_block_request, {"blocks": [CID_BYTES]}, SchemaError),
    ("block request extra", xm.decode_block_request, {"manifest": CID_BYTES, "blocks": [CID_BYTES], "x": 0}, SchemaError),
    ("block request nested", xm.decode_block_request, {"manifest": CID_BYTES, "blocks": [[CID_BYTES]]}, SchemaError),
    ("block request too deep", xm.decode_block_request, {"manifest": CID_BYTES, "blocks": [[[[CID_BYTES]]]]}, LimitError),
    ("block frame missing data", xm.decode_block_frame, {"ok": True, "cid": CID_BYTES}, SchemaError),
    ("block frame missing cid", xm.decode_block_frame, {"ok": True, "data": b""}, SchemaError),
    ("block frame data text", xm.decode_block_frame, {"ok": True, "cid": CID_BYTES, "data": "d"}, SchemaError),
    ("block frame data false", xm.decode_block_frame, {"ok": True, "cid": CID_BYTES, "data": False}, SchemaError),
    ("block frame data too big", xm.decode_block_frame,
     {"ok": True, "cid": CID_BYTES, "data": b"\x00" * (xm.MAX_BLOCK_BYTES + 1)}, LimitError),
    ("block frame short cid", xm.decode_block_frame, {"ok": True, "cid": CID_BYTES[:10], "data": b""}, SchemaError),
    ("block frame extra", xm.decode_block_frame, {"ok": True, "cid": CID_BYTES, "data": b"", "more": True}, SchemaError),
    # receipt and recall
    ("receipt missing certificate", xm.decode_receipt_delivery, {"receipt": b"r"}, SchemaError),
    ("receipt too big", xm.decode_receipt_delivery, {"receipt": b"r" * 4097, "certificate": b""}, LimitError),
    ("receipt as recall", xm.decode_receipt_delivery, {"recall": b"r", "certificate": b""}, SchemaError),
    ("forward report too big", xm.decode_forward_report_delivery, {"report": b"r" * 4097, "certificate": b""},
     LimitError),
    ("forward report as receipt", xm.decode_forward_report_delivery, {"receipt": b"r", "certificate": b""},
     SchemaError),
    ("forward report extra", xm.decode_forward_report_delivery,
     {"report": b"r", "certificate": b"", "seq": 1}, SchemaError),
    ("recall too big", xm.decode_recall_delivery, {"recall": b"r" * 8193, "certificate": b""}, LimitError),
    ("recall certificate int", xm.decode_recall_delivery, {"recall": b"r", "certificate": 1}, SchemaError),
    ("recall extra", xm.decode_recall_delivery, {"recall": b"r", "certificate": b"", "receipt": b""}, SchemaError),
]


@pytest.mark.parametrize(("what", "decode", "wire", "error"), BAD, ids=[c[0] for c in BAD])
def test_bad_input(what: str, decode: Callable[[bytes], object], wire: CborValue, error: type[MeshError]) -> None:
    with raises_exactly(error):
        decode(cbor.encode(wire))


DECODERS: list[tuple[Callable[[bytes], object], bytes]] = [
    (xm.decode_hello, xm.encode_request(xm.Hello(b"cert"))),
    (xm.decode_hello_reply, xm.encode_response(xm.Hello(b"cert"))),
    (xm.decode_announce, xm.encode_request(xm.Announce(b"m", b"c"))),
    (xm.decode_ack_reply, xm.encode_response(xm.Refused(404, "no"))),
    (xm.decode_have_request, xm.encode_request(xm.HaveRequest(MID))),
    (xm.decode_have_reply, xm.encode_response(xm.HaveReply(b"\x80"))),
    (xm.decode_block_request, xm.encode_request(xm.BlockRequest(MID, (C1, C2)))),
    (xm.decode_block_frame, xm.encode_response(xm.BlockData(C1, b"data"))),
    (xm.decode_receipt_delivery, xm.encode_request(xm.ReceiptDelivery(b"r", b"c"))),
    (xm.decode_recall_delivery, xm.encode_request(xm.RecallDelivery(b"r", b"c"))),
]


@pytest.mark.parametrize(("decode", "data"), DECODERS, ids=[d.__name__ for d, _ in DECODERS])
def test_truncated_trailing_and_noncanonical(decode: Callable[[bytes], object], data: bytes) -> None:
    for cut in range(len(data)):
        with raises_exactly(DecodeError):
            decode(data[:cut])
    with raises_exactly(DecodeError):
        decode(data + b"\x00")
    value = cbor.decode(data)
    if isinstance(value, dict) and len(value) > 1:
        with raises_exactly(NonCanonicalError):
            decode(loose_encode(value, key_order=reversed_order))
    if isinstance(value, dict) and any(isinstance(v, int) and not isinstance(v, bool) for v in value.values()):
        with raises_exactly(NonCanonicalError):
            decode(loose_encode(value, int_width=8))


def test_block_request_refuses_bad_construction() -> None:
    with raises_exactly(LimitError):
        xm.BlockRequest(MID, ())
    with raises_exactly(SchemaError):
        xm.BlockRequest(MID, (C1, C2, C1))


# -- hypothesis round-trips -------------------------------------------------------

blobs = st.binary(max_size=300)
requests = st.one_of(
    st.builds(xm.Hello, blobs),
    st.builds(xm.Announce, blobs, blobs),
    st.builds(xm.HaveRequest, cids),
    st.builds(xm.BlockRequest, cids, st.lists(cids, min_size=1, max_size=xm.MAX_REQUEST_BLOCKS, unique=True).map(tuple)),
    st.builds(xm.ReceiptDelivery, blobs, blobs),
    st.builds(xm.RecallDelivery, blobs, blobs),
)
responses = st.one_of(
    st.builds(xm.Hello, blobs),
    st.just(xm.Ack()),
    st.builds(xm.Refused, st.integers(0, 9999), wire_text(xm.MAX_MESSAGE_CHARS)),
    st.builds(xm.HaveReply, blobs),
    st.builds(xm.BlockData, cids, blobs),
    st.builds(xm.BlockAbsent, cids),
)
REQUEST_DECODERS: dict[type, Callable[[bytes], object]] = {
    xm.Hello: xm.decode_hello, xm.Announce: xm.decode_announce, xm.HaveRequest: xm.decode_have_request,
    xm.BlockRequest: xm.decode_block_request, xm.ReceiptDelivery: xm.decode_receipt_delivery,
    xm.RecallDelivery: xm.decode_recall_delivery,
}
RESPONSE_DECODERS: dict[type, Callable[[bytes], object]] = {
    xm.Hello: xm.decode_hello_reply, xm.Ack: xm.decode_ack_reply, xm.Refused: xm.decode_ack_reply,
    xm.HaveReply: xm.decode_have_reply, xm.BlockData: xm.decode_block_frame, xm.BlockAbsent: xm.decode_block_frame,
}


@settings(max_examples=150, deadline=None)
@given(requests)
def test_requests_round_trip(message: xm.Request) -> None:
    data = xm.encode_request(message)
    assert REQUEST_DECODERS[type(message)](data) == message
    assert cbor.encode(cbor.decode(data)) == data


@settings(max_examples=150, deadline=None)
@given(responses)
def test_responses_round_trip(message: xm.Response) -> None:
    data = xm.encode_response(message)
    assert RESPONSE_DECODERS[type(message)](data) == message


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=120))
def test_decoders_raise_only_mesh_errors(data: bytes) -> None:
    for decode, _ in DECODERS:
        try:
            decode(data)
        except MeshError:
            pass


# -- blocks response sequencing ---------------------------------------------------


def reader(*cids_: CID) -> xm.BlockResponseReader:
    return xm.BlockResponseReader(xm.BlockRequest(MID, cids_))


def test_reader_accepts_one_frame_per_cid_in_order() -> None:
    r = reader(C1, C2, C3)
    assert r.expected == C1 and r.unanswered == (C1, C2, C3)
    assert r.feed(xm.encode_response(xm.BlockData(C1, b"x"))) == xm.BlockData(C1, b"x")
    assert r.accept(xm.BlockAbsent(C2)) == xm.BlockAbsent(C2)
    assert r.state is xm.ReaderState.EXPECTING
    assert list(r.unanswered) == [C3]
    r.accept(xm.BlockData(C3, b"not verified here"))
    assert r.expected is None and r.unanswered == ()
    assert r.state.value == "done"
    r.end_of_stream()


def test_reader_accepts_a_single_refusal() -> None:
    r = reader(C1, C2)
    assert r.feed(xm.encode_response(xm.UNAUTHORISED)) == xm.UNAUTHORISED
    assert r.state is xm.ReaderState.REFUSED and r.refused == xm.UNAUTHORISED
    assert r.unanswered == (C1, C2)
    r.end_of_stream()
    with raises_exactly(UnexpectedFrameError):
        r.accept(xm.BlockData(C1, b""))


SEQUENCES: list[tuple[str, list[xm.BlockFrame]]] = [
    ("wrong cid first", [xm.BlockData(C2, b"")]),
    ("wrong cid later", [xm.BlockData(C1, b""), xm.BlockAbsent(C3)]),
    ("repeated cid", [xm.BlockData(C1, b""), xm.BlockData(C1, b"")]),
    ("refusal after data", [xm.BlockAbsent(C1), xm.UNAUTHORISED]),
    ("two refusals", [xm.UNAUTHORISED, xm.UNAUTHORISED]),
    ("frame after refusal", [xm.UNAUTHORISED, xm.BlockAbsent(C1)]),
    ("too many frames", [xm.BlockAbsent(C1), xm.BlockAbsent(C2), xm.BlockAbsent(C2)]),
]


@pytest.mark.parametrize(("what", "frames"), SEQUENCES, ids=[s[0] for s in SEQUENCES])
def test_reader_refuses_deviations(what: str, frames: list[xm.BlockFrame]) -> None:
    r = reader(C1, C2)
    for frame in frames[:-1]:
        r.accept(frame)
    with raises_exactly(UnexpectedFrameError):
        r.accept(frames[-1])
    assert r.state is xm.ReaderState.FAILED
    with raises_exactly(UnexpectedFrameError):  # and stays failed
        r.accept(xm.BlockAbsent(C2))


def test_reader_end_of_stream_too_early_and_bad_bytes() -> None:
    r = reader(C1, C2)
    r.accept(xm.BlockAbsent(C1))
    with raises_exactly(UnexpectedFrameError):
        r.end_of_stream()
    r = reader(C1)
    with raises_exactly(SchemaError):
        r.feed(cbor.encode({"ok": True, "cid": CID_BYTES}))
    assert r.state is xm.ReaderState.FAILED


def test_verify_block() -> None:
    data = b"some block"
    assert xm.verify_block(CID.of(data), data)
    assert not xm.verify_block(CID.of(data), data + b"!")


# -- have bitmaps ---------------------------------------------------------------------


def test_manifest_block_order_first_occurrence() -> None:
    shared = f.make_instance(1)
    repeat = f.make_instance(2, blocks=3)
    repeat = type(repeat)(**{**repeat.__dict__, "blocks": (repeat.blocks[0], shared.blocks[1], repeat.blocks[0])})
    manifest = f.make_manifest(instances=(shared, repeat))
    assert manifest.block_order() == (shared.blocks[0], shared.blocks[1], repeat.blocks[0])


def test_bitmap_bit_order_and_exact_length() -> None:
    assert xm.pack_bitmap([True, False, True]) == b"\xa0"
    assert xm.pack_bitmap([False] * 8 + [True]) == b"\x00\x80"
    assert xm.pack_bitmap([]) == b""
    assert xm.unpack_bitmap(b"\xa0", 3) == (True, False, True)
    assert xm.unpack_bitmap(b"", 0) == ()
    for bitmap, count in [(b"\xa0", 9), (b"\xa0\x00", 3), (b"", 1), (b"\x00", 0), (b"\xa1", 3), (b"\x01", 7)]:
        with raises_exactly(SchemaError):
            xm.unpack_bitmap(bitmap, count)
    order = (C1, C2, C3)
    bitmap = xm.pack_bitmap([cid in {C3, C1} for cid in order])
    assert bitmap == b"\xa0" and xm.held_blocks(order, bitmap) == (C1, C3)
    with raises_exactly(SchemaError):
        xm.held_blocks(order, b"\xa0\x00")


@settings(max_examples=150, deadline=None)
@given(st.lists(st.booleans(), max_size=70))
def test_bitmap_round_trip(flags: list[bool]) -> None:
    bitmap = xm.pack_bitmap(flags)
    assert len(bitmap) == (len(flags) + 7) // 8
    assert xm.unpack_bitmap(bitmap, len(flags)) == tuple(flags)


# -- the wire spec states what the code does ------------------------------------------

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol" / "exchange.md"


def test_exchange_page_matches_the_code() -> None:
    text = DOC.read_text(encoding="utf-8")
    for protocol_id, limits in xm.FRAME_LIMITS.items():
        row = next(line for line in text.splitlines() if line.startswith(f"| `{protocol_id}` |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1].startswith(f"{limits.request:,} bytes"), row
        assert cells[2].startswith(f"{limits.response:,} bytes"), row
    for number in (xm.MAX_BITMAP_BYTES, xm.MAX_BLOCK_BYTES, MAX_MANIFEST_BYTES, xm.MAX_RECEIPT_BYTES,
                   xm.MAX_RECALL_BYTES, xm.MAX_CERT_BYTES, 2 * xm.MAX_REQUEST_BLOCKS + 16):
        assert f"{number:,}" in text, number
    assert f"1 to {xm.MAX_REQUEST_BLOCKS} distinct CIDs" in text
    assert xm.encode_response(xm.UNAUTHORISED) == cbor.encode({"ok": False, "code": 600, "message": "not authorised"})
    assert '{"ok": false, "code": 600, "message": "not authorised"}' in text


# -- the block frame encoder used when serving -------------------------------------


@settings(max_examples=100, deadline=None)
@given(cids, st.one_of(st.binary(max_size=300), st.integers(0, 70_000).map(lambda n: bytes(n % 251 for _ in range(n)))))
def test_block_data_frame_is_exactly_the_generic_encoding(cid: CID, data: bytes) -> None:
    generic = encode_frame(xm.encode_response(xm.BlockData(cid, data)), xm.BLOCKS_MAX_RESPONSE_FRAME)
    assert xm.encode_block_data_frame(cid, data, xm.BLOCKS_MAX_RESPONSE_FRAME) == generic
    assert xm.decode_block_frame(generic[4:]) == xm.BlockData(cid, data)


def test_block_data_frame_refuses_a_frame_above_the_maximum() -> None:
    cid = CID.of(b"x")
    with raises_exactly(LocalProtocolError):
        xm.encode_block_data_frame(cid, b"x" * 100, 100)
