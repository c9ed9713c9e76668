"""Every document survives sign -> encode -> open_document, and has exactly one encoding."""

from __future__ import annotations

import cbor2
from hypothesis import given, settings

from protocol import cbor
from protocol import directory_messages as dm
from protocol.document import Document, open_document
from protocol.keys import SigningKey
from protocol.signing import SignedEnvelope

from tests.protocol import strategies as s

SETTINGS = settings(max_examples=40, deadline=None)


def check_round_trip(doc: Document, key: SigningKey) -> None:
    cls = type(doc)
    signed = doc.sign(key)
    data = signed.encode()
    opened = open_document(data, cls)
    assert opened.document == doc
    assert opened.signer == key.public_key
    assert opened.encode() == data
    # ...and that is sound: what was decoded re-encodes to the very same bytes (the cache a
    # decoded envelope starts with relies on it).
    assert cbor.encode(opened.envelope.to_wire()) == data
    assert opened.cid == signed.cid
    # Equal documents, however obtained, encode identically: rebuild from the wire body.
    rebuilt = cls.from_body(doc.to_body())
    assert rebuilt == doc
    assert rebuilt.sign(key).encode() == data
    # An independent decoder sees the envelope we meant.
    wire = cbor2.loads(data)
    assert wire == {"type": cls.LABEL, "body": doc.to_body(), "signer": key.public_key.raw, "sig": signed.envelope.signature}
    assert set(wire) == {"type", "body", "signer", "sig"}
    # The signature is over label || canonical(body), and nothing else.
    key.public_key.verify(cls.LABEL.encode("ascii") + cbor.encode(doc.to_body()), wire["sig"])
    # Verifying cuts the body's encoding out of the envelope's bytes: exactly canonical(body),
    # for an envelope decoded from the wire and for one built in memory.
    for envelope in (opened.envelope, signed.envelope):
        assert envelope._body_encoding() == cbor.encode(doc.to_body())


@SETTINGS
@given(s.certificates())
def test_certificate(case: tuple[Document, SigningKey]) -> None:
    check_round_trip(*case)


@SETTINGS
@given(s.rosters())
def test_roster(case: tuple[Document, SigningKey]) -> None:
    check_round_trip(*case)


@SETTINGS
@given(s.address_records())
def test_address_record(case: tuple[Document, SigningKey]) -> None:
    check_round_trip(*case)


@SETTINGS
@given(s.manifests())
def test_manifest(case: tuple[Document, SigningKey]) -> None:
    check_round_trip(*case)


@SETTINGS
@given(s.receipts())
def test_receipt(case: tuple[Document, SigningKey]) -> None:
    check_round_trip(*case)


@SETTINGS
@given(s.recalls())
def test_recall(case: tuple[Document, SigningKey]) -> None:
    check_round_trip(*case)


@settings(max_examples=30, deadline=None)
@given(s.documents, s.documents)
def test_different_documents_different_bytes(a: tuple[Document, SigningKey], b: tuple[Document, SigningKey]) -> None:
    data_a, data_b = a[0].sign(a[1]).encode(), b[0].sign(b[1]).encode()
    assert (data_a == data_b) == (a[0] == b[0] and a[1].public_key == b[1].public_key)


@settings(max_examples=30, deadline=None)
@given(s.documents)
def test_envelope_is_canonical_cbor(case: tuple[Document, SigningKey]) -> None:
    doc, key = case
    envelope = SignedEnvelope.sign(doc.LABEL, doc.to_body(), key)
    data = envelope.encode()
    assert cbor.encode(cbor.decode(data)) == data


@settings(max_examples=100, deadline=None)
@given(s.requests)
def test_directory_request_round_trip(request: dm.Request) -> None:
    data = dm.encode_request(request)
    assert dm.decode_request(data) == request
    assert dm.encode_request(dm.decode_request(data)) == data
    assert len(data) <= dm.MAX_REQUEST_FRAME


@settings(max_examples=100, deadline=None)
@given(s.responses)
def test_directory_response_round_trip(response: dm.Response) -> None:
    data = dm.encode_response(response)
    assert dm.decode_response(data) == response
    assert dm.encode_response(dm.decode_response(data)) == data
    assert len(data) <= dm.MAX_RESPONSE_FRAME
