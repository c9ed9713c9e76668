"""CIDs agree with the multiformats reference libraries and IPFS's well-known names."""

from __future__ import annotations

import base64

import multibase
import multihash
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.cid import BINARY_SIZE, CID, TEXT_SIZE
from protocol.errors import SchemaError

from tests.protocol.assertions import raises_exactly

EMPTY_CID = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
HELLO_WORLD_CID = "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"


def reference_cid(data: bytes) -> str:
    """The CID as computed by py-multibase and py-multihash, not by our code."""
    text = multibase.encode("base32", bytes([1, 0x55]) + multihash.digest(data, "sha2-256").encode())
    return text.decode("ascii") if isinstance(text, bytes) else str(text)


def test_empty_block_cid_pinned() -> None:
    assert str(CID.of(b"")) == EMPTY_CID
    assert reference_cid(b"") == EMPTY_CID


def test_hello_world_cid_pinned() -> None:
    # `ipfs add --raw-leaves --cid-version 1` of the 11 bytes "hello world"
    assert str(CID.of(b"hello world")) == HELLO_WORLD_CID
    assert reference_cid(b"hello world") == HELLO_WORLD_CID


@pytest.mark.parametrize(
    "data",
    [b"\x00", b"hello world", bytes(range(256)), b"\xff" * 262_144, b"DICM" * 1000],
    ids=["nul", "hello", "bytes0-255", "256KiB", "DICM"],
)
def test_matches_multiformats_reference(data: bytes) -> None:
    cid = CID.of(data)
    assert str(cid) == reference_cid(data)
    assert cid.to_bytes() == bytes([1, 0x55]) + multihash.digest(data, "sha2-256").encode()
    assert cid.matches(data)
    assert not cid.matches(data + b"\x00")


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=512))
def test_text_and_binary_round_trip(data: bytes) -> None:
    cid = CID.of(data)
    text = str(cid)
    assert len(text) == TEXT_SIZE
    assert text == reference_cid(data)
    assert CID.parse(text) == cid
    assert CID.from_bytes(cid.to_bytes()) == cid
    assert len(cid.to_bytes()) == BINARY_SIZE


def test_ordering_and_hashing() -> None:
    a, b = CID.of(b"a"), CID.of(b"b")
    assert len({a, b, CID.of(b"a")}) == 2
    assert sorted([a, b]) == sorted([b, a])


def _cid_text(raw: bytes) -> str:
    return "b" + base64.b32encode(raw).decode().lower().rstrip("=")


def _dag_pb_cid(data: bytes) -> str:
    return _cid_text(bytes([1, 0x70]) + multihash.digest(data, "sha2-256").encode())


def _other_hash_cid() -> str:
    # Same length as ours, but the multihash says sha2-512 (0x13) truncated to 32 bytes.
    return _cid_text(bytes([1, 0x55, 0x13, 0x20]) + bytes(32))


@pytest.mark.parametrize(
    "text, why",
    [
        (EMPTY_CID.upper(), "upper-case"),
        ("B" + EMPTY_CID[1:], "upper-case multibase prefix"),
        ("z" + EMPTY_CID[1:], "wrong multibase prefix"),
        (EMPTY_CID[1:] + "a", "no multibase prefix"),
        (EMPTY_CID[:-1], "too short"),
        (EMPTY_CID + "a", "too long"),
        ("", "empty"),
        ("QmbWqxBEKC3P8tqsKc98xmWNzrzDtRLMiMPL8wBuTGsMnR", "CIDv0"),
        (_dag_pb_cid(b""), "dag-pb codec"),
        (_other_hash_cid(), "other hash function"),
        (_cid_text(bytes([1, 0x55, 0x00, 0x20]) + bytes(32)), "identity multihash"),
        (EMPTY_CID[:-2] + "1a", "not base32"),
        (EMPTY_CID[:-1] + "v", "non-zero padding bits"),
        (EMPTY_CID[:-5] + "é" + EMPTY_CID[-4:], "non-ASCII"),
    ],
)
def test_parse_refuses_bad_text(text: str, why: str) -> None:
    with raises_exactly(SchemaError):
        CID.parse(text)


def test_from_bytes_refuses_other_prefixes() -> None:
    good = CID.of(b"").to_bytes()
    for bad in [good[:-1], good + b"\x00", bytes([0]) + good[1:], good[:1] + b"\x70" + good[2:], good[:2] + b"\x13" + good[3:]]:
        with raises_exactly(SchemaError):
            CID.from_bytes(bad)


def test_digest_size_checked() -> None:
    with raises_exactly(SchemaError):
        CID(b"\x00" * 31)
