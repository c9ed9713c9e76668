"""The conflict queue in dictionaries (part of MemoryMetadataStore): the same contract as sqlite_conflicts.py."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

from meshnode.storage.audit import AuditEntry, AuditEvent
from meshnode.storage.conflicts import KIND_STORE, ConflictRow, Incoming, check_applicable, conflict_alert
from meshnode.storage.records import InstanceRecord, StudyAttributes, hash_uid
from meshnode.storage.retry_queue import MemoryRetryQueue
from protocol.cid import CID
from protocol.conflict import ConflictAction, ConflictState, Decision, check_decision, decide

log = logging.getLogger(__name__)


class MemoryConflicts(MemoryRetryQueue):
    def __init__(self) -> None:
        super().__init__()
        self._conflicts: dict[int, ConflictRow] = {}
        self._instances: list[InstanceRecord] = []
        self._studies: dict[str, StudyAttributes] = {}
        self._blocks: dict[CID, int] = {}

    def append_audit(self, events: Sequence[AuditEvent], now_ms: int) -> list[AuditEntry]:
        raise NotImplementedError  # MemoryMetadataStore's

    def _held_blocks(self) -> list[CID]:
        """Blocks of pending held newcomers, once per conflict (gc keeps them)."""
        return [c for r in self._conflicts.values() if r.state is ConflictState.PENDING and r.newcomer is not None
                for c in set(r.newcomer.blocks)]

    def _insert(self, row: ConflictRow) -> ConflictRow:
        row = replace(row, conflict_id=max(self._conflicts, default=0) + 1)
        self._conflicts[row.conflict_id] = row
        return row

    def _add_instance(self, rec: InstanceRecord) -> None:
        self._studies[rec.study_uid] = rec.study
        self._instances.append(rec)
        for cid, size in zip(rec.blocks, rec.block_sizes):
            self._blocks.setdefault(cid, size)

    def _arrive(self, rec: InstanceRecord, incoming: Incoming, now_ms: int
                ) -> tuple[ConflictAction, list[AuditEvent]]:
        existing = [i.digest for i in self._instances if i.sop_instance_uid == rec.sop_instance_uid]
        held = [r.newcomer_digest for r in self._conflicts.values() if r.kind == KIND_STORE
                and r.state is ConflictState.PENDING and r.sop_instance_uid == rec.sop_instance_uid]
        action = decide(incoming.policy, existing, rec.digest, held)
        if action is ConflictAction.HOLD:
            row = self._insert(ConflictRow(0, KIND_STORE, rec.sop_instance_uid, rec.study_uid, existing[0],
                                           rec.digest, incoming.policy, ConflictState.PENDING, incoming.source,
                                           incoming.route, now_ms, rec))
            for cid, size in zip(rec.blocks, rec.block_sizes):
                self._blocks.setdefault(cid, size)
            log.warning("SOP Instance UID conflict %d: %s came again with other bytes from %s; held (policy %s)",
                        row.conflict_id, hash_uid(rec.sop_instance_uid), incoming.source or "-",
                        incoming.policy.value)
            return action, [conflict_alert(row, f"conflict {row.conflict_id} held for a decision")]
        if action is ConflictAction.SUPERSEDE:
            row = self._insert(ConflictRow(0, KIND_STORE, rec.sop_instance_uid, rec.study_uid, existing[0],
                                           rec.digest, incoming.policy, ConflictState.REPLACED, incoming.source,
                                           incoming.route, now_ms, None, now_ms, "policy"))
            self._instances = [i for i in self._instances if i.sop_instance_uid != rec.sop_instance_uid]
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
        self.append_audit([*events, conflict_alert(held, f"conflict {held.conflict_id} held for a decision")], now_ms)
        return held.conflict_id

    def decide_conflict(self, conflict_id: int, decision: Decision, actor: str, events: Sequence[AuditEvent],
                        now_ms: int, renamed: InstanceRecord | None = None) -> ConflictRow:
        row = check_applicable(self._conflicts.get(conflict_id), conflict_id, decision, renamed)
        state = check_decision(row.state, decision)
        if row.kind == KIND_STORE and row.newcomer is not None:
            if decision is Decision.REPLACE:
                self._instances = [i for i in self._instances if i.sop_instance_uid != row.sop_instance_uid]
                self._add_instance(row.newcomer)
            elif decision is Decision.KEEP_BOTH and renamed is not None:
                self._add_instance(renamed)
        new_uid = renamed.sop_instance_uid if decision is Decision.KEEP_BOTH and renamed is not None else ""
        done = replace(row, state=state, decided_ms=now_ms, decided_by=actor, new_uid=new_uid)
        self._conflicts[conflict_id] = done
        self.append_audit([*events, conflict_alert(done, f"conflict {conflict_id} decided: {decision.value}", actor)],
                          now_ms)
        return done
