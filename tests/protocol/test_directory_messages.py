"""Directory protocol messages: exact shapes and a bad-input corpus."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import cbor
from protocol import directory_messages as dm
from protocol.cbor import CborValue
from protocol.errors import (
    ERRORS_BY_CODE,
    CertificateRevokedError,
    DecodeError,
    LimitError,
    MeshError,
    NonCanonicalError,
    RemoteProtocolError,
    SchemaError,
    UnauthorisedError,
)

from tests.protocol import factories as f
from tests.protocol.assertions import loose_encode, raises_exactly, reversed_order

PEER = f.NODE_A.peer_id


def test_protocol_id_and_limits() -> None:
    assert dm.DIRECTORY_PROTOCOL == "/dicom-mesh/directory/1.0.0"
    # The largest request (publishing a roster) fits in a request frame.
    biggest = dm.encode_request(dm.PublishRoster(b"\x00" * dm.MAX_ROSTER_BYTES))
    assert len(biggest) <= dm.MAX_REQUEST_FRAME
    entries = dm.Entries(
        tuple(dm.Entry(b"c" * dm.MAX_CERT_BYTES, b"r" * dm.MAX_RECORD_BYTES) for _ in range(dm.MAX_ENTRIES))
    )
    biggest_entries = dm.encode_response(entries)
    assert len(biggest_entries) <= dm.MAX_RESPONSE_FRAME
    assert dm.decode_response(biggest_entries) == entries  # and it decodes back whole


@pytest.mark.parametrize(
    ("request_", "wire"),
    [
        (dm.LookupOrg("RGT"), {"op": "lookup-org", "org": "RGT"}),
        (dm.LookupPeer(PEER), {"op": "lookup-peer", "peer": PEER}),
        (dm.ListOrgs(), {"op": "list-orgs", "after": ""}),
        (dm.ListOrgs("RGT"), {"op": "list-orgs", "after": "RGT"}),
        (dm.GetRoster(), {"op": "roster"}),
        (dm.GetIdentity(), {"op": "identity"}),
        (dm.WatchRoster(0), {"op": "watch-roster", "after": 0}),
        (dm.WatchRoster(7), {"op": "watch-roster", "after": 7}),
        (dm.Register(b"cert", b"rec"), {"op": "register", "certificate": b"cert", "record": b"rec"}),
        (dm.PublishRoster(b"roster"), {"op": "publish-roster", "roster": b"roster"}),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, dict) else "",
)
def test_request_wire_shapes(request_: dm.Request, wire: dict[str | int, CborValue]) -> None:
    assert dm.encode_request(request_) == cbor.encode(wire)
    assert dm.decode_request(cbor.encode(wire)) == request_


@pytest.mark.parametrize(
    ("response", "wire"),
    [
        (dm.Entries(()), {"ok": True, "entries": []}),
        (
            dm.Entries((dm.Entry(b"c", None), dm.Entry(b"d", b"r"))),
            {"ok": True, "entries": [{"certificate": b"c", "record": None}, {"certificate": b"d", "record": b"r"}]},
        ),
        (dm.RosterReply(None), {"ok": True, "roster": None}),
        (dm.RosterReply(b"r"), {"ok": True, "roster": b"r"}),
        (dm.RosterUnchanged(3), {"ok": True, "unchanged": 3}),
        (dm.IdentityReply(b"c"), {"ok": True, "certificate": b"c"}),
        (dm.Accepted(), {"ok": True}),
        (dm.Refused(404, "revoked"), {"ok": False, "code": 404, "message": "revoked"}),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, dict) else "",
)
def test_response_wire_shapes(response: dm.Response, wire: dict[str | int, CborValue]) -> None:
    assert dm.encode_response(response) == cbor.encode(wire)
    assert dm.decode_response(cbor.encode(wire)) == response


BAD_REQUESTS: list[tuple[str, CborValue, type[MeshError]]] = [
    ("not a map", ["lookup-org", "RGT"], SchemaError),
    ("no op", {"org": "RGT"}, SchemaError),
    ("unknown op", {"op": "delete-everything"}, SchemaError),
    ("op not text", {"op": 1}, SchemaError),
    ("op too long", {"op": "x" * 33}, LimitError),
    ("extra field", {"op": "roster", "org": "RGT"}, SchemaError),
    ("lookup-org missing org", {"op": "lookup-org"}, SchemaError),
    ("lookup-org bad org", {"op": "lookup-org", "org": "rgt"}, SchemaError),
    ("lookup-org org too long", {"op": "lookup-org", "org": "A" * 17}, LimitError),
    ("list-orgs missing after", {"op": "list-orgs"}, SchemaError),
    ("list-orgs bad after", {"op": "list-orgs", "after": "rgt"}, SchemaError),
    ("list-orgs after too long", {"op": "list-orgs", "after": "A" * 17}, LimitError),
    ("lookup-peer bad peer", {"op": "lookup-peer", "peer": "12D3KooWnotapeer"}, SchemaError),
    ("lookup-peer RSA peer", {"op": "lookup-peer", "peer": "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"}, SchemaError),
    ("lookup-peer peer too long", {"op": "lookup-peer", "peer": "1" * 65}, LimitError),
    ("register certificate too big", {"op": "register", "certificate": b"c" * 4097, "record": b""}, LimitError),
    ("register record too big", {"op": "register", "certificate": b"", "record": b"r" * 8193}, LimitError),
    ("register record missing", {"op": "register", "certificate": b""}, SchemaError),
    ("register record null", {"op": "register", "certificate": b"", "record": None}, SchemaError),
    ("publish-roster not bytes", {"op": "publish-roster", "roster": "text"}, SchemaError),
    ("publish-roster too big", {"op": "publish-roster", "roster": b"\x00" * (dm.MAX_ROSTER_BYTES + 1)}, LimitError),
    ("nested too deep", {"op": "roster", "x": [[[[[0]]]]]}, LimitError),
    ("watch-roster missing after", {"op": "watch-roster"}, SchemaError),
    ("watch-roster negative after", {"op": "watch-roster", "after": -1}, LimitError),
    ("watch-roster after not int", {"op": "watch-roster", "after": "1"}, SchemaError),
]


@pytest.mark.parametrize(("what", "wire", "error"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_requests(what: str, wire: CborValue, error: type[MeshError]) -> None:
    with raises_exactly(error):
        dm.decode_request(cbor.encode(wire))


BAD_RESPONSES: list[tuple[str, CborValue, type[MeshError]]] = [
    ("not a map", [True], SchemaError),
    ("no ok", {"entries": []}, SchemaError),
    ("ok not bool", {"ok": 1}, SchemaError),
    ("two payloads", {"ok": True, "entries": [], "roster": None}, SchemaError),
    ("refused with payload", {"ok": False, "code": 600, "message": "no", "entries": []}, SchemaError),
    ("refused without code", {"ok": False, "message": "no"}, SchemaError),
    ("refused code too big", {"ok": False, "code": 10_000, "message": "no"}, LimitError),
    ("refused negative code", {"ok": False, "code": -1, "message": "no"}, LimitError),
    ("refused message too long", {"ok": False, "code": 600, "message": "m" * 513}, LimitError),
    ("refused message with newline", {"ok": False, "code": 600, "message": "a\nb"}, SchemaError),
    ("accepted with junk", {"ok": True, "junk": 1}, SchemaError),
    ("entries not array", {"ok": True, "entries": {}}, SchemaError),
    ("too many entries", {"ok": True, "entries": [{"certificate": b"", "record": None}] * 257}, LimitError),
    ("entry missing record", {"ok": True, "entries": [{"certificate": b""}]}, SchemaError),
    ("entry extra field", {"ok": True, "entries": [{"certificate": b"", "record": None, "x": 1}]}, SchemaError),
    ("entry certificate too big", {"ok": True, "entries": [{"certificate": b"c" * 4097, "record": None}]}, LimitError),
    ("entry record too big", {"ok": True, "entries": [{"certificate": b"", "record": b"r" * 8193}]}, SchemaError),
    ("entry record text", {"ok": True, "entries": [{"certificate": b"", "record": "r"}]}, SchemaError),
    ("roster text", {"ok": True, "roster": "r"}, SchemaError),
    ("unchanged negative", {"ok": True, "unchanged": -1}, LimitError),
    ("unchanged with roster", {"ok": True, "unchanged": 1, "roster": None}, SchemaError),
    ("identity certificate too big", {"ok": True, "certificate": b"c" * 4097}, LimitError),
    ("nested too deep", {"ok": True, "x": [[[[[0]]]]]}, LimitError),
]


@pytest.mark.parametrize(("what", "wire", "error"), BAD_RESPONSES, ids=[c[0] for c in BAD_RESPONSES])
def test_bad_responses(what: str, wire: CborValue, error: type[MeshError]) -> None:
    with raises_exactly(error):
        dm.decode_response(cbor.encode(wire))


def test_noncanonical_and_truncated_messages() -> None:
    request = {"op": "register", "certificate": b"c", "record": b"r"}
    with raises_exactly(NonCanonicalError):
        dm.decode_request(loose_encode(request, key_order=reversed_order))
    response = {"ok": False, "code": 404, "message": "x"}
    with raises_exactly(NonCanonicalError):
        dm.decode_response(loose_encode(response, int_width=4))
    data = dm.encode_response(dm.Entries((dm.Entry(b"c", b"r"),)))
    for cut in range(len(data)):
        with raises_exactly(DecodeError):
            dm.decode_response(data[:cut])
    with raises_exactly(DecodeError):
        dm.decode_request(dm.encode_request(dm.GetRoster()) + b"\x00")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=80))
def test_arbitrary_bytes_raise_only_mesh_errors(data: bytes) -> None:
    for decode in (dm.decode_request, dm.decode_response):
        try:
            decode(data)
        except MeshError:
            pass


def test_refused_carries_the_error_code_both_ways() -> None:
    for code, cls in ERRORS_BY_CODE.items():
        refused = dm.Refused.from_error(cls("why"))
        assert refused.code == code
        decoded = dm.decode_response(dm.encode_response(refused))
        assert decoded == refused
        assert isinstance(decoded, dm.Refused)
        error = decoded.to_error()
        assert type(error) is cls
        assert "why" in str(error)
    assert type(dm.Refused(999, "?").to_error()) is RemoteProtocolError


@settings(max_examples=100, deadline=None)
@given(st.text(st.characters(), max_size=600))
def test_refused_from_any_error_message_is_decodable(message: str) -> None:
    # The directory turns whatever error it hit into a Refused; the client must
    # always be able to read it, whatever characters the message held.
    for exc in (UnauthorisedError(message), CertificateRevokedError(message)):
        refused = dm.Refused.from_error(exc)
        assert dm.decode_response(dm.encode_response(refused)) == refused
        assert len(refused.message) <= 512
