"""Study requests: one organisation asks another for a patient's imaging (pull), and the holder's answers.

Two signed documents, each with its own label so neither can be replayed as the other (or as any other
document):

- `StudyRequest` (dicom-mesh/study-request/v1), signed by a node of the requesting org and naming it
  (`requester_peer`): who is asked (`holder_org`), for which patient (NHS number and/or the holder's
  local patient ID), which studies (date range, modality), why (reason, purpose), how urgently
  (priority), by whom (`requested_by`: the requesting user, for both sides' audit: an identity, never a
  permission), with a random 16-byte `request_id` and an expiry (at most MAX_LIFETIME after creation).
- `RequestResponse` (dicom-mesh/study-request-response/v1), signed by a node of the holder org: the
  request's new state (approved with the manifests of the shares made, declined with a reason, expired).

Checks here are what the bytes prove alone (shape, limits, signature, the signer being the peer the
document names); `verify_request` / `verify_response` add the trust rule (certificate valid, issuer in
the roster, not revoked, of the org the document claims); protocol.request_lifecycle says which state
changes are allowed. The wire spec is docs/protocol/requests.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import ClassVar

from protocol.cbor import CborKey, CborValue
from protocol.certificate import Certificate
from protocol.cid import BINARY_SIZE, CID
from protocol.document import DEFAULT_SKEW, Document, Signed
from protocol.errors import DocumentError, DocumentExpiredError, SchemaError
from protocol.keys import PublicKey
from protocol.manifest import Priority, Purpose
from protocol.reconciliation import nhs_number_valid
from protocol.roster import Roster
from protocol.schema import Fields, check_org_code
from protocol.trust import check_node_signature

REQUEST_LABEL = "dicom-mesh/study-request/v1"
RESPONSE_LABEL = "dicom-mesh/study-request-response/v1"

REQUEST_ID_BYTES = 16
MAX_REASON = 1024
MAX_PATIENT_ID = 64
MAX_USER = 128
MAX_MODALITY = 16
#: a request lives at most this long (seconds) after it is made; the holder refuses it after its expiry
MAX_LIFETIME = 30 * 86400
DEFAULT_LIFETIME = 7 * 86400
#: manifests one approval may name
MAX_RESPONSE_MANIFESTS = 64

_DATE = re.compile(r"^[0-9]{8}$")
_MODALITY = re.compile(r"^[A-Z0-9]{1,16}$")


class RequestReplayError(DocumentError):
    """A request (or response) whose ID this node has already received: refused, nothing stored."""

    code = 506
    name = "request-replayed"


class RequestState(str, Enum):
    PENDING = "pending"  # at the holder: waiting (queue) for a PACS-team user
    APPROVED = "approved"  # shares made (the response names their manifests)
    DECLINED = "declined"  # with a reason
    EXPIRED = "expired"  # nobody decided before the request's expiry

    @property
    def final(self) -> bool:
        return self is not RequestState.PENDING


def check_date(value: str, what: str) -> str:
    """"" or a DICOM DA (YYYYMMDD)."""
    if value and not _DATE.fullmatch(value):
        raise SchemaError(f"{what}: a date is YYYYMMDD")
    return value


def check_modality(value: str, what: str) -> str:
    if value and not _MODALITY.fullmatch(value):
        raise SchemaError(f"{what}: a modality is 1-16 characters of A-Z and 0-9 (CT, MR, ...)")
    return value


def check_nhs_number(value: str, what: str) -> str:
    if value and not nhs_number_valid(value):
        raise SchemaError(f"{what}: not a valid NHS number (ten digits, modulus 11)")
    return value


def request_id_text(request_id: bytes) -> str:
    return request_id.hex()


def parse_request_id(text: str) -> bytes:
    if not re.fullmatch(r"[0-9a-f]{32}", text):
        raise SchemaError("a request ID is 32 lowercase hex digits")
    return bytes.fromhex(text)


@dataclass(frozen=True)
class StudyRequest(Document):
    LABEL: ClassVar[str] = REQUEST_LABEL
    MAX_BYTES: ClassVar[int] = 8192

    request_id: bytes
    requester_org: str
    requester_peer: str
    holder_org: str
    nhs_number: str
    patient_id: str
    date_from: str
    date_to: str
    modality: str
    reason: str
    priority: Priority
    purpose: Purpose
    requested_by: str
    created_at: int
    expires_at: int

    def __post_init__(self) -> None:
        if len(self.request_id) != REQUEST_ID_BYTES:
            raise SchemaError(f"request_id must be {REQUEST_ID_BYTES} bytes")
        check_org_code(self.requester_org, "requester_org")
        check_org_code(self.holder_org, "holder_org")
        if self.requester_org == self.holder_org:
            raise SchemaError("an organisation does not request studies from itself")
        PublicKey.from_peer_id(self.requester_peer)
        check_nhs_number(self.nhs_number, "nhs_number")
        if not self.nhs_number and not self.patient_id:
            raise SchemaError("a request names the patient: an NHS number or the holder's patient ID")
        if len(self.patient_id) > MAX_PATIENT_ID:
            raise SchemaError(f"patient_id longer than {MAX_PATIENT_ID} characters")
        check_date(self.date_from, "date_from")
        check_date(self.date_to, "date_to")
        if self.date_from and self.date_to and self.date_from > self.date_to:
            raise SchemaError("date_from is after date_to")
        check_modality(self.modality, "modality")
        if not self.reason.strip() or len(self.reason) > MAX_REASON:
            raise SchemaError(f"a request needs a reason of 1-{MAX_REASON} characters")
        if not self.requested_by or len(self.requested_by) > MAX_USER:
            raise SchemaError(f"requested_by must be 1-{MAX_USER} characters")
        if not self.created_at < self.expires_at <= self.created_at + MAX_LIFETIME:
            raise SchemaError(f"a request expires after it is made, within {MAX_LIFETIME} s")

    @property
    def id_text(self) -> str:
        return request_id_text(self.request_id)

    def check_signer(self, signer: PublicKey) -> None:
        if signer.peer_id != self.requester_peer:
            raise DocumentError("request not signed by the requester peer it names")

    def to_body(self) -> dict[CborKey, CborValue]:
        return {
            "id": self.request_id, "requester_org": self.requester_org, "requester_peer": self.requester_peer,
            "holder_org": self.holder_org, "nhs_number": self.nhs_number, "patient_id": self.patient_id,
            "date_from": self.date_from, "date_to": self.date_to, "modality": self.modality,
            "reason": self.reason, "priority": self.priority.value, "purpose": self.purpose.value,
            "requested_by": self.requested_by, "created_at": self.created_at, "expires_at": self.expires_at,
        }

    @classmethod
    def from_body(cls, body: CborValue) -> StudyRequest:
        f = Fields(body, "study request")
        request = cls(
            request_id=f.blob("id", size=REQUEST_ID_BYTES),
            requester_org=check_org_code(f.text("requester_org", 16), "request.requester_org"),
            requester_peer=f.text("requester_peer", 64),
            holder_org=check_org_code(f.text("holder_org", 16), "request.holder_org"),
            nhs_number=f.text("nhs_number", 10),
            patient_id=f.text("patient_id", MAX_PATIENT_ID),
            date_from=f.text("date_from", 8),
            date_to=f.text("date_to", 8),
            modality=f.text("modality", MAX_MODALITY),
            reason=f.text("reason", MAX_REASON),
            priority=Priority(f.choice("priority", frozenset(p.value for p in Priority))),
            purpose=Purpose(f.choice("purpose", frozenset(p.value for p in Purpose))),
            requested_by=f.text("requested_by", MAX_USER),
            created_at=f.time("created_at"),
            expires_at=f.time("expires_at"),
        )
        f.finish()
        return request


@dataclass(frozen=True)
class RequestResponse(Document):
    LABEL: ClassVar[str] = RESPONSE_LABEL
    MAX_BYTES: ClassVar[int] = 8192

    request_id: bytes
    requester_org: str
    holder_org: str
    holder_peer: str
    state: RequestState
    manifests: tuple[CID, ...]
    reason: str
    decided_by: str
    at: int

    def __post_init__(self) -> None:
        if len(self.request_id) != REQUEST_ID_BYTES:
            raise SchemaError(f"request_id must be {REQUEST_ID_BYTES} bytes")
        check_org_code(self.requester_org, "requester_org")
        check_org_code(self.holder_org, "holder_org")
        PublicKey.from_peer_id(self.holder_peer)
        if self.state is RequestState.PENDING:
            raise SchemaError("a response moves a request out of pending")
        if (self.state is RequestState.APPROVED) != bool(self.manifests):
            raise SchemaError("an approval names the manifests of its shares; nothing else names any")
        if len(self.manifests) > MAX_RESPONSE_MANIFESTS or len(set(self.manifests)) != len(self.manifests):
            raise SchemaError(f"at most {MAX_RESPONSE_MANIFESTS} distinct manifests")
        if self.state is RequestState.DECLINED and not self.reason.strip():
            raise SchemaError("a decline says why")
        if len(self.reason) > MAX_REASON or len(self.decided_by) > MAX_USER:
            raise SchemaError("reason or decided_by too long")

    def check_signer(self, signer: PublicKey) -> None:
        if signer.peer_id != self.holder_peer:
            raise DocumentError("response not signed by the holder peer it names")

    def to_body(self) -> dict[CborKey, CborValue]:
        return {
            "id": self.request_id, "requester_org": self.requester_org, "holder_org": self.holder_org,
            "holder_peer": self.holder_peer, "state": self.state.value,
            "manifests": [m.to_bytes() for m in self.manifests], "reason": self.reason,
            "decided_by": self.decided_by, "at": self.at,
        }

    @classmethod
    def from_body(cls, body: CborValue) -> RequestResponse:
        f = Fields(body, "request response")

        def cid_item(value: CborValue, what: str) -> CID:
            if not isinstance(value, bytes) or len(value) != BINARY_SIZE:
                raise SchemaError(f"{what}: expected {BINARY_SIZE} bytes")
            return CID.from_bytes(value)

        response = cls(
            request_id=f.blob("id", size=REQUEST_ID_BYTES),
            requester_org=check_org_code(f.text("requester_org", 16), "response.requester_org"),
            holder_org=check_org_code(f.text("holder_org", 16), "response.holder_org"),
            holder_peer=f.text("holder_peer", 64),
            state=RequestState(f.choice("state", frozenset(s.value for s in RequestState))),
            manifests=f.array("manifests", cid_item, max_items=MAX_RESPONSE_MANIFESTS),
            reason=f.text("reason", MAX_REASON),
            decided_by=f.text("decided_by", MAX_USER),
            at=f.time("at"),
        )
        f.finish()
        return response


def verify_request(signed: Signed[StudyRequest], requester_cert: Signed[Certificate], roster: Roster, now: float,
                   *, skew: int = DEFAULT_SKEW) -> Certificate:
    """A request from a node of the org it names, certified and unrevoked, made in the past, not expired."""
    request = signed.document
    if request.created_at > now + skew:
        raise DocumentError(f"request dated in the future ({request.created_at})")
    if request.expires_at < now - skew:
        raise DocumentExpiredError(f"request expired at {request.expires_at}")
    return check_node_signature(signed.signer, requester_cert, roster, org_code=request.requester_org,
                                at=request.created_at, now=now, skew=skew)


def verify_response(signed: Signed[RequestResponse], holder_cert: Signed[Certificate], roster: Roster, now: float,
                    *, skew: int = DEFAULT_SKEW) -> Certificate:
    """A response from a node of the holder org it names, certified and unrevoked, made in the past."""
    response = signed.document
    if response.at > now + skew:
        raise DocumentError(f"response dated in the future ({response.at})")
    return check_node_signature(signed.signer, holder_cert, roster, org_code=response.holder_org,
                                at=response.at, now=now, skew=skew)
