"""The node's metadata interface. Implementations: SQLite (the node) and memory (tests).

Every method is synchronous and called from one thread at a time: in the
node, the dedicated database thread (meshnode.storage.dbthread).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from meshnode.storage.audit import AuditEntry, AuditEvent
from meshnode.storage.audit_checkpoint import AuditCheckpoint, SpoolItem
from meshnode.storage.records import AddOutcome, DeliveryRow, InstanceRecord, ManifestRow, StudySummaryRow
from meshnode.storage.search import SearchableStore
from protocol.cid import CID
from protocol.keys import SigningKey

LIVE_MANIFEST_STATES_EXCLUDED = ("recalled",)


class MetadataStore(SearchableStore, Protocol):
    # -- studies and instances ------------------------------------------------
    def add_instances(
        self, records: Sequence[InstanceRecord], events: Sequence[AuditEvent], now_ms: int
    ) -> list[AddOutcome]:
        """Add a batch of instances (their blocks already durable) and audit events, atomically."""
        ...

    def studies(self) -> list[StudySummaryRow]: ...

    def study(self, study_uid: str) -> StudySummaryRow | None: ...

    def instances(self, study_uid: str) -> list[InstanceRecord]: ...

    def forget_study(self, study_uid: str, events: Sequence[AuditEvent], now_ms: int) -> int:
        """Remove a study's instance records (blocks stay until GC). Returns instances removed."""
        ...

    # -- blocks -----------------------------------------------------------------
    def record_blocks(self, blocks: Sequence[tuple[CID, int]], now_ms: int) -> None:
        """Mark durable blocks as present."""
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

    def set_manifest_state(self, manifest_id: CID, state: str) -> None: ...

    def set_transfer(self, manifest_id: CID, state: str, blocks_done: int, bytes_done: int, now_ms: int) -> None: ...

    def transfer(self, manifest_id: CID) -> tuple[str, int, int] | None: ...

    def save_delivery(self, row: DeliveryRow) -> None: ...

    def deliveries(self, manifest_id: CID | None = None) -> list[DeliveryRow]: ...

    def highest_revision(self, study_uid: str, sender_org: str) -> int:
        """Highest revision of a received manifest for this study from this sender org (0: none)."""
        ...

    def set_served_by(self, manifest_id: CID, served_by: dict[str, int]) -> None: ...

    def served_by(self, manifest_id: CID) -> dict[str, int]: ...

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
