"""What the node's metadata holds, as frozen records (no raw rows leave storage)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import Enum

from protocol.cid import CID
from protocol.lifecycle import ManifestState


def hash_uid(uid: str) -> str:
    """A stable pseudonym for a DICOM UID, safe for logs and audit entries."""
    return "uid-" + hashlib.sha256(uid.encode("ascii", "replace")).hexdigest()[:20]


class Source(str, Enum):
    LOCAL = "local"
    RECEIVED = "received"


@dataclass(frozen=True)
class StudyAttributes:
    """Study-level DICOM attributes, taken from an instance at ingest."""

    study_uid: str
    patient_name: str = ""
    patient_id: str = ""
    birth_date: str = ""
    sex: str = ""
    study_date: str = ""
    study_time: str = ""
    description: str = ""
    accession: str = ""


@dataclass(frozen=True)
class SeriesAttributes:
    series_uid: str
    modality: str = ""
    series_number: int | None = None
    description: str = ""


@dataclass(frozen=True)
class InstanceRecord:
    sop_instance_uid: str
    sop_class_uid: str
    series: SeriesAttributes
    study: StudyAttributes
    transfer_syntax: str
    size: int
    digest: bytes
    blocks: tuple[CID, ...]
    block_sizes: tuple[int, ...]
    instance_number: int | None = None
    rows: int | None = None
    columns: int | None = None
    frames: int | None = None
    flags: tuple[str, ...] = ()
    source: Source = Source.LOCAL
    #: a received instance's sender organisation ("" : ingested here); with source and study, its lineage
    #: (meshnode.storage.conflicts.lineage: only a newer version from the same lineage may replace it)
    origin: str = ""

    @property
    def study_uid(self) -> str:
        return self.study.study_uid

    @property
    def series_uid(self) -> str:
        return self.series.series_uid


class AddOutcome(str, Enum):
    ADDED = "added"
    DUPLICATE = "duplicate"  # the very same bytes were already stored
    #: same SOP Instance UID, different bytes: the newcomer is held in the conflict queue (reject, keep-both),
    #: not part of the study until decided (protocol.conflict)
    CONFLICT = "conflict"
    REPLACED = "replaced"  # same SOP Instance UID, different bytes, policy replace: the newcomer superseded it


@dataclass(frozen=True)
class StudySummaryRow:
    attributes: StudyAttributes
    modalities: tuple[str, ...]
    series_count: int
    instance_count: int
    total_bytes: int
    sources: tuple[str, ...]
    conflicts: int = 0


@dataclass(frozen=True)
class ManifestRow:
    manifest_id: CID
    study_uid: str
    direction: str  # "sent" or "received"
    sender_org: str
    revision: int
    state: ManifestState  # protocol.lifecycle (stored as its value)
    created_at: int
    expires_at: int
    raw: bytes
    recipients: tuple[str, ...] = field(default_factory=tuple)
    #: a received manifest: the sender's signed certificate it came with (to relay it to a fellow recipient)
    certificate: bytes = b""


@dataclass(frozen=True)
class ServedRow:
    """Blocks and bytes this node served under one manifest to one organisation (all time)."""

    manifest_id: CID
    org: str
    blocks: int
    bytes: int
