"""Receipts: the recipient's signed statement that it holds the whole study, verified."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from protocol.cbor import CborKey, CborValue
from protocol.certificate import Certificate
from protocol.cid import BINARY_SIZE, CID
from protocol.document import DEFAULT_SKEW, Document, Signed
from protocol.errors import DocumentError
from protocol.keys import PublicKey
from protocol.manifest import MAX_INSTANCES
from protocol.roster import Roster
from protocol.schema import Fields, check_org_code
from protocol.trust import check_node_signature

RECEIPT_LABEL = "dicom-mesh/receipt/v1"


@dataclass(frozen=True)
class Receipt(Document):
    LABEL: ClassVar[str] = RECEIPT_LABEL
    MAX_BYTES: ClassVar[int] = 4096

    manifest_id: CID
    recipient_org: str
    recipient_peer: str
    instances_verified: int
    at: int

    def __post_init__(self) -> None:
        check_org_code(self.recipient_org, "recipient_org")
        PublicKey.from_peer_id(self.recipient_peer)

    def check_signer(self, signer: PublicKey) -> None:
        if signer.peer_id != self.recipient_peer:
            raise DocumentError("receipt not signed by the recipient peer it names")

    def to_body(self) -> dict[CborKey, CborValue]:
        return {
            "manifest": self.manifest_id.to_bytes(),
            "recipient_org": self.recipient_org,
            "recipient_peer": self.recipient_peer,
            "instances_verified": self.instances_verified,
            "at": self.at,
        }

    @classmethod
    def from_body(cls, body: CborValue) -> Receipt:
        f = Fields(body, "receipt")
        receipt = cls(
            manifest_id=CID.from_bytes(f.blob("manifest", size=BINARY_SIZE)),
            recipient_org=check_org_code(f.text("recipient_org", 16), "receipt.recipient_org"),
            recipient_peer=f.text("recipient_peer", 64),
            instances_verified=f.integer("instances_verified", 0, MAX_INSTANCES),
            at=f.time("at"),
        )
        f.finish()
        return receipt


def verify_receipt(
    signed: Signed[Receipt],
    recipient_cert: Signed[Certificate],
    roster: Roster,
    now: float,
    *,
    skew: int = DEFAULT_SKEW,
) -> Certificate:
    receipt = signed.document
    if receipt.at > now + skew:
        raise DocumentError(f"receipt dated in the future ({receipt.at})")
    return check_node_signature(
        signed.signer, recipient_cert, roster, org_code=receipt.recipient_org,
        at=receipt.at, now=now, skew=skew,
    )
