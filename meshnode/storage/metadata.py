"""The node's metadata interface. Implementations: SQLite (the node) and memory (tests).

Every method is synchronous and called from one thread at a time: in the
node, the dedicated database thread (meshnode.storage.dbthread).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from meshnode.storage.audit import AuditEntry, AuditEvent
from meshnode.storage.audit_checkpoint import AuditCheckpoint, SpoolItem
from meshnode.storage.patients import PatientStore
from meshnode.storage.conflicts import ConflictStore, Incoming
from meshnode.storage.instance_crcs import InstanceCrcStore
from meshnode.storage.records import (
    AddOutcome,
    InstanceRecord,
    ManifestRow,
    ServedRow,
    StudySummaryRow,
)
from meshnode.storage.request_store import RequestStore
from meshnode.storage.research_store import ResearchStore
from meshnode.storage.retry_queue import RetryQueueStore
from meshnode.storage.search import SearchableStore
from protocol.access import Holding
from protocol.cid import CID
from protocol.keys import SigningKey
from protocol.lifecycle import ManifestState


class MetadataStore(SearchableStore, RetryQueueStore, PatientStore, ResearchStore, ConflictStore, RequestStore,
                    InstanceCrcStore, Protocol):
    # -- studies and instances ------------------------------------------------
    def add_instances(
        self, records: Sequence[InstanceRecord], events: Sequence[AuditEvent], now_ms: int,
        incoming: Sequence[Incoming] | None = None,
    ) -> list[AddOutcome]:
        """Add a batch of instances (their blocks already durable) and audit events, atomically.

        `incoming` (one per record; default: Incoming(), policy reject): a record whose SOP Instance UID is
        stored with other bytes is decided by protocol.conflict.decide with its policy: held in the conflict
        queue (CONFLICT: in no study until decided), or superseding the stored one (REPLACED)."""
        ...

    def studies(self) -> list[StudySummaryRow]: ...

    def study(self, study_uid: str) -> StudySummaryRow | None: ...

    def instances(self, study_uid: str) -> list[InstanceRecord]: ...

    def instances_of(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> list[InstanceRecord]:
        """The records of one instance (as `instances` gives them, usually one) without reading the study's
        other records: a key image asks for one frame of one instance."""
        ...

    def held_transfer_syntaxes(self, sop_classes: Iterable[str]) -> dict[str, set[str]]:
        """For each of `sop_classes` the node holds instances of: the transfer syntaxes they are stored in."""
        ...

    def forget_study(self, study_uid: str, events: Sequence[AuditEvent], now_ms: int) -> int:
        """Remove a study's instance records (blocks stay until GC). Returns instances removed."""
        ...

    def forget_received(self, study_uid: str, origin: str, keys: Iterable[tuple[str, bytes]],
                        events: Sequence[AuditEvent], now_ms: int) -> int:
        """Remove the study's received instance records from organisation `origin` whose (SOP Instance UID,
        digest) is one of `keys` (a recall); local instances and other origins' stay. The study's record
        goes with its last instance. Returns instances removed."""
        ...

    # -- blocks -----------------------------------------------------------------
    def record_blocks(self, blocks: Sequence[tuple[CID, int]], now_ms: int,
                      obtained: Sequence[tuple[CID, CID, str]] = ()) -> None:
        """Mark durable blocks as present, atomically with `obtained`: (manifest_id, cid, peer_id) for blocks
        fetched under a received manifest from that peer. That is their provenance (what protocol.access
        lets this node serve under the manifest), and each block newly obtained under a manifest counts
        once for the peer that served it (`served_by`, which so adds up across restarts)."""
        ...

    def obtained_blocks(self, manifest_id: CID, cids: Iterable[CID]) -> set[CID]:
        """Those of `cids` this node fetched under this received manifest or an earlier revision of the same
        share (same study, same sender org); for a sent manifest (a sibling's), those it copied under this
        very manifest."""
        ...

    def holdings(self, cids: Iterable[CID]) -> dict[CID, list[Holding]]:
        """For each of `cids`, the manifests that list it and whether this node holds it first hand under them."""
        ...

    def present_blocks(self, cids: Iterable[CID]) -> set[CID]: ...

    def block_refcount(self, cid: CID, now_s: int) -> int:
        """How many local instances and live manifests reference this block."""
        ...

    def unreferenced_blocks(self, now_s: int) -> list[CID]:
        """Present blocks nothing live references (garbage)."""
        ...

    def forget_blocks(self, cids: Sequence[CID]) -> None: ...

    # -- manifests and transfers ----------------------------------------------
    def save_manifest(self, row: ManifestRow, blocks: Iterable[CID]) -> None: ...

    def manifest(self, manifest_id: CID) -> ManifestRow | None: ...

    def manifests(self, direction: str | None = None) -> list[ManifestRow]: ...

    def not_in_manifest(self, manifest_id: CID, cids: Sequence[CID]) -> set[CID]:
        """Those of `cids` the manifest does not list."""
        ...

    def set_manifest_state(self, manifest_id: CID, state: ManifestState) -> None:
        """Store a state the caller reached with protocol.lifecycle.advance (meshnode.node.lifecycle)."""
        ...

    def fail_manifest(self, manifest_id: CID, reason: str, now_ms: int) -> None:
        """State failed (protocol.lifecycle), and why (shown in the inbox; no patient data: say which attribute, not its value)."""
        ...

    def manifest_failure(self, manifest_id: CID) -> str | None: ...

    def set_transfer(self, manifest_id: CID, state: ManifestState, blocks_done: int, bytes_done: int, now_ms: int) -> None: ...

    def transfer(self, manifest_id: CID) -> tuple[str, int, int] | None: ...

    def save_receipt(self, manifest_id: CID, org: str, receipt: bytes, at_ms: int) -> None:
        """A recipient org's verified signed receipt for a sent manifest (the first one stays)."""
        ...

    def receipts(self, manifest_id: CID) -> dict[str, bytes]:
        """org -> its verified signed receipt for this sent manifest."""
        ...

    def save_forward_report(self, manifest_id: CID, org: str, seq: int, report: bytes, at_ms: int) -> bool:
        """A recipient org's verified forward report for a sent manifest, kept only when its seq is higher
        than the one stored (protocol.forward_report.supersedes); whether it was kept."""
        ...

    def forward_reports(self, manifest_id: CID) -> dict[str, bytes]:
        """org -> its latest verified signed forward report for this sent manifest."""
        ...

    def received_manifests_of(self, study_uid: str) -> list[ManifestRow]:
        """Every manifest this node received for this study (any sender; indexed by study)."""
        ...

    def share_revisions(self, study_uid: str, sender_org: str, direction: str) -> list[tuple[int, tuple[str, ...]]]:
        """(revision, recipients) of every manifest of this study from this sender org, sent or received."""
        ...

    def highest_revision(self, study_uid: str, sender_org: str) -> int:
        """Highest revision of a received manifest for this study from this sender org (0: none)."""
        ...

    def served_by(self, manifest_id: CID) -> dict[str, int]: ...

    def record_recall_tombstone(self, manifest_id: CID, sender_org: str, now_ms: int) -> None:
        """A verified recall of a manifest not received (yet): a later announcement of it is refused."""
        ...

    def recall_tombstone(self, manifest_id: CID) -> str | None:
        """The org that recalled this manifest before it arrived, if any."""
        ...

    def add_served(self, manifest_id: CID, org: str, blocks: int, nbytes: int, now_ms: int) -> None:
        """Count blocks this node sent under a manifest to an org (adds up across restarts)."""
        ...

    def served(self, manifest_id: CID | None = None) -> list[ServedRow]: ...

    # -- identity ----------------------------------------------------------------
    def highest_roster_version(self) -> int: ...

    def record_roster_version(self, version: int) -> None: ...

    def record_peer(self, peer_id: str, org: str, now_ms: int) -> None: ...

    def peers(self) -> list[tuple[str, str, int]]: ...

    # -- audit -------------------------------------------------------------------
    def append_audit(self, events: Sequence[AuditEvent], now_ms: int) -> list[AuditEntry]: ...

    def audit_entries(self) -> list[AuditEntry]: ...

    def audit_head(self) -> tuple[int, bytes] | None:
        """(seq, hash) of the newest audit entry."""
        ...

    def set_audit_key(self, key: SigningKey | None) -> None:
        """Sign checkpoints with this key in every append that owes one (audit_checkpoint.due_checkpoints)."""
        ...

    def audit_tail(self) -> AuditCheckpoint | None:
        """The node's signature on the newest entry it appended (replaced by every append)."""
        ...

    def audit_snapshot(self) -> tuple[list[AuditEntry], list[AuditCheckpoint], AuditCheckpoint | None]:
        """Entries, checkpoints and tail, read consistently (one transaction)."""
        ...

    def append_audit_rebased(self, events: Sequence[AuditEvent], now_ms: int, key: SigningKey, rebase_from: int,
                             rebase_to: int, sign_seqs: Sequence[int]) -> tuple[int, bytes]:
        """An operator's acknowledgement, atomically: append `events`, sign the entries at `sign_seqs` as they
        are, a rebase checkpoint (audit_checkpoint.rebased_checkpoints) and the tail at the new head."""
        ...

    def add_audit_checkpoint(self, checkpoint: AuditCheckpoint) -> None:
        """Record a checkpoint and queue it for the audit repository."""
        ...

    def audit_checkpoints(self) -> list[AuditCheckpoint]:
        """Every checkpoint, in the order recorded."""
        ...

    def audit_spool(self, limit: int) -> list[SpoolItem]:
        """The oldest items waiting for the audit repository, in the order they must be sent."""
        ...

    def audit_spool_sent(self, ids: Sequence[int]) -> None: ...

    def audit_spool_attempted(self, ids: Sequence[int]) -> None: ...

    def audit_spool_size(self) -> int: ...

    def close(self) -> None: ...
