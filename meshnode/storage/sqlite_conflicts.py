"""The conflict queue on the node's SQLite file (meshnode.storage.conflicts; tables: schema.py migration 11).

Mixed into SqliteMetadataStore (sqlite_metadata.py), whose add_instances calls `_arrive` for each
instance inside its transaction: the decision (protocol.conflict.decide), the held row and its blocks,
the superseded instances and the audit entries commit together, or not at all.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from meshnode.storage.audit import AuditEvent
from meshnode.storage.conflicts import (
    KIND_STORE,
    ConflictRow,
    Incoming,
    check_applicable,
    check_current,
    conflict_alert,
    other_lineage,
    record_from_json,
    record_to_json,
)
from meshnode.storage.records import InstanceRecord, hash_uid
from meshnode.storage.sqlite_audit import SqliteAudit
from meshnode.storage.sqlite_catalog import SqliteCatalog
from protocol.cid import CID
from protocol.conflict import (
    ConflictAction,
    ConflictPolicy,
    ConflictState,
    Decision,
    check_decision,
    decide,
    lineage_policy,
)
from protocol.errors import MeshError
from protocol.lifecycle import ManifestState

log = logging.getLogger(__name__)

_COLUMNS = ("id, kind, sop_instance_uid, study_uid, existing_digest, newcomer_digest, policy, state, source, route,"
            " record, manifest_id, created_ms, decided_ms, decided_by, new_uid")


def _row(r: Any) -> ConflictRow:
    return ConflictRow(
        conflict_id=int(r[0]), kind=str(r[1]), sop_instance_uid=str(r[2]), study_uid=str(r[3]),
        existing_digest=bytes(r[4]), newcomer_digest=bytes(r[5]), policy=ConflictPolicy(r[6]),
        state=ConflictState(r[7]), source=str(r[8]), route=str(r[9]),
        newcomer=record_from_json(str(r[10])) if r[10] else None, manifest_id=str(r[11]), created_ms=int(r[12]),
        decided_ms=None if r[13] is None else int(r[13]), decided_by=str(r[14]), new_uid=str(r[15]))


def _insert(db: sqlite3.Connection, row: ConflictRow) -> int:
    cur = db.execute(
        f"INSERT INTO instance_conflicts ({_COLUMNS}) VALUES (NULL,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (row.kind, row.sop_instance_uid, row.study_uid, row.existing_digest, row.newcomer_digest, row.policy.value,
         row.state.value, row.source, row.route, record_to_json(row.newcomer) if row.newcomer else "",
         row.manifest_id, row.created_ms, row.decided_ms, row.decided_by, row.new_uid))
    return int(cur.lastrowid or 0)


class SqliteConflicts(SqliteCatalog, SqliteAudit):
    """ConflictStore, on the catalog's rows (SqliteCatalog) and the audit chain (SqliteAudit)."""

    # -- on arrival (inside add_instances' transaction) ---------------------------------------------
    def _arrive(self, db: sqlite3.Connection, rec: InstanceRecord, incoming: Incoming, now_ms: int
                ) -> tuple[ConflictAction, list[AuditEvent]]:
        """Decide for one instance; a held one is recorded here, a superseded one's old rows removed here.
        ADD and SUPERSEDE leave the insert of the newcomer to the caller."""
        stored = [(bytes(d), (str(s), str(o), str(st))) for d, s, o, st in db.execute(
            "SELECT digest, source, origin, study_uid FROM instances WHERE sop_instance_uid = ?",
            (rec.sop_instance_uid,))]
        existing = [d for d, _ in stored]
        held = [bytes(d) for (d,) in db.execute(
            "SELECT newcomer_digest FROM instance_conflicts WHERE sop_instance_uid = ? AND state = 'pending'"
            " AND kind = ?", (rec.sop_instance_uid, KIND_STORE))]
        decided = [bytes(d) for (d,) in db.execute(
            "SELECT newcomer_digest FROM instance_conflicts WHERE sop_instance_uid = ? AND kind = ?"
            " AND state IN ('kept-both', 'discarded')", (rec.sop_instance_uid, KIND_STORE))]
        why = other_lineage(rec, [lin for _, lin in stored])
        policy = lineage_policy(incoming.policy, not why)
        action = decide(policy, existing, rec.digest, held, decided)
        if action is ConflictAction.HOLD:
            row = ConflictRow(0, KIND_STORE, rec.sop_instance_uid, rec.study_uid, existing[0], rec.digest,
                              policy, ConflictState.PENDING, incoming.source, incoming.route, now_ms, rec,
                              manifest_id=incoming.manifest_id)
            conflict_id = _insert(db, row)
            db.executemany("INSERT OR IGNORE INTO conflict_blocks VALUES (?,?)",
                           [(conflict_id, c.to_bytes()) for c in set(rec.blocks)])
            db.executemany("INSERT OR IGNORE INTO blocks VALUES (?,?,?)",
                           [(c.to_bytes(), n, now_ms) for c, n in zip(rec.blocks, rec.block_sizes)])
            log.warning("SOP Instance UID conflict %d: %s came again with other bytes from %s; held (policy %s%s)",
                        conflict_id, hash_uid(rec.sop_instance_uid), incoming.source or "-", policy.value,
                        f"; {why}" if why else "")
            return action, [conflict_alert(row, f"conflict {conflict_id} held for a decision"
                                                + (f" ({why})" if why else ""))]
        if action is ConflictAction.SUPERSEDE:
            row = ConflictRow(0, KIND_STORE, rec.sop_instance_uid, rec.study_uid, existing[0], rec.digest,
                              policy, ConflictState.REPLACED, incoming.source, incoming.route, now_ms,
                              None, now_ms, "policy", manifest_id=incoming.manifest_id)
            conflict_id = _insert(db, row)
            db.execute("DELETE FROM instances WHERE sop_instance_uid = ?", (rec.sop_instance_uid,))
            self._rebase(db, rec.sop_instance_uid, rec.digest)
            log.warning("SOP Instance UID conflict %d: %s came again with other bytes from %s; replaced (policy)",
                        conflict_id, hash_uid(rec.sop_instance_uid), incoming.source or "-")
            return action, [conflict_alert(row, f"conflict {conflict_id}: the stored version replaced by policy")]
        return action, []

    # -- the queue ----------------------------------------------------------------------------------
    def conflicts(self, state: ConflictState | None = None) -> list[ConflictRow]:
        if state is None:
            rows = self._query(f"SELECT {_COLUMNS} FROM instance_conflicts ORDER BY id")
        else:
            rows = self._query(f"SELECT {_COLUMNS} FROM instance_conflicts WHERE state = ? ORDER BY id",
                               (state.value,))
        return [_row(r) for r in rows]

    def conflict(self, conflict_id: int) -> ConflictRow | None:
        rows = self._query(f"SELECT {_COLUMNS} FROM instance_conflicts WHERE id = ?", (conflict_id,))
        return _row(rows[0]) if rows else None

    def superseded_digests(self, sop_instance_uid: str) -> list[bytes]:
        return [bytes(d) for (d,) in self._query(
            "SELECT existing_digest FROM instance_conflicts WHERE sop_instance_uid = ? AND state = 'replaced'"
            " AND kind = ? ORDER BY id", (sop_instance_uid, KIND_STORE))]

    def add_forward_conflict(self, row: ConflictRow, events: Sequence[AuditEvent], now_ms: int) -> int | None:
        with self._tx() as db:
            if db.execute("SELECT 1 FROM instance_conflicts WHERE kind = ? AND sop_instance_uid = ?"
                          " AND newcomer_digest = ? AND state = 'pending'",
                          (row.kind, row.sop_instance_uid, row.newcomer_digest)).fetchone():
                return None
            conflict_id = _insert(db, row)
            held = replace(row, conflict_id=conflict_id)
            self._append_audit(db, [*events, conflict_alert(held, f"conflict {conflict_id} held for a decision")],
                               now_ms)
            return conflict_id

    @staticmethod
    def _rebase(db: sqlite3.Connection, sop_instance_uid: str, digest: bytes) -> None:
        """The stored version of a UID is now `digest`: its other pending conflicts show it (and a decision
        on them is taken against it: check_current)."""
        db.execute("UPDATE instance_conflicts SET existing_digest = ? WHERE sop_instance_uid = ? AND kind = ?"
                   " AND state = 'pending' AND newcomer_digest != ?", (digest, sop_instance_uid, KIND_STORE, digest))

    @staticmethod
    def _manifest_state(db: sqlite3.Connection, manifest_id: str) -> ManifestState | None:
        if not manifest_id:
            return None
        try:
            key = CID.parse(manifest_id).to_bytes()
        except MeshError:
            return None
        found = db.execute("SELECT state FROM manifests WHERE manifest_id = ?", (key,)).fetchone()
        try:
            return ManifestState(found[0]) if found else None
        except ValueError:
            return None

    def decide_conflict(self, conflict_id: int, decision: Decision, actor: str, events: Sequence[AuditEvent],
                        now_ms: int, renamed: InstanceRecord | None = None,
                        expected_existing: bytes | None = None) -> ConflictRow:
        with self._tx() as db:
            found = db.execute(f"SELECT {_COLUMNS} FROM instance_conflicts WHERE id = ?", (conflict_id,)).fetchone()
            row = check_applicable(_row(found) if found else None, conflict_id, decision, renamed)
            state = check_decision(row.state, decision)
            stored = [bytes(d) for (d,) in db.execute(
                "SELECT digest FROM instances WHERE sop_instance_uid = ?", (row.sop_instance_uid,))]
            check_current(row, decision, stored if row.kind == KIND_STORE else None,
                          self._manifest_state(db, row.manifest_id), expected_existing)
            if row.kind == KIND_STORE and row.newcomer is not None:
                if decision is Decision.REPLACE:
                    db.execute("DELETE FROM instances WHERE sop_instance_uid = ?", (row.sop_instance_uid,))
                    self._insert_instance(db, row.newcomer, now_ms)
                    self._rebase(db, row.sop_instance_uid, row.newcomer_digest)
                elif decision is Decision.KEEP_BOTH and renamed is not None:
                    self._insert_instance(db, renamed, now_ms)
                db.execute("DELETE FROM conflict_blocks WHERE conflict_id = ?", (conflict_id,))
            new_uid = renamed.sop_instance_uid if decision is Decision.KEEP_BOTH and renamed is not None else ""
            db.execute("UPDATE instance_conflicts SET state = ?, decided_ms = ?, decided_by = ?, new_uid = ?"
                       " WHERE id = ?", (state.value, now_ms, actor, new_uid, conflict_id))
            done = replace(row, state=state, decided_ms=now_ms, decided_by=actor, new_uid=new_uid)
            self._append_audit(db, [*events, conflict_alert(done, f"conflict {conflict_id} decided: "
                                                                  f"{decision.value}", actor)], now_ms)
            return done
