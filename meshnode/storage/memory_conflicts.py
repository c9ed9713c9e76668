"""The conflict queue in dictionaries (part of MemoryMetadataStore): the same contract as sqlite_conflicts.py."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace

from meshnode.storage.audit import AuditEntry, AuditEvent
from meshnode.storage.conflicts import (
    KIND_STORE,
    ConflictRow,
    Incoming,
    check_applicable,
    check_current,
    conflict_alert,
    lineage,
    other_lineage,
)
from meshnode.storage.records import (
    InstanceRecord,
    ManifestRow,
    StudyAttributes,
    hash_uid,
)
from meshnode.storage.retry_queue import MemoryRetryQueue
from protocol.cid import CID
from protocol.conflict import (
    ConflictAction,
    ConflictState,
    Decision,
    check_decision,
    decide,
    lineage_policy,
)
from protocol.errors import MeshError
from protocol.lifecycle import ManifestState

log = logging.getLogger(__name__)


class MemoryConflicts(MemoryRetryQueue):
    """ConflictStore; the composing store (MemoryMetadataStore) sets `_append_audit` to its audit chain's
    append (its __init__), as SqliteConflicts builds on SqliteAudit."""

    _append_audit: Callable[[Sequence[AuditEvent], int], list[AuditEntry]]

    def __init__(self) -> None:
        super().__init__()
        self._conflicts: dict[int, ConflictRow] = {}
        self._instances: list[InstanceRecord] = []
        self._studies: dict[str, StudyAttributes] = {}
        self._blocks: dict[CID, int] = {}
        self._manifests: dict[CID, ManifestRow] = {}

    def _held_blocks(self) -> list[CID]:
        """Blocks of pending held newcomers, once per conflict (gc keeps them)."""
        return [c for r in self._conflicts.values() if r.state is ConflictState.PENDING and r.newcomer is not None
                for c in set(r.newcomer.blocks)]

    def _insert(self, row: ConflictRow) -> ConflictRow:
        row = replace(row, conflict_id=max(self._conflicts, default=0) + 1)
        self._conflicts[row.conflict_id] = row
        return row

    def _note_study(self, rec: InstanceRecord) -> None:
        """The study's attributes from `rec`, unless the study holds instances of another lineage (as
        sqlite_catalog.py: a received instance reusing a Study UID held here leaves its attributes)."""
        other = any(i.study_uid == rec.study_uid and (i.source, i.origin) != (rec.source, rec.origin)
                    for i in self._instances)
        if not other or rec.study_uid not in self._studies:
            self._studies[rec.study_uid] = rec.study

    def _add_instance(self, rec: InstanceRecord) -> None:
        self._note_study(rec)
        self._instances.append(rec)
        for cid, size in zip(rec.blocks, rec.block_sizes):
            self._blocks.setdefault(cid, size)

    def _arrive(self, rec: InstanceRecord, incoming: Incoming, now_ms: int
                ) -> tuple[ConflictAction, list[AuditEvent]]:
        stored = [i for i in self._instances if i.sop_instance_uid == rec.sop_instance_uid]
        existing = [i.digest for i in stored]
        mine = [r for r in self._conflicts.values() if r.kind == KIND_STORE and r.sop_instance_uid == rec.sop_instance_uid]
        held = [r.newcomer_digest for r in mine if r.state is ConflictState.PENDING]
        decided = [r.newcomer_digest for r in mine if r.state in (ConflictState.KEPT_BOTH, ConflictState.DISCARDED)]
        why = other_lineage(rec, [lineage(i) for i in stored])
        policy = lineage_policy(incoming.policy, not why)
        action = decide(policy, existing, rec.digest, held, decided)
        if action is ConflictAction.HOLD:
            row = self._insert(ConflictRow(0, KIND_STORE, rec.sop_instance_uid, rec.study_uid, existing[0],
                                           rec.digest, policy, ConflictState.PENDING, incoming.source,
                                           incoming.route, now_ms, rec, manifest_id=incoming.manifest_id))
            for cid, size in zip(rec.blocks, rec.block_sizes):
                self._blocks.setdefault(cid, size)
            log.warning("SOP Instance UID conflict %d: %s came again with other bytes from %s; held (policy %s%s)",
                        row.conflict_id, hash_uid(rec.sop_instance_uid), incoming.source or "-", policy.value,
                        f"; {why}" if why else "")
            return action, [conflict_alert(row, f"conflict {row.conflict_id} held for a decision"
                                                + (f" ({why})" if why else ""))]
        if action is ConflictAction.SUPERSEDE:
            row = self._insert(ConflictRow(0, KIND_STORE, rec.sop_instance_uid, rec.study_uid, existing[0],
                                           rec.digest, policy, ConflictState.REPLACED, incoming.source,
                                           incoming.route, now_ms, None, now_ms, "policy",
                                           manifest_id=incoming.manifest_id))
            self._instances = [i for i in self._instances if i.sop_instance_uid != rec.sop_instance_uid]
            self._rebase(rec.sop_instance_uid, rec.digest)
            log.warning("SOP Instance UID conflict %d: %s came again with other bytes from %s; replaced (policy)",
                        row.conflict_id, hash_uid(rec.sop_instance_uid), incoming.source or "-")
            return action, [conflict_alert(row, f"conflict {row.conflict_id}: the stored version replaced by policy")]
        return action, []

    def conflicts(self, state: ConflictState | None = None) -> list[ConflictRow]:
        return [r for _, r in sorted(self._conflicts.items()) if state is None or r.state is state]

    def conflict(self, conflict_id: int) -> ConflictRow | None:
        return self._conflicts.get(conflict_id)

    def superseded_digests(self, sop_instance_uid: str) -> list[bytes]:
        return [r.existing_digest for _, r in sorted(self._conflicts.items()) if r.kind == KIND_STORE
                and r.state is ConflictState.REPLACED and r.sop_instance_uid == sop_instance_uid]

    def add_forward_conflict(self, row: ConflictRow, events: Sequence[AuditEvent], now_ms: int) -> int | None:
        if any(r.kind == row.kind and r.sop_instance_uid == row.sop_instance_uid
               and r.newcomer_digest == row.newcomer_digest and r.state is ConflictState.PENDING
               for r in self._conflicts.values()):
            return None
        held = self._insert(row)
        self._append_audit([*events, conflict_alert(held, f"conflict {held.conflict_id} held for a decision")], now_ms)
        return held.conflict_id

    def _rebase(self, sop_instance_uid: str, digest: bytes) -> None:
        for r in list(self._conflicts.values()):
            if r.kind == KIND_STORE and r.state is ConflictState.PENDING and r.sop_instance_uid == sop_instance_uid \
                    and r.newcomer_digest != digest:
                self._conflicts[r.conflict_id] = replace(r, existing_digest=digest)

    def _manifest_state(self, manifest_id: str) -> ManifestState | None:
        if not manifest_id:
            return None
        try:
            row = self._manifests.get(CID.parse(manifest_id))
        except MeshError:
            return None
        return row.state if row is not None else None

    def decide_conflict(self, conflict_id: int, decision: Decision, actor: str, events: Sequence[AuditEvent],
                        now_ms: int, renamed: InstanceRecord | None = None,
                        expected_existing: bytes | None = None) -> ConflictRow:
        row = check_applicable(self._conflicts.get(conflict_id), conflict_id, decision, renamed)
        state = check_decision(row.state, decision)
        stored = [i.digest for i in self._instances if i.sop_instance_uid == row.sop_instance_uid]
        check_current(row, decision, stored if row.kind == KIND_STORE else None, self._manifest_state(row.manifest_id),
                      expected_existing)
        if row.kind == KIND_STORE and row.newcomer is not None:
            if decision is Decision.REPLACE:
                self._instances = [i for i in self._instances if i.sop_instance_uid != row.sop_instance_uid]
                self._add_instance(row.newcomer)
                self._rebase(row.sop_instance_uid, row.newcomer_digest)
            elif decision is Decision.KEEP_BOTH and renamed is not None:
                self._add_instance(renamed)
        new_uid = renamed.sop_instance_uid if decision is Decision.KEEP_BOTH and renamed is not None else ""
        done = replace(row, state=state, decided_ms=now_ms, decided_by=actor, new_uid=new_uid)
        self._conflicts[conflict_id] = done
        self._append_audit([*events, conflict_alert(done, f"conflict {conflict_id} decided: {decision.value}", actor)],
                          now_ms)
        return done
