"""Signed address records: where a node can be reached, signed by the node itself."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from protocol.cbor import CborKey, CborValue
from protocol.document import DEFAULT_SKEW, Document
from protocol.errors import DocumentError, DocumentExpiredError, SchemaError
from protocol.keys import PublicKey
from protocol.schema import Fields, text_item

ADDRESS_RECORD_LABEL = "dicom-mesh/address-record/v1"
MAX_ADDRS = 16
MAX_ADDR_LEN = 256


def _addr_item(value: CborValue, what: str) -> str:
    addr = text_item(MAX_ADDR_LEN)(value, what)
    check_multiaddr_text(addr, what)
    return addr


def check_multiaddr_text(addr: str, what: str = "multiaddr") -> str:
    if not addr.startswith("/") or addr.endswith("/") or "//" in addr or any(c.isspace() for c in addr):
        raise SchemaError(f"{what}: {addr[:80]!r} is not a multiaddr")
    return addr


@dataclass(frozen=True)
class AddressRecord(Document):
    LABEL: ClassVar[str] = ADDRESS_RECORD_LABEL
    MAX_BYTES: ClassVar[int] = 8192

    peer_id: str
    addrs: tuple[str, ...]
    seq: int
    expires_at: int

    def __post_init__(self) -> None:
        PublicKey.from_peer_id(self.peer_id)
        if not 1 <= len(self.addrs) <= MAX_ADDRS:
            raise SchemaError(f"address record needs 1..{MAX_ADDRS} addresses")
        for addr in self.addrs:
            check_multiaddr_text(addr)

    def check_signer(self, signer: PublicKey) -> None:
        if signer.peer_id != self.peer_id:
            raise DocumentError("address record not signed by the peer it describes")

    def check_live(self, now: float, skew: int = DEFAULT_SKEW) -> None:
        if now - skew > self.expires_at:
            raise DocumentExpiredError(f"address record of {self.peer_id} expired at {self.expires_at}")

    def to_body(self) -> dict[CborKey, CborValue]:
        return {
            "peer": self.peer_id,
            "addrs": list(self.addrs),
            "seq": self.seq,
            "expires_at": self.expires_at,
        }

    @classmethod
    def from_body(cls, body: CborValue) -> AddressRecord:
        f = Fields(body, "address_record")
        record = cls(
            peer_id=f.text("peer", 64),
            addrs=f.array("addrs", _addr_item, max_items=MAX_ADDRS, min_items=1),
            seq=f.integer("seq"),
            expires_at=f.time("expires_at"),
        )
        f.finish()
        return record
