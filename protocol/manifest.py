"""Study manifests: which instances a study has, their blocks, and who may fetch them.

A manifest is signed by one node of the sending organisation. Its ID is the
CID of its canonical signed bytes, so any node holding the bytes can prove
which manifest it means.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import ClassVar

from protocol.cbor import CborKey, CborValue
from protocol.certificate import Certificate
from protocol.cid import BINARY_SIZE, CID
from protocol.document import DEFAULT_SKEW, Document, Signed
from protocol.errors import DocumentError, DocumentExpiredError, LimitError, SchemaError
from protocol.keys import PublicKey
from protocol.roster import Roster
from protocol.schema import Fields, bytes_item, check_org_code, check_uid, org_item
from protocol.trust import check_node_signature

MANIFEST_LABEL = "dicom-mesh/manifest/v1"
MAX_RECIPIENTS = 64
MAX_INSTANCES = 50_000
MAX_BLOCKS_PER_INSTANCE = 65_536
MAX_TOTAL_BLOCKS = 1_000_000
MAX_INSTANCE_SIZE = 1 << 40
MAX_MANIFEST_BYTES = 48 * 1024 * 1024
#: `attention`: the person at the receiving organisation the study is for (a user name or email address there)
MAX_ATTENTION = 128
#: `note`: free text for the recipients (line breaks allowed)
MAX_NOTE = 1000
# CBOR items in a manifest at every limit at once: each instance is a map of 7
# pairs plus its blocks array (16 items) and its blocks; the envelope, body,
# summary and recipients add fewer than 200.
MAX_MANIFEST_ITEMS = 200 + MAX_RECIPIENTS + 16 * MAX_INSTANCES + MAX_TOTAL_BLOCKS


class Priority(str, Enum):
    STAT = "stat"
    URGENT = "urgent"
    ROUTINE = "routine"

    @property
    def rank(self) -> int:
        """Lower is more urgent: stat 0, urgent 1, routine 2."""
        return _PRIORITY_RANK[self]


_PRIORITY_RANK = {Priority.STAT: 0, Priority.URGENT: 1, Priority.ROUTINE: 2}


class Purpose(str, Enum):
    CARE = "care"
    RESEARCH = "research"
    PATIENT_ACCESS = "patient-access"


def check_attention(value: str, what: str = "attention") -> str:
    """A named recipient: printable characters only (no control, format or line-separator characters: it may
    end up in an email header), no surrounding spaces, at most MAX_ATTENTION characters."""
    return _check_free_text(value, what, MAX_ATTENTION, line_breaks=False)


def check_note(value: str, what: str = "note") -> str:
    """A note for the recipients: printable characters and line feeds (no CR, no other control, format or
    separator characters, so nothing in it can pose as another line of a header or hide text), at most
    MAX_NOTE characters."""
    return _check_free_text(value, what, MAX_NOTE, line_breaks=True)


def _check_free_text(value: object, what: str, limit: int, *, line_breaks: bool) -> str:
    if not isinstance(value, str):
        raise SchemaError(f"{what}: expected text, got {type(value).__name__}")
    if len(value) > limit:
        raise LimitError(f"{what}: {len(value)} characters, limit {limit}")
    text = value.replace("\n", "") if line_breaks else value
    if not text.isprintable():
        raise SchemaError(f"{what}: only printable characters" + (" and line feeds" if line_breaks else "")
                          + " allowed")
    if value != value.strip():
        raise SchemaError(f"{what}: no leading or trailing spaces or line breaks")
    return value


def _uid_or_empty(value: str, what: str) -> str:
    return value if value == "" else check_uid(value, what)


@dataclass(frozen=True)
class StudySummary:
    patient_name: str
    patient_id: str
    birth_date: str
    sex: str
    modality: str
    study_date: str
    description: str
    series_count: int
    instance_count: int

    def to_wire(self) -> dict[CborKey, CborValue]:
        return {
            "patient_name": self.patient_name,
            "patient_id": self.patient_id,
            "birth_date": self.birth_date,
            "sex": self.sex,
            "modality": self.modality,
            "study_date": self.study_date,
            "description": self.description,
            "series_count": self.series_count,
            "instance_count": self.instance_count,
        }

    @classmethod
    def from_wire(cls, value: CborValue) -> StudySummary:
        f = Fields(value, "manifest.summary")
        summary = cls(
            patient_name=f.text("patient_name", 324),
            patient_id=f.text("patient_id", 64),
            birth_date=f.text("birth_date", 8),
            sex=f.text("sex", 16),
            modality=f.text("modality", 64),
            study_date=f.text("study_date", 8),
            description=f.text("description", 256),
            series_count=f.integer("series_count", 0, MAX_INSTANCES),
            instance_count=f.integer("instance_count", 0, MAX_INSTANCES),
        )
        f.finish()
        return summary


def _cid_item(value: CborValue, what: str) -> CID:
    return CID.from_bytes(bytes_item(BINARY_SIZE)(value, what))


@dataclass(frozen=True)
class InstanceEntry:
    sop_class_uid: str
    sop_instance_uid: str
    series_uid: str
    transfer_syntax: str
    size: int
    digest: bytes  # sha2-256 of the whole instance file
    blocks: tuple[CID, ...]

    def to_wire(self) -> dict[CborKey, CborValue]:
        return {
            "sop_class": self.sop_class_uid,
            "sop_instance": self.sop_instance_uid,
            "series": self.series_uid,
            "transfer_syntax": self.transfer_syntax,
            "size": self.size,
            "digest": self.digest,
            "blocks": [b.to_bytes() for b in self.blocks],
        }

    @classmethod
    def from_wire(cls, value: CborValue, what: str) -> InstanceEntry:
        f = Fields(value, what)
        entry = cls(
            sop_class_uid=check_uid(f.text("sop_class", 64), f"{what}.sop_class"),
            sop_instance_uid=check_uid(f.text("sop_instance", 64), f"{what}.sop_instance"),
            series_uid=check_uid(f.text("series", 64), f"{what}.series"),
            transfer_syntax=_uid_or_empty(f.text("transfer_syntax", 64), f"{what}.transfer_syntax"),
            size=f.integer("size", 0, MAX_INSTANCE_SIZE),
            digest=f.blob("digest", size=32),
            blocks=f.array("blocks", _cid_item, max_items=MAX_BLOCKS_PER_INSTANCE, min_items=1),
        )
        f.finish()
        return entry


@dataclass(frozen=True)
class Manifest(Document):
    LABEL: ClassVar[str] = MANIFEST_LABEL
    MAX_BYTES: ClassVar[int] = MAX_MANIFEST_BYTES
    MAX_ITEMS: ClassVar[int] = MAX_MANIFEST_ITEMS

    study_uid: str
    sender_org: str
    sender_peer: str
    recipients: tuple[str, ...]
    priority: Priority
    purpose: Purpose
    created_at: int
    expires_at: int
    revision: int
    summary: StudySummary
    instances: tuple[InstanceEntry, ...]
    #: optional (left out of the encoding when empty, so manifests without them encode as before)
    attention: str = ""
    note: str = ""

    def __post_init__(self) -> None:
        check_uid(self.study_uid, "study_uid")
        if self.attention:
            check_attention(self.attention, "manifest.attention")
        if self.note:
            check_note(self.note, "manifest.note")
        check_org_code(self.sender_org, "sender_org")
        PublicKey.from_peer_id(self.sender_peer)
        if not 1 <= len(self.recipients) <= MAX_RECIPIENTS:
            raise SchemaError(f"manifest needs 1..{MAX_RECIPIENTS} recipient orgs")
        if list(self.recipients) != sorted(set(self.recipients)):
            raise SchemaError("manifest recipients must be sorted and unique")
        if self.revision < 1:
            raise SchemaError("manifest revision starts at 1")
        if self.expires_at <= self.created_at:
            raise SchemaError("manifest expires_at must be later than created_at")
        if not 1 <= len(self.instances) <= MAX_INSTANCES:
            raise LimitError(f"manifest needs 1..{MAX_INSTANCES} instances")
        if sum(len(i.blocks) for i in self.instances) > MAX_TOTAL_BLOCKS:
            raise LimitError(f"manifest lists more than {MAX_TOTAL_BLOCKS} blocks")
        uids = [i.sop_instance_uid for i in self.instances]
        if len(set(uids)) != len(uids):
            raise SchemaError("manifest lists an SOP instance UID twice")
        if self.summary.instance_count != len(self.instances):
            raise SchemaError("summary.instance_count does not match the instances listed")
        if self.summary.series_count != len({i.series_uid for i in self.instances}):
            raise SchemaError("summary.series_count does not match the series listed")

    @property
    def total_bytes(self) -> int:
        return sum(i.size for i in self.instances)

    def block_set(self) -> frozenset[CID]:
        return frozenset(b for i in self.instances for b in i.blocks)

    def block_order(self) -> tuple[CID, ...]:
        """The distinct blocks in manifest order: instances in order, each instance's blocks in order,
        each CID at its first occurrence (the order `have` bitmaps index)."""
        return tuple(dict.fromkeys(b for instance in self.instances for b in instance.blocks))

    def check_signer(self, signer: PublicKey) -> None:
        if signer.peer_id != self.sender_peer:
            raise DocumentError("manifest not signed by the sender peer it names")

    def to_body(self) -> dict[CborKey, CborValue]:
        body: dict[CborKey, CborValue] = {
            "study": self.study_uid,
            "sender_org": self.sender_org,
            "sender_peer": self.sender_peer,
            "recipients": list(self.recipients),
            "priority": self.priority.value,
            "purpose": self.purpose.value,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revision": self.revision,
            "summary": self.summary.to_wire(),
            "instances": [i.to_wire() for i in self.instances],
        }
        if self.attention:
            body["attention"] = self.attention
        if self.note:
            body["note"] = self.note
        return body

    @classmethod
    def from_body(cls, body: CborValue) -> Manifest:
        f = Fields(body, "manifest")
        manifest = cls(
            study_uid=check_uid(f.text("study", 64), "manifest.study"),
            sender_org=check_org_code(f.text("sender_org", 16), "manifest.sender_org"),
            sender_peer=f.text("sender_peer", 64),
            recipients=f.array(
                "recipients", org_item, max_items=MAX_RECIPIENTS, min_items=1, sorted_unique=True
            ),
            priority=Priority(f.choice("priority", frozenset(p.value for p in Priority))),
            purpose=Purpose(f.choice("purpose", frozenset(p.value for p in Purpose))),
            created_at=f.time("created_at"),
            expires_at=f.time("expires_at"),
            revision=f.integer("revision", 1),
            summary=StudySummary.from_wire(f.raw("summary")),
            instances=f.array("instances", InstanceEntry.from_wire, max_items=MAX_INSTANCES, min_items=1),
            attention=f.optional_text("attention", MAX_ATTENTION, check_attention),
            note=f.optional_text("note", MAX_NOTE, check_note),
        )
        f.finish()
        return manifest


def verify_manifest(
    signed: Signed[Manifest],
    sender_cert: Signed[Certificate],
    roster: Roster,
    now: float,
    *,
    skew: int = DEFAULT_SKEW,
) -> Certificate:
    """A manifest is acceptable when its signer's certificate, of the sender org,
    was valid when the manifest was created, is not revoked now, and the
    manifest has not expired."""
    manifest = signed.document
    if manifest.created_at > now + skew:
        raise DocumentError(f"manifest created in the future ({manifest.created_at})")
    if now - skew > manifest.expires_at:
        raise DocumentExpiredError(f"manifest expired at {manifest.expires_at}")
    return check_node_signature(
        signed.signer, sender_cert, roster, org_code=manifest.sender_org,
        at=manifest.created_at, now=now, skew=skew,
    )
