"""A manifest's optional `attention` (a named recipient person) and `note` (free text for the recipients).

Both are signed with the rest of the manifest, left out of the encoding when empty (a manifest without them
encodes byte-identically to one made before they existed: the published vectors still hold), and refused by
the decoder with a SchemaError (wrong type, empty, characters that could pose as another header line or hide
text) or a LimitError (too long).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protocol import cbor
from protocol.cbor import CborKey, CborValue
from protocol.document import open_document
from protocol.errors import LimitError, SchemaError, SignatureError
from protocol.manifest import MAX_ATTENTION, MAX_NOTE, Manifest

from tests.protocol import factories as f
from tests.protocol.assertions import raises_exactly

ROOT = Path(__file__).resolve().parents[2]


def opened(body: dict[CborKey, CborValue]) -> Manifest:
    return open_document(f.resign(Manifest.LABEL, body, f.NODE_A), Manifest).document


def test_without_them_the_encoding_is_as_before() -> None:
    body = f.make_manifest().to_body()
    assert "attention" not in body and "note" not in body
    # the published manifest vector (made before these fields existed) opens, and re-encodes to its bytes
    vectors = json.loads((ROOT / "docs" / "protocol" / "vectors.json").read_text(encoding="utf-8"))
    entry = next(d for d in vectors["documents"] if d["type"] == Manifest.LABEL and d["name"] == "manifest")
    data = bytes.fromhex(entry["hex"])
    signed = open_document(data, Manifest)
    assert signed.document.attention == "" and signed.document.note == ""
    assert cbor.encode(signed.document.to_body()) == cbor.encode(signed.envelope.body)


def test_round_trip_with_both() -> None:
    note = "Please compare with the CT of last week.\nReport to the on-call neurosurgeon — bleep 4412."
    manifest = f.make_manifest(attention="dr.jones@rxx.nhs.uk", note=note)
    signed = manifest.sign(f.NODE_A)
    again = open_document(signed.encode(), Manifest).document
    assert again == manifest
    assert again.attention == "dr.jones@rxx.nhs.uk" and again.note == note


def test_at_the_limits() -> None:
    manifest = f.make_manifest(attention="a" * MAX_ATTENTION, note="é" * MAX_NOTE)
    assert open_document(manifest.sign(f.NODE_A).encode(), Manifest).document == manifest


def test_they_are_signed() -> None:
    data = f.make_manifest(attention="alice", note="hello").sign(f.NODE_A).encode()
    tampered = data.replace(b"alice", b"mallo")
    assert tampered != data
    with raises_exactly(SignatureError):
        open_document(tampered, Manifest)


@pytest.mark.parametrize("value", [7, b"alice", ["alice"], {"a": "b"}, None, True])
@pytest.mark.parametrize("key", ["attention", "note"])
def test_wrong_type_is_a_schema_error(key: str, value: CborValue) -> None:
    body = f.make_manifest().to_body()
    body[key] = value
    with raises_exactly(SchemaError, match=key):
        opened(body)


@pytest.mark.parametrize(("key", "limit"), [("attention", MAX_ATTENTION), ("note", MAX_NOTE)])
def test_too_long_is_a_limit_error(key: str, limit: int) -> None:
    body = f.make_manifest().to_body()
    body[key] = "x" * (limit + 1)
    with raises_exactly(LimitError, match=key):
        opened(body)
    body[key] = "x" * 1_000_000  # refused by its length, not by scanning it
    with raises_exactly(LimitError, match=key):
        opened(body)


@pytest.mark.parametrize("key", ["attention", "note"])
def test_present_but_empty_is_refused(key: str) -> None:
    # an empty field is left out; one written empty would give the same manifest a second encoding (and ID)
    body = f.make_manifest().to_body()
    body[key] = ""
    with raises_exactly(SchemaError, match="empty"):
        opened(body)


HOSTILE_ATTENTION = [
    "alice\r\nBcc: everyone@example.com",  # header injection
    "alice\nBcc: everyone@example.com",
    "alice\rX",
    "alice\x00",
    "alice\tbob",
    "alice\x7f",
    "alice\x85bob",  # C1 next line
    "alice\u2028Bcc: x@example.com",  # line separator
    "alice\u202egro.live",  # right-to-left override hides what the name really is
    "alice\u200b",  # zero-width space
    " alice",
    "alice ",
]


@pytest.mark.parametrize("value", HOSTILE_ATTENTION)
def test_hostile_attention_is_refused(value: str) -> None:
    body = f.make_manifest().to_body()
    body["attention"] = value
    with raises_exactly(SchemaError, match="attention"):
        opened(body)
    with raises_exactly(SchemaError, match="attention"):  # and never signed by this side either
        f.make_manifest(attention=value)


@pytest.mark.parametrize("value", ["line one\r\nline two", "a\rb", "a\x00b", "a\x1bb", "a\u2029b", "a\u202eb",
                                   "\nleading break", "trailing break\n"])
def test_hostile_note_is_refused(value: str) -> None:
    body = f.make_manifest().to_body()
    body["note"] = value
    with raises_exactly(SchemaError, match="note"):
        opened(body)


def test_a_note_may_have_line_feeds() -> None:
    assert f.make_manifest(note="one\ntwo\n\nthree").note == "one\ntwo\n\nthree"
