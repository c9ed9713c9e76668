"""Content identifiers: CIDv1, raw codec (0x55), sha2-256 multihash, base32 text.

These are the names IPFS tooling gives raw blocks (`bafkrei...`), so a
block on a dicom-mesh node can be checked with standard tools.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from protocol.errors import SchemaError

CID_VERSION = 0x01
RAW_CODEC = 0x55
SHA2_256 = 0x12
DIGEST_SIZE = 32
_PREFIX = bytes((CID_VERSION, RAW_CODEC, SHA2_256, DIGEST_SIZE))
BINARY_SIZE = len(_PREFIX) + DIGEST_SIZE
TEXT_SIZE = 1 + 58  # 'b' + base32 of 36 bytes without padding


@dataclass(frozen=True, order=True)
class CID:
    """A raw-codec sha2-256 CIDv1. Compare, hash and sort freely."""

    digest: bytes

    def __post_init__(self) -> None:
        if len(self.digest) != DIGEST_SIZE:
            raise SchemaError(f"CID digest must be {DIGEST_SIZE} bytes")

    @classmethod
    def of(cls, data: bytes) -> CID:
        """The CID naming these bytes."""
        return cls(hashlib.sha256(data).digest())

    @classmethod
    def from_bytes(cls, raw: bytes) -> CID:
        if len(raw) != BINARY_SIZE or raw[:4] != _PREFIX:
            raise SchemaError("not a CIDv1 raw sha2-256 binary CID")
        return cls(bytes(raw[4:]))

    @classmethod
    def parse(cls, text: str) -> CID:
        if len(text) != TEXT_SIZE or not text.startswith("b"):
            raise SchemaError(f"not a base32 CIDv1: {text[:80]!r}")
        body = text[1:]
        if body != body.lower():
            raise SchemaError("CID text must be lower-case base32")
        try:
            raw = base64.b32decode(body.upper() + "======")
        except ValueError:
            raise SchemaError("CID text is not base32") from None
        cid = cls.from_bytes(raw)
        if str(cid) != text:
            raise SchemaError("CID text is not in canonical form")
        return cid

    def to_bytes(self) -> bytes:
        return _PREFIX + self.digest

    def __str__(self) -> str:
        return "b" + base64.b32encode(self.to_bytes()).decode("ascii").lower().rstrip("=")

    def __repr__(self) -> str:
        return f"CID({self})"

    def matches(self, data: bytes) -> bool:
        """True when data hashes to this CID."""
        return hashlib.sha256(data).digest() == self.digest
