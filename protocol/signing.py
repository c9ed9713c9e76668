"""Signed envelopes: one wire shape for every signed document.

    {"type": <label>, "body": <map>, "signer": <32-byte Ed25519 key>, "sig": <64 bytes>}

The signature is Ed25519 over `label || canonical(body)`, where the label is
the document type (for example `dicom-mesh/manifest/v1`). A signature made
for one document type therefore never verifies as another, even if the
`type` field is rewritten. The envelope must itself be canonical CBOR, so
one document has exactly one encoding and its CID is stable.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from protocol import cbor
from protocol.cbor import CborKey, CborValue
from protocol.cid import CID
from protocol.errors import LimitError, SchemaError, SignatureError
from protocol.keys import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, PublicKey, SigningKey
from protocol.schema import Fields

LABEL_PREFIX = "dicom-mesh/"
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024


def signing_input(label: str, body: dict[CborKey, CborValue]) -> bytes:
    return label.encode("ascii") + cbor.encode(body)


@dataclass(frozen=True)
class SignedEnvelope:
    type: str
    body: dict[CborKey, CborValue]
    signer: PublicKey
    signature: bytes

    @classmethod
    def sign(cls, label: str, body: dict[CborKey, CborValue], key: SigningKey) -> SignedEnvelope:
        return cls(label, body, key.public_key, key.sign(signing_input(label, body)))

    def to_wire(self) -> dict[CborKey, CborValue]:
        return {"type": self.type, "body": self.body, "signer": self.signer.raw, "sig": self.signature}

    def encode(self) -> bytes:
        return self._encoded

    @cached_property
    def _encoded(self) -> bytes:
        # Computed once (an envelope is never modified after it is made). An envelope decoded
        # from the wire starts with the bytes it came from: strict decoding guarantees they are
        # exactly its canonical encoding.
        return cbor.encode(self.to_wire())

    @cached_property
    def cid(self) -> CID:
        return CID.of(self.encode())

    def verify(self, label: str) -> None:
        """Check the signature under the expected document label."""
        if self.type != label:
            raise SignatureError(f"document type {self.type!r} where {label!r} was expected")
        self.signer.verify(label.encode("ascii") + self._body_encoding(), self.signature)

    def _body_encoding(self) -> bytes:
        """cbor.encode(body), cut from the envelope's own encoding instead of computed again.

        A canonical map is its head, then each key and value encoded, keys in canonical order
        ("sig", "body", "type", "signer"): everything between the encoded "body" key and the
        encoded "type" key is the body's encoding. Checked, not assumed: the small pieces around
        it are encoded here and compared (an envelope built in memory gets the same bytes).
        """
        whole = self._encoded
        prefix = b"\xa4" + cbor.encode("sig") + cbor.encode(self.signature) + cbor.encode("body")
        suffix = cbor.encode("type") + cbor.encode(self.type) + cbor.encode("signer") + cbor.encode(self.signer.raw)
        if whole.startswith(prefix) and whole.endswith(suffix) and len(whole) > len(prefix) + len(suffix):
            return whole[len(prefix):len(whole) - len(suffix)]
        return cbor.encode(self.body)  # the definition, should the layout ever differ


def decode_envelope(
    data: bytes,
    label: str,
    *,
    max_bytes: int = MAX_DOCUMENT_BYTES,
    max_items: int = cbor.DEFAULT_MAX_ITEMS,
) -> SignedEnvelope:
    """Decode an envelope and verify its signature under `label`.

    Checks in order: size, strict canonical CBOR, envelope shape, type,
    signature. Content checks (certificate, org, times) are the caller's.
    """
    env = parse_envelope(data, max_bytes=max_bytes, max_items=max_items)
    env.verify(label)
    return env


def parse_envelope(
    data: bytes, *, max_bytes: int = MAX_DOCUMENT_BYTES, max_items: int = cbor.DEFAULT_MAX_ITEMS
) -> SignedEnvelope:
    """Decode an envelope without verifying it (for inspection and dispatch)."""
    if len(data) > max_bytes:
        raise LimitError(f"document of {len(data)} bytes exceeds {max_bytes}")
    fields = Fields(cbor.decode(data, max_items=max_items), "envelope")
    label = fields.text("type", 64)
    if not label.startswith(LABEL_PREFIX):
        raise SchemaError(f"envelope.type {label!r} is not a dicom-mesh document type")
    body = fields.map("body")
    signer = PublicKey(fields.blob("signer", size=PUBLIC_KEY_SIZE))
    signature = fields.blob("sig", size=SIGNATURE_SIZE)
    fields.finish()
    envelope = SignedEnvelope(label, body, signer, signature)
    envelope.__dict__["_encoded"] = bytes(data)  # the canonical encoding, as decoded (see _encoded)
    return envelope
