"""The common shape of signed documents: a typed body inside a SignedEnvelope."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Generic, TypeVar

from protocol.cbor import DEFAULT_MAX_ITEMS, CborKey, CborValue
from protocol.cid import CID
from protocol.keys import PublicKey, SigningKey
from protocol.signing import MAX_DOCUMENT_BYTES, SignedEnvelope, decode_envelope

DEFAULT_SKEW = 300  # seconds of clock skew tolerated between nodes


class Document(ABC):
    """A document body. Subclasses are frozen dataclasses with a LABEL."""

    LABEL: ClassVar[str]
    MAX_BYTES: ClassVar[int] = MAX_DOCUMENT_BYTES
    MAX_ITEMS: ClassVar[int] = DEFAULT_MAX_ITEMS  # CBOR items (every key and value) in one document

    @abstractmethod
    def to_body(self) -> dict[CborKey, CborValue]: ...

    @classmethod
    @abstractmethod
    def from_body(cls: type[D], body: CborValue) -> D: ...

    def check_signer(self, signer: PublicKey) -> None:
        """Documents that name their signer override this to insist on it."""

    def sign(self: D, key: SigningKey) -> Signed[D]:
        """Sign this document; refuses anything its own decoder would refuse."""
        body = self.to_body()
        type(self).from_body(body)
        envelope = SignedEnvelope.sign(self.LABEL, body, key)
        self.check_signer(envelope.signer)
        return Signed(self, envelope)


D = TypeVar("D", bound=Document)


@dataclass(frozen=True)
class Signed(Generic[D]):
    """A document together with the envelope that carries its signature."""

    document: D
    envelope: SignedEnvelope

    @property
    def signer(self) -> PublicKey:
        return self.envelope.signer

    def encode(self) -> bytes:
        return self.envelope.encode()

    @property
    def cid(self) -> CID:
        return self.envelope.cid


def open_document(data: bytes, cls: type[D]) -> Signed[D]:
    """Decode bytes into a signed document of type cls, verifying its signature.

    Checks only what the bytes can prove alone (shape, canonical form, label,
    signature by the key in the envelope, that key matching the signer the
    document names). Whether that key is trusted is the caller's question.
    """
    envelope = decode_envelope(data, cls.LABEL, max_bytes=cls.MAX_BYTES, max_items=cls.MAX_ITEMS)
    document = cls.from_body(envelope.body)
    document.check_signer(envelope.signer)
    return Signed(document, envelope)
