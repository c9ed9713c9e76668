"""Forward reports: a recipient's signed statement of how its PACS forward of a received study went.

Sent by the recipient org's node to the manifest's sender after a forward to its PACS destinations ends
(forwarded, failed for good, or held for a person). It names the manifest (like a receipt), never the
patient or the study UID: per destination only an operator-chosen label, a state and instance counts.
A later report supersedes an earlier one: `seq` only goes up (`supersedes`); a replayed or out-of-order
report changes nothing at the sender.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import ClassVar

from protocol.cbor import CborKey, CborValue
from protocol.certificate import Certificate
from protocol.cid import BINARY_SIZE, CID
from protocol.document import DEFAULT_SKEW, Document, Signed
from protocol.errors import DocumentError, LimitError, SchemaError
from protocol.keys import PublicKey
from protocol.manifest import MAX_INSTANCES
from protocol.roster import Roster
from protocol.schema import Fields, check_org_code
from protocol.trust import check_node_signature

FORWARD_REPORT_LABEL = "dicom-mesh/forward-report/v1"
MAX_DESTINATIONS = 16
MAX_LABEL = 64
MAX_SEQ = 2**53


class ForwardState(str, Enum):
    FORWARDED = "forwarded"
    FAILED = "failed"  # for good (retries exhausted or refused by the PACS)
    HELD = "held"  # waiting for a person (reconciliation, a conflict)


@dataclass(frozen=True)
class DestinationReport:
    """One PACS destination: its label (the operator's [[pacs]] name, no patient data), state, counts."""

    label: str
    state: ForwardState
    sent: int
    total: int

    def __post_init__(self) -> None:
        if not self.label or len(self.label) > MAX_LABEL or not self.label.isprintable():
            raise SchemaError(f"forward report destination label: 1..{MAX_LABEL} printable characters")
        if not 0 <= self.sent <= self.total <= MAX_INSTANCES:
            raise LimitError(f"forward report destination: sent {self.sent} of {self.total} out of range")

    def to_body(self) -> dict[CborKey, CborValue]:
        return {"label": self.label, "state": self.state.value, "sent": self.sent, "total": self.total}

    @classmethod
    def from_item(cls, value: CborValue, what: str) -> DestinationReport:
        f = Fields(value, what)
        item = cls(
            label=f.text("label", MAX_LABEL, min_len=1),
            state=ForwardState(f.choice("state", frozenset(s.value for s in ForwardState))),
            sent=f.integer("sent", 0, MAX_INSTANCES),
            total=f.integer("total", 0, MAX_INSTANCES),
        )
        f.finish()
        return item


@dataclass(frozen=True)
class ForwardReport(Document):
    LABEL: ClassVar[str] = FORWARD_REPORT_LABEL
    MAX_BYTES: ClassVar[int] = 4096

    manifest_id: CID
    recipient_org: str
    recipient_peer: str
    seq: int
    destinations: tuple[DestinationReport, ...]
    at: int

    def __post_init__(self) -> None:
        check_org_code(self.recipient_org, "recipient_org")
        PublicKey.from_peer_id(self.recipient_peer)
        if not 1 <= len(self.destinations) <= MAX_DESTINATIONS:
            raise LimitError(f"forward report: 1..{MAX_DESTINATIONS} destinations, got {len(self.destinations)}")
        labels = [d.label for d in self.destinations]
        if labels != sorted(set(labels)):
            raise SchemaError("forward report destinations must be sorted by label, each once")
        if not 0 <= self.seq <= MAX_SEQ:
            raise LimitError(f"forward report seq {self.seq} out of range")

    def check_signer(self, signer: PublicKey) -> None:
        if signer.peer_id != self.recipient_peer:
            raise DocumentError("forward report not signed by the recipient peer it names")

    def to_body(self) -> dict[CborKey, CborValue]:
        return {
            "manifest": self.manifest_id.to_bytes(),
            "recipient_org": self.recipient_org,
            "recipient_peer": self.recipient_peer,
            "seq": self.seq,
            "destinations": [d.to_body() for d in self.destinations],
            "at": self.at,
        }

    @classmethod
    def from_body(cls, body: CborValue) -> ForwardReport:
        f = Fields(body, "forward report")
        report = cls(
            manifest_id=CID.from_bytes(f.blob("manifest", size=BINARY_SIZE)),
            recipient_org=check_org_code(f.text("recipient_org", 16), "forward_report.recipient_org"),
            recipient_peer=f.text("recipient_peer", 64),
            seq=f.integer("seq", 0, MAX_SEQ),
            destinations=f.array("destinations", DestinationReport.from_item, max_items=MAX_DESTINATIONS,
                                 min_items=1),
            at=f.time("at"),
        )
        f.finish()
        return report

    @property
    def sent(self) -> int:
        return sum(d.sent for d in self.destinations)

    @property
    def total(self) -> int:
        return sum(d.total for d in self.destinations)

    @property
    def summary(self) -> ForwardState:
        """The report as one state: failed if any destination failed, else held if any is held."""
        states = {d.state for d in self.destinations}
        for state in (ForwardState.FAILED, ForwardState.HELD):
            if state in states:
                return state
        return ForwardState.FORWARDED


def supersedes(new: ForwardReport, old: ForwardReport | None) -> bool:
    """Whether `new` replaces the stored report `old` (same manifest and org): only a higher seq does; an
    equal one is a replay and a lower one arrived out of order, and neither changes anything."""
    if old is None:
        return True
    if (new.manifest_id, new.recipient_org) != (old.manifest_id, old.recipient_org):
        raise DocumentError("forward reports of different manifests or organisations are not comparable")
    return new.seq > old.seq


def verify_forward_report(
    signed: Signed[ForwardReport],
    recipient_cert: Signed[Certificate],
    roster: Roster,
    now: float,
    *,
    skew: int = DEFAULT_SKEW,
) -> Certificate:
    """Signed by a node certified, now and when it says it signed, for the recipient org it names (the same
    trust rule as a receipt: protocol.trust.check_node_signature). Whether that org is a recipient of the
    manifest is the sender's check (it holds the manifest)."""
    report = signed.document
    if report.at > now + skew:
        raise DocumentError(f"forward report dated in the future ({report.at})")
    return check_node_signature(
        signed.signer, recipient_cert, roster, org_code=report.recipient_org,
        at=report.at, now=now, skew=skew,
    )
