"""Ed25519 keys and libp2p peer IDs.

A node's identity is one Ed25519 key pair; its libp2p peer ID is the
identity multihash of the protobuf-encoded public key, in base58btc: the
same text py-libp2p's `ID.from_pubkey` and every other libp2p produce.
Key generation needs randomness, which is I/O: callers pass a 32-byte seed.
"""

from __future__ import annotations

from dataclasses import dataclass

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey as _NaclSigningKey
from nacl.signing import VerifyKey as _NaclVerifyKey

from protocol.errors import MeshError, SchemaError, SignatureError

SEED_SIZE = 32
PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64

# libp2p crypto.pb PublicKey { Type = Ed25519 (1); Data = 32 bytes }
_PB_PREFIX = bytes((0x08, 0x01, 0x12, PUBLIC_KEY_SIZE))
# identity multihash (code 0x00) of the 36-byte protobuf
_PEER_ID_PREFIX = bytes((0x00, len(_PB_PREFIX) + PUBLIC_KEY_SIZE)) + _PB_PREFIX
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58)}


def b58encode(raw: bytes) -> str:
    n = int.from_bytes(raw, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(_B58[r])
    zeros = len(raw) - len(raw.lstrip(b"\x00"))
    return "1" * zeros + "".join(reversed(out))


def b58decode(text: str) -> bytes:
    n = 0
    for c in text:
        if c not in _B58_INDEX:
            raise SchemaError(f"invalid base58 character {c!r}")
        n = n * 58 + _B58_INDEX[c]
    zeros = len(text) - len(text.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\x00" * zeros + body


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != PUBLIC_KEY_SIZE:
            raise SchemaError(f"Ed25519 public key must be {PUBLIC_KEY_SIZE} bytes")

    @property
    def peer_id(self) -> str:
        """The libp2p peer ID text (12D3KooW...)."""
        return b58encode(_PEER_ID_PREFIX + self.raw)

    @classmethod
    def from_peer_id(cls, peer_id: str) -> PublicKey:
        """Recover the key embedded in an Ed25519 peer ID."""
        if len(peer_id) > 64:
            raise SchemaError("peer ID too long")
        raw = b58decode(peer_id)
        if len(raw) != len(_PEER_ID_PREFIX) + PUBLIC_KEY_SIZE or not raw.startswith(_PEER_ID_PREFIX):
            raise SchemaError("not an Ed25519 libp2p peer ID")
        key = cls(raw[len(_PEER_ID_PREFIX) :])
        if key.peer_id != peer_id:
            raise SchemaError("peer ID is not in canonical form")
        return key

    @classmethod
    def check_peer_id(cls, peer_id: str, what: str) -> str:
        """`peer_id` if it is an Ed25519 peer ID (a configuration check: the error names `what`)."""
        try:
            cls.from_peer_id(peer_id)
        except MeshError as exc:
            raise SchemaError(f"{what}: {exc} (got {peer_id[:64]!r})") from None
        return peer_id

    def verify(self, message: bytes, signature: bytes) -> None:
        """Raise SignatureError unless signature is this key's over message."""
        if len(signature) != SIGNATURE_SIZE:
            raise SignatureError("signature must be 64 bytes")
        try:
            _NaclVerifyKey(self.raw).verify(message, signature)
        except BadSignatureError:
            raise SignatureError("signature does not verify") from None
        except ValueError as exc:  # malformed point encodings
            raise SignatureError(f"signature does not verify: {exc}") from None

    def __str__(self) -> str:
        return self.peer_id


class SigningKey:
    """An Ed25519 private key. Never logged, never encoded by accident."""

    __slots__ = ("_key", "public_key")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_SIZE:
            raise SchemaError(f"Ed25519 seed must be {SEED_SIZE} bytes")
        self._key = _NaclSigningKey(seed)
        self.public_key = PublicKey(bytes(self._key.verify_key))

    @property
    def seed(self) -> bytes:
        return bytes(self._key)

    @property
    def peer_id(self) -> str:
        return self.public_key.peer_id

    def sign(self, message: bytes) -> bytes:
        return bytes(self._key.sign(message).signature)

    def __repr__(self) -> str:
        return f"SigningKey(public={self.public_key.peer_id})"
