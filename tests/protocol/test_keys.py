"""Ed25519 keys and libp2p peer IDs agree with py-libp2p; signatures fail closed."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from libp2p.crypto.ed25519 import Ed25519PrivateKey
from libp2p.peer.id import ID

from protocol.errors import SchemaError, SignatureError
from protocol.keys import PublicKey, SigningKey, b58decode, b58encode

from tests.protocol.assertions import raises_exactly

seeds = st.binary(min_size=32, max_size=32)


def libp2p_peer_id(seed: bytes) -> str:
    return str(ID.from_pubkey(Ed25519PrivateKey.from_bytes(seed).get_public_key()).to_base58())


@settings(max_examples=50, deadline=None)
@given(seeds)
def test_peer_id_matches_py_libp2p(seed: bytes) -> None:
    key = SigningKey(seed)
    assert key.peer_id == libp2p_peer_id(seed)
    assert key.peer_id.startswith("12D3KooW")
    # The same key signs identically in both libraries (Ed25519 is deterministic).
    assert key.sign(b"msg") == Ed25519PrivateKey.from_bytes(seed).sign(b"msg")


def test_peer_id_pinned() -> None:
    assert SigningKey(bytes(32)).peer_id == "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"


@settings(max_examples=50, deadline=None)
@given(seeds)
def test_from_peer_id_round_trip(seed: bytes) -> None:
    key = SigningKey(seed)
    assert PublicKey.from_peer_id(key.peer_id) == key.public_key
    assert SigningKey(key.seed).public_key == key.public_key


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=40))
def test_base58_round_trip(raw: bytes) -> None:
    assert b58decode(b58encode(raw)) == raw


@settings(max_examples=50, deadline=None)
@given(seeds, st.binary(max_size=200))
def test_sign_verify(seed: bytes, message: bytes) -> None:
    key = SigningKey(seed)
    key.public_key.verify(message, key.sign(message))


@settings(max_examples=50, deadline=None)
@given(seeds, st.binary(max_size=100), st.integers(0, 64 * 8 - 1))
def test_any_flipped_signature_bit_fails(seed: bytes, message: bytes, bit: int) -> None:
    key = SigningKey(seed)
    sig = bytearray(key.sign(message))
    sig[bit // 8] ^= 1 << (bit % 8)
    with raises_exactly(SignatureError):
        key.public_key.verify(message, bytes(sig))


def test_bad_signatures() -> None:
    key, other = SigningKey(b"\x01" * 32), SigningKey(b"\x02" * 32)
    sig = key.sign(b"message")
    cases = [
        (key.public_key, b"message!", sig),  # other message
        (other.public_key, b"message", sig),  # other key
        (key.public_key, b"message", sig[:63]),  # short
        (key.public_key, b"message", sig + b"\x00"),  # long
        (key.public_key, b"message", b""),
        (key.public_key, b"message", bytes(64)),
        (key.public_key, b"message", b"\xff" * 64),  # S above the group order
        (PublicKey(bytes(32)), b"message", sig),  # small-order public key
        (PublicKey(b"\xff" * 32), b"message", sig),  # not a curve point
    ]
    for public, message, signature in cases:
        with raises_exactly(SignatureError):
            public.verify(message, signature)


@pytest.mark.parametrize(
    "text, why",
    [
        ("", "empty"),
        ("12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXT", "truncated"),
        ("12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTNN", "too long"),
        ("12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXT0", "0 is not base58"),
        ("12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTl", "l is not base58"),
        ("QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N", "sha2-256 (RSA-style) peer ID"),
        ("1" * 100, "absurdly long"),
        ("112D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN", "leading zero byte"),
    ],
)
def test_from_peer_id_refuses_bad_text(text: str, why: str) -> None:
    with raises_exactly(SchemaError):
        PublicKey.from_peer_id(text)


def test_key_sizes_checked() -> None:
    with raises_exactly(SchemaError):
        SigningKey(b"\x00" * 31)
    with raises_exactly(SchemaError):
        PublicKey(b"\x00" * 33)


def test_signing_key_never_shows_its_seed() -> None:
    key = SigningKey(b"\x07" * 32)
    assert key.seed.hex() not in repr(key)
    assert key.peer_id in repr(key)
