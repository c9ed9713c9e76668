"""Bad-input corpus for signed documents: each input refused with its own error class.

What can be judged from the bytes alone is judged by open_document; trust
questions (which key, which org, which time) live in test_trust.py.
Rosters in this corpus are also fed to a RosterGuard, whose state must not move.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import cbor
from protocol.address_record import MAX_ADDR_LEN, MAX_ADDRS, AddressRecord
from protocol.cbor import CborValue
from protocol.certificate import ROLE_NAMES, Certificate
from protocol.document import Document, open_document
from protocol.errors import (
    DecodeError,
    DocumentError,
    LimitError,
    MeshError,
    NonCanonicalError,
    SchemaError,
    SignatureError,
    UnknownIssuerError,
)
from protocol.keys import SigningKey
from protocol.manifest import Manifest
from protocol.receipt import Receipt
from protocol.roster import MemoryRosterVersionStore, Roster, RosterGuard
from protocol.schema import MAX_TIME
from protocol.signing import SignedEnvelope

from tests.protocol import factories as f
from tests.protocol.assertions import loose_encode, map_of_encoded, raises_exactly, reversed_order

EXAMPLES = f.examples()
IDS = [type(doc).__name__ for doc, _ in EXAMPLES]
DOC_TYPES: list[type[Document]] = [type(doc) for doc, _ in EXAMPLES]


def expect_refused(data: bytes, cls: type[Document], error: type[MeshError], match: str | None = None) -> None:
    """open_document refuses data with exactly `error`; a roster also leaves a guard untouched."""
    with raises_exactly(error, match=match):
        open_document(data, cls)
    if cls is Roster:
        store = MemoryRosterVersionStore()
        guard = RosterGuard([f.AUTHORITY.public_key], store)
        with raises_exactly(error, match=match):
            guard.accept(data, f.NOW)
        assert guard.current is None
        assert store.highest_roster_version() == 0


def body_of(doc: Document) -> dict[str | int, CborValue]:
    return copy.deepcopy(doc.to_body())


def test_examples_are_valid() -> None:
    for doc, key in EXAMPLES:
        signed = doc.sign(key)
        assert open_document(signed.encode(), type(doc)).document == doc


# --- truncation, size -----------------------------------------------------------------


@pytest.mark.parametrize(("doc", "key"), EXAMPLES, ids=IDS)
def test_every_truncation_refused(doc: Document, key: SigningKey) -> None:
    data = doc.sign(key).encode()
    step = max(1, len(data) // 300)
    for cut in [*range(0, len(data), step), len(data) - 1]:
        expect_refused(data[:cut], type(doc), DecodeError)


@pytest.mark.parametrize(("doc", "key"), EXAMPLES, ids=IDS)
def test_oversized_input_refused_before_decoding(doc: Document, key: SigningKey) -> None:
    data = doc.sign(key).encode()
    padded = data + b"\x00" * (type(doc).MAX_BYTES - len(data) + 1)
    expect_refused(padded, type(doc), LimitError, match="exceeds")
    # One byte less than the limit is an ordinary decode problem (trailing bytes).
    expect_refused(padded[:-1], type(doc), DecodeError, match="trailing")


def test_signed_canonical_but_oversized_address_record() -> None:
    record = f.make_address_record(addrs=[f"/dns4/{'é' * (MAX_ADDR_LEN - 10)}/tcp/{i}" for i in range(MAX_ADDRS)])
    data = f.resign(AddressRecord.LABEL, record.to_body(), f.NODE_A)  # sign() itself would refuse it
    assert len(data) > AddressRecord.MAX_BYTES
    expect_refused(data, AddressRecord, LimitError)


def test_oversized_certificate_body() -> None:
    body = body_of(f.make_certificate())
    body["padding"] = b"\x00" * 5000
    expect_refused(f.resign(Certificate.LABEL, body, f.AUTHORITY), Certificate, LimitError)


@pytest.mark.parametrize(("doc", "key"), EXAMPLES, ids=IDS)
def test_deeply_nested_extra_field_is_a_limit_error(doc: Document, key: SigningKey) -> None:
    body = body_of(doc)
    nested: CborValue = 0
    for _ in range(20):
        nested = [nested]
    body["zz"] = nested
    expect_refused(f.resign(doc.LABEL, body, key), type(doc), LimitError, match="nesting")


# --- shape: missing, extra, wrong type, out of range ------------------------------------


@pytest.mark.parametrize(("doc", "key"), EXAMPLES, ids=IDS)
def test_missing_body_field(doc: Document, key: SigningKey) -> None:
    for field in doc.to_body():
        body = body_of(doc)
        del body[field]
        expect_refused(f.resign(doc.LABEL, body, key), type(doc), SchemaError, match="missing field")


@pytest.mark.parametrize(("doc", "key"), EXAMPLES, ids=IDS)
def test_extra_body_field(doc: Document, key: SigningKey) -> None:
    for extra in ["extra", "", 0, -1]:
        body = body_of(doc)
        body[extra] = None
        expect_refused(f.resign(doc.LABEL, body, key), type(doc), SchemaError, match="unknown field")


REPLACEMENTS: list[CborValue] = [None, True, 7, b"\x01", "x", [], {}]


def _same_kind(a: CborValue, b: CborValue) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool)
    return type(a) is type(b)


@pytest.mark.parametrize(("doc", "key"), EXAMPLES, ids=IDS)
def test_wrong_field_type(doc: Document, key: SigningKey) -> None:
    for field, original in doc.to_body().items():
        for replacement in REPLACEMENTS:
            if _same_kind(original, replacement):
                continue
            body = body_of(doc)
            body[field] = replacement
            expect_refused(f.resign(doc.LABEL, body, key), type(doc), SchemaError)


def _part(body: dict[str | int, CborValue], part: str) -> dict[str | int, CborValue]:
    """The summary map, or the first instance entry, of a manifest body."""
    if part == "summary":
        inner = body["summary"]
    else:
        instances = body["instances"]
        assert isinstance(instances, list)
        inner = instances[0]
    assert isinstance(inner, dict)
    return inner


@pytest.mark.parametrize("part", ["summary", "instance"])
def test_nested_manifest_fields(part: str) -> None:
    doc = f.make_manifest()

    def refused(mutate: Callable[[dict[str | int, CborValue]], None], match: str | None = None) -> None:
        body = body_of(doc)
        mutate(_part(body, part))
        expect_refused(f.resign(Manifest.LABEL, body, f.NODE_A), Manifest, SchemaError, match=match)

    for field, original in _part(body_of(doc), part).items():
        refused(lambda inner: inner.pop(field), match="missing field")
        for replacement in REPLACEMENTS:
            if not _same_kind(original, replacement):
                refused(lambda inner: inner.__setitem__(field, replacement))
    refused(lambda inner: inner.__setitem__("extra", 1), match="unknown field")


def _with(doc: Document, **changes: CborValue) -> dict[str | int, CborValue]:
    body = body_of(doc)
    body.update(changes)
    return body


LIMIT_CASES: list[tuple[str, Document, SigningKey, dict[str | int, CborValue]]] = [
    ("cert negative time", f.make_certificate(), f.AUTHORITY, _with(f.make_certificate(), not_before=-1)),
    ("cert time beyond MAX_TIME", f.make_certificate(), f.AUTHORITY, _with(f.make_certificate(), not_after=MAX_TIME + 1)),
    ("cert org_name too long", f.make_certificate(), f.AUTHORITY, _with(f.make_certificate(), org_name="x" * 129)),
    ("cert too many roles", f.make_certificate(), f.AUTHORITY, 
     _with(f.make_certificate(), roles=["acute-trust"] * (len(ROLE_NAMES) + 1))),
    ("roster version 0", f.make_roster(), f.AUTHORITY, _with(f.make_roster(), version=0)),
    ("roster version above 2**63-1", f.make_roster(), f.AUTHORITY, _with(f.make_roster(), version=2**63)),
    (
        "roster 17 authorities",
        f.make_roster(),
        f.AUTHORITY,
        _with(f.make_roster(), authorities=sorted(f.key(100 + i).public_key.raw for i in range(17))),
    ),
    ("record 17 addresses", f.make_address_record(), f.NODE_A, _with(f.make_address_record(), addrs=[f"/ip4/10.0.0.1/tcp/{i}" for i in range(17)])),
    ("record address too long", f.make_address_record(), f.NODE_A, _with(f.make_address_record(), addrs=["/dns4/" + "a" * 251])),
    ("record negative seq", f.make_address_record(), f.NODE_A, _with(f.make_address_record(), seq=-1)),
    ("manifest 65 recipients", f.make_manifest(), f.NODE_A, _with(f.make_manifest(), recipients=sorted(f"R{i:02d}" for i in range(65)))),
    ("manifest revision 0", f.make_manifest(), f.NODE_A, _with(f.make_manifest(), revision=0)),
    ("manifest study uid too long", f.make_manifest(), f.NODE_A, _with(f.make_manifest(), study=("1." * 40)[:-1])),
    ("receipt instances_verified above 50000", f.make_receipt(), f.NODE_B, _with(f.make_receipt(), instances_verified=50_001)),
    ("receipt negative time", f.make_receipt(), f.NODE_B, _with(f.make_receipt(), at=-5)),
    ("recall reason too long", f.make_recall(), f.NODE_A, _with(f.make_recall(), reason="r" * 1025)),
]


@pytest.mark.parametrize(("what", "doc", "key", "body"), LIMIT_CASES, ids=[c[0] for c in LIMIT_CASES])
def test_out_of_range_fields_are_limit_errors(what: str, doc: Document, key: SigningKey, body: dict[str | int, CborValue]) -> None:
    expect_refused(f.resign(doc.LABEL, body, key), type(doc), LimitError)


SCHEMA_CASES: list[tuple[str, Document, SigningKey, dict[str | int, CborValue]]] = [
    ("cert bad serial", f.make_certificate(), f.AUTHORITY, _with(f.make_certificate(), serial="ABCDEF" + "0" * 26)),
    ("cert lower-case org", f.make_certificate(), f.AUTHORITY, _with(f.make_certificate(), org="rgt")),
    ("cert unknown role", f.make_certificate(), f.AUTHORITY, _with(f.make_certificate(), roles=["superuser"])),
    ("cert no roles", f.make_certificate(), f.AUTHORITY, _with(f.make_certificate(), roles=[])),
    ("cert unsorted roles", f.make_certificate(), f.AUTHORITY, _with(f.make_certificate(), roles=["research", "acute-trust"])),
    ("cert duplicate roles", f.make_certificate(), f.AUTHORITY, _with(f.make_certificate(), roles=["research", "research"])),
    ("cert empty org_name", f.make_certificate(), f.AUTHORITY, _with(f.make_certificate(), org_name="")),
    ("cert control character", f.make_certificate(), f.AUTHORITY, _with(f.make_certificate(), org_name="a\nb")),
    ("cert node_key 31 bytes", f.make_certificate(), f.AUTHORITY, _with(f.make_certificate(), node_key=b"\x01" * 31)),
    ("cert window inverted", f.make_certificate(), f.AUTHORITY, _with(f.make_certificate(), not_before=f.NOW, not_after=f.NOW)),
    ("roster no authorities", f.make_roster(), f.AUTHORITY, _with(f.make_roster(), authorities=[])),
    (
        "roster unsorted authorities",
        f.make_roster(),
        f.AUTHORITY,
        _with(f.make_roster(), authorities=sorted([f.AUTHORITY.public_key.raw, f.AUTHORITY_NEW.public_key.raw], reverse=True)),
    ),
    ("roster bad serial", f.make_roster(), f.AUTHORITY, _with(f.make_roster(), revoked=["not-a-serial"])),
    ("roster expires before issued", f.make_roster(), f.AUTHORITY, _with(f.make_roster(), expires_at=f.NOW - 2 * f.DAY)),
    ("record no addresses", f.make_address_record(), f.NODE_A, _with(f.make_address_record(), addrs=[])),
    ("record not a multiaddr", f.make_address_record(), f.NODE_A, _with(f.make_address_record(), addrs=["127.0.0.1:4001"])),
    ("record peer not a peer ID", f.make_address_record(), f.NODE_A, _with(f.make_address_record(), peer="not-a-peer")),
    ("manifest bad study uid", f.make_manifest(), f.NODE_A, _with(f.make_manifest(), study="1.02.3")),
    ("manifest unknown priority", f.make_manifest(), f.NODE_A, _with(f.make_manifest(), priority="asap")),
    ("manifest unknown purpose", f.make_manifest(), f.NODE_A, _with(f.make_manifest(), purpose="marketing")),
    ("manifest unsorted recipients", f.make_manifest(), f.NODE_A, _with(f.make_manifest(), recipients=["RXX", "ABC"])),
    ("manifest no instances", f.make_manifest(), f.NODE_A, _with(f.make_manifest(), instances=[])),
    ("manifest expires before created", f.make_manifest(), f.NODE_A, _with(f.make_manifest(), expires_at=0)),
    ("receipt manifest id not a CID", f.make_receipt(), f.NODE_B, _with(f.make_receipt(), manifest=b"\x01\x70\x12\x20" + bytes(32))),
    ("recall supersede without successor", f.make_recall(), f.NODE_A, _with(f.make_recall(), superseded_by=None)),
    ("recall unknown action", f.make_recall(), f.NODE_A, _with(f.make_recall(), action="delete")),
]


@pytest.mark.parametrize(("what", "doc", "key", "body"), SCHEMA_CASES, ids=[c[0] for c in SCHEMA_CASES])
def test_invalid_field_values_are_schema_errors(what: str, doc: Document, key: SigningKey, body: dict[str | int, CborValue]) -> None:
    expect_refused(f.resign(doc.LABEL, body, key), type(doc), SchemaError)


def test_manifest_summary_counts_must_match() -> None:
    body = body_of(f.make_manifest())
    body["summary"]["instance_count"] = 4  # type: ignore[index]
    expect_refused(f.resign(Manifest.LABEL, body, f.NODE_A), Manifest, SchemaError, match="instance_count")
    body = body_of(f.make_manifest())
    body["summary"]["series_count"] = 1  # type: ignore[index]
    expect_refused(f.resign(Manifest.LABEL, body, f.NODE_A), Manifest, SchemaError, match="series_count")
    body = body_of(f.make_manifest())
    body["instances"][1] = body["instances"][0]  # type: ignore[index]
    expect_refused(f.resign(Manifest.LABEL, body, f.NODE_A), Manifest, SchemaError, match="twice")


# --- envelope shape -------------------------------------------------------------------


@pytest.mark.parametrize(("doc", "key"), EXAMPLES, ids=IDS)
def test_envelope_shape(doc: Document, key: SigningKey) -> None:
    wire = doc.sign(key).envelope.to_wire()
    for field in wire:
        broken = dict(wire)
        del broken[field]
        expect_refused(cbor.encode(broken), type(doc), SchemaError, match="missing field")
    expect_refused(cbor.encode({**wire, "extra": 1}), type(doc), SchemaError, match="unknown field")
    for field, original in wire.items():
        for replacement in REPLACEMENTS:
            if not _same_kind(original, replacement):
                expect_refused(cbor.encode({**wire, field: replacement}), type(doc), SchemaError)
    expect_refused(cbor.encode({**wire, "sig": wire["sig"][:63]}), type(doc), SchemaError)  # type: ignore[index]
    expect_refused(cbor.encode({**wire, "signer": wire["signer"] + b"\x00"}), type(doc), SchemaError)  # type: ignore[operator]
    expect_refused(cbor.encode({**wire, "type": "other-system/manifest/v1"}), type(doc), SchemaError)
    expect_refused(cbor.encode({**wire, "type": "dicom-mesh/" + "x" * 60}), type(doc), LimitError)
    expect_refused(cbor.encode([wire]), type(doc), SchemaError)
    expect_refused(cbor.encode(None), type(doc), SchemaError)


# --- canonical form -------------------------------------------------------------------


def _noncanonical_variants(doc: Document, key: SigningKey) -> dict[str, bytes]:
    env = doc.sign(key).envelope
    wire = env.to_wire()
    canonical_pairs = sorted(wire.items(), key=lambda kv: cbor.encode(kv[0]))

    def envelope_with(body_bytes: bytes | None = None, sig_bytes: bytes | None = None, reverse: bool = False) -> bytes:
        pairs: list[tuple[CborValue, bytes]] = []
        for k, v in canonical_pairs:
            if k == "body" and body_bytes is not None:
                pairs.append((k, body_bytes))
            elif k == "sig" and sig_bytes is not None:
                pairs.append((k, sig_bytes))
            else:
                pairs.append((k, cbor.encode(v)))
        return map_of_encoded(pairs[::-1] if reverse else pairs)

    return {
        "envelope keys reversed": envelope_with(reverse=True),
        "body keys reversed": envelope_with(body_bytes=loose_encode(env.body, key_order=reversed_order)),
        "body integers long-form": envelope_with(body_bytes=loose_encode(env.body, int_width=8)),
        "sig length long-form": envelope_with(sig_bytes=b"\x59\x00\x40" + env.signature),
    }


@pytest.mark.parametrize(("doc", "key"), EXAMPLES, ids=IDS)
def test_noncanonical_envelope_refused(doc: Document, key: SigningKey) -> None:
    good = doc.sign(key).encode()
    for what, bad in _noncanonical_variants(doc, key).items():
        assert bad != good, what
        # Same meaning to a lenient decoder, and the signature would verify over it ...
        assert cbor2.loads(bad) == cbor2.loads(good), what
        # ... yet it is not the one encoding, so it is refused.
        expect_refused(bad, type(doc), NonCanonicalError)


# --- signatures and labels ------------------------------------------------------------


@pytest.mark.parametrize(("doc", "key"), EXAMPLES, ids=IDS)
def test_tampered_signature_refused(doc: Document, key: SigningKey) -> None:
    env = doc.sign(key).envelope
    flipped = bytearray(env.signature)
    flipped[10] ^= 0x01
    cases = [
        SignedEnvelope(env.type, env.body, env.signer, bytes(flipped)),
        SignedEnvelope(env.type, env.body, f.ROGUE.public_key, env.signature),  # signer swapped
        SignedEnvelope(env.type, env.body, env.signer, bytes(64)),
    ]
    for bad in cases:
        expect_refused(bad.encode(), type(doc), SignatureError)


@pytest.mark.parametrize(("doc", "key"), EXAMPLES, ids=IDS)
def test_tampered_body_refused(doc: Document, key: SigningKey) -> None:
    env = doc.sign(key).envelope
    for field, value in env.body.items():
        if isinstance(value, int) and not isinstance(value, bool):
            body = dict(env.body)
            body[field] = value + 1
            expect_refused(SignedEnvelope(env.type, body, env.signer, env.signature).encode(), type(doc), SignatureError)


@pytest.mark.parametrize(
    ("doc", "key", "error"),
    [
        (f.make_certificate(), f.AUTHORITY, UnknownIssuerError),  # issuer names AUTHORITY, ROGUE signed
        (f.make_address_record(), f.NODE_A, DocumentError),  # record of NODE_A, signed by ROGUE
        (f.make_manifest(), f.NODE_A, DocumentError),  # sender_peer NODE_A, signed by ROGUE
        (f.make_receipt(), f.NODE_B, DocumentError),  # recipient_peer NODE_B, signed by ROGUE
    ],
    ids=["Certificate", "AddressRecord", "Manifest", "Receipt"],
)
def test_valid_signature_by_a_key_other_than_the_named_signer(doc: Document, key: SigningKey, error: type[MeshError]) -> None:
    with raises_exactly(error):
        doc.sign(f.ROGUE)  # refusing to produce it at all
    data = f.resign(doc.LABEL, doc.to_body(), f.ROGUE)
    expect_refused(data, type(doc), error)


def _relabel(data: bytes, label: str) -> bytes:
    wire = cbor.decode(data)
    assert isinstance(wire, dict)
    wire["type"] = label
    return cbor.encode(wire)


@pytest.mark.parametrize(("doc", "key"), EXAMPLES, ids=IDS)
@pytest.mark.parametrize("target", DOC_TYPES, ids=[t.__name__ for t in DOC_TYPES])
def test_signature_cannot_be_replayed_as_another_type(doc: Document, key: SigningKey, target: type[Document]) -> None:
    if type(doc) is target:
        return
    data = doc.sign(key).encode()
    # Presented unchanged where another type is expected: the label is wrong.
    expect_refused(data, target, SignatureError, match="expected")
    # Relabelled as the other type: the signature covers the label, so it fails.
    expect_refused(_relabel(data, target.LABEL), target, SignatureError, match="does not verify")
    # A body signed under the other type's label, presented with its own label.
    cross = SignedEnvelope.sign(target.LABEL, doc.to_body(), key)
    forged = SignedEnvelope(doc.LABEL, cross.body, cross.signer, cross.signature).encode()
    expect_refused(forged, type(doc), SignatureError, match="does not verify")


def test_receipt_relabelled_as_certificate() -> None:
    receipt = f.make_receipt().sign(f.NODE_B).encode()
    with raises_exactly(SignatureError):
        open_document(_relabel(receipt, Certificate.LABEL), Certificate)
    with raises_exactly(SignatureError):
        open_document(receipt, Certificate)
    # The untouched receipt still opens as a receipt.
    assert open_document(receipt, Receipt).document == f.make_receipt()


def test_label_of_every_type_is_distinct() -> None:
    labels = [t.LABEL for t in DOC_TYPES]
    assert len(set(labels)) == len(labels)
    assert all(label.startswith("dicom-mesh/") and label.endswith("/v1") for label in labels)
    # No label is a prefix of another, so label || body can never be read two ways.
    assert not any(a != b and b.startswith(a) for a in labels for b in labels)


# --- fuzzing --------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(range(len(EXAMPLES))), st.data())
def test_random_mutations_raise_only_mesh_errors(index: int, data: st.DataObject) -> None:
    doc, key = EXAMPLES[index]
    good = bytearray(doc.sign(key).encode())
    for _ in range(data.draw(st.integers(1, 3))):
        position = data.draw(st.integers(0, len(good) - 1))
        kind = data.draw(st.sampled_from(["flip", "set", "delete", "insert"]))
        if kind == "flip":
            good[position] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "set":
            good[position] = data.draw(st.integers(0, 255))
        elif kind == "delete":
            del good[position]
        else:
            good.insert(position, data.draw(st.integers(0, 255)))
    mutated = bytes(good)
    try:
        opened = open_document(mutated, type(doc))
    except MeshError:
        return
    assert opened.encode() == mutated  # anything accepted is canonical and signed
