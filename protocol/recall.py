"""Recalls: the sender's signed withdrawal or correction of a manifest."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import ClassVar

from protocol.cbor import CborKey, CborValue
from protocol.certificate import Certificate
from protocol.cid import BINARY_SIZE, CID
from protocol.document import DEFAULT_SKEW, Document, Signed
from protocol.errors import DocumentError, SchemaError
from protocol.roster import Roster
from protocol.schema import Fields, check_org_code, check_uid
from protocol.trust import check_node_signature

RECALL_LABEL = "dicom-mesh/recall/v1"
MAX_REASON = 1024


class RecallAction(str, Enum):
    WITHDRAW = "withdraw"
    SUPERSEDE = "supersede"


@dataclass(frozen=True)
class Recall(Document):
    LABEL: ClassVar[str] = RECALL_LABEL
    MAX_BYTES: ClassVar[int] = 8192

    manifest_id: CID
    study_uid: str
    sender_org: str
    action: RecallAction
    superseded_by: CID | None
    reason: str
    at: int

    def __post_init__(self) -> None:
        check_uid(self.study_uid, "study_uid")
        check_org_code(self.sender_org, "sender_org")
        if (self.action is RecallAction.SUPERSEDE) != (self.superseded_by is not None):
            raise SchemaError("superseded_by is required for supersede and forbidden for withdraw")
        if len(self.reason) > MAX_REASON:
            raise SchemaError(f"reason longer than {MAX_REASON} characters")

    def to_body(self) -> dict[CborKey, CborValue]:
        return {
            "manifest": self.manifest_id.to_bytes(),
            "study": self.study_uid,
            "sender_org": self.sender_org,
            "action": self.action.value,
            "superseded_by": None if self.superseded_by is None else self.superseded_by.to_bytes(),
            "reason": self.reason,
            "at": self.at,
        }

    @classmethod
    def from_body(cls, body: CborValue) -> Recall:
        f = Fields(body, "recall")
        superseded = f.optional_blob("superseded_by", size=BINARY_SIZE)
        recall = cls(
            manifest_id=CID.from_bytes(f.blob("manifest", size=BINARY_SIZE)),
            study_uid=check_uid(f.text("study", 64), "recall.study"),
            sender_org=check_org_code(f.text("sender_org", 16), "recall.sender_org"),
            action=RecallAction(f.choice("action", frozenset(a.value for a in RecallAction))),
            superseded_by=None if superseded is None else CID.from_bytes(superseded),
            reason=f.text("reason", MAX_REASON),
            at=f.time("at"),
        )
        f.finish()
        return recall


def verify_recall(
    signed: Signed[Recall],
    sender_cert: Signed[Certificate],
    roster: Roster,
    now: float,
    *,
    skew: int = DEFAULT_SKEW,
) -> Certificate:
    """A recall must come from a node of the manifest's sender org."""
    recall = signed.document
    if recall.at > now + skew:
        raise DocumentError(f"recall dated in the future ({recall.at})")
    return check_node_signature(
        signed.signer, sender_cert, roster, org_code=recall.sender_org,
        at=recall.at, now=now, skew=skew,
    )
