"""MetadataStore on one SQLite file: WAL, synchronous=FULL, STRICT tables, migrations."""

from __future__ import annotations

import json
import sqlite3
from typing import Any
from collections.abc import Iterable, Sequence
from pathlib import Path

from meshnode.sqlite_db import SqliteConnection
from meshnode.storage import audit
from meshnode.storage import sqlite_search
from meshnode.storage.audit import AuditEntry, AuditEvent, EventCode, Outcome
from meshnode.storage.audit_checkpoint import (
    AuditCheckpoint,
    SpoolItem,
    decode_payload,
    due_checkpoints,
    spool_rows,
    rebased_checkpoints,
    tail_vouches,
)
from meshnode.storage.records import (
    AddOutcome,
    DeliveryRow,
    InstanceRecord,
    ManifestRow,
    SeriesAttributes,
    ServedRow,
    Source,
    StudyAttributes,
    StudySummaryRow,
    hash_uid,
)
from meshnode.storage.search import AuditQuery, InstanceSummaryRow, Search, SeriesSummaryRow
from protocol.access import Holding
from protocol.cid import CID
from protocol.errors import StorageError
from protocol.keys import SigningKey
from protocol.lifecycle import ManifestState, parse_state

CONFLICT_FLAG = "sop-uid-conflict"

MIGRATIONS = (
    """
    CREATE TABLE studies (
        study_uid TEXT PRIMARY KEY, patient_name TEXT NOT NULL, patient_id TEXT NOT NULL,
        birth_date TEXT NOT NULL, sex TEXT NOT NULL, study_date TEXT NOT NULL, study_time TEXT NOT NULL,
        description TEXT NOT NULL, accession TEXT NOT NULL, updated_ms INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX studies_by_patient ON studies (patient_id);
    CREATE INDEX studies_by_date ON studies (study_date);
    CREATE INDEX studies_by_accession ON studies (accession);
    CREATE TABLE series (
        series_uid TEXT PRIMARY KEY, study_uid TEXT NOT NULL REFERENCES studies (study_uid),
        modality TEXT NOT NULL, series_number INTEGER, description TEXT NOT NULL
    ) STRICT;
    CREATE INDEX series_by_study ON series (study_uid);
    CREATE TABLE instances (
        id INTEGER PRIMARY KEY, sop_instance_uid TEXT NOT NULL, sop_class_uid TEXT NOT NULL,
        series_uid TEXT NOT NULL REFERENCES series (series_uid),
        study_uid TEXT NOT NULL REFERENCES studies (study_uid),
        transfer_syntax TEXT NOT NULL, size INTEGER NOT NULL, digest BLOB NOT NULL,
        instance_number INTEGER, rows INTEGER, columns INTEGER, frames INTEGER,
        flags TEXT NOT NULL, source TEXT NOT NULL, added_ms INTEGER NOT NULL,
        UNIQUE (sop_instance_uid, digest)
    ) STRICT;
    CREATE INDEX instances_by_study ON instances (study_uid);
    CREATE INDEX instances_by_series ON instances (series_uid);
    CREATE TABLE blocks (
        cid BLOB PRIMARY KEY, size INTEGER NOT NULL, added_ms INTEGER NOT NULL
    ) STRICT, WITHOUT ROWID;
    CREATE TABLE instance_blocks (
        instance_id INTEGER NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
        seq INTEGER NOT NULL, cid BLOB NOT NULL, size INTEGER NOT NULL,
        PRIMARY KEY (instance_id, seq)
    ) STRICT;
    CREATE INDEX instance_blocks_by_cid ON instance_blocks (cid);
    CREATE TABLE manifests (
        manifest_id BLOB PRIMARY KEY, study_uid TEXT NOT NULL,
        direction TEXT NOT NULL CHECK (direction IN ('sent', 'received')),
        sender_org TEXT NOT NULL, recipients TEXT NOT NULL, revision INTEGER NOT NULL,
        state TEXT NOT NULL, created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, raw BLOB NOT NULL
    ) STRICT;
    CREATE TABLE manifest_blocks (
        manifest_id BLOB NOT NULL REFERENCES manifests (manifest_id) ON DELETE CASCADE,
        cid BLOB NOT NULL, PRIMARY KEY (manifest_id, cid)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX manifest_blocks_by_cid ON manifest_blocks (cid);
    CREATE TABLE transfers (
        manifest_id BLOB PRIMARY KEY, state TEXT NOT NULL, blocks_done INTEGER NOT NULL,
        bytes_done INTEGER NOT NULL, updated_ms INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE peers (peer_id TEXT PRIMARY KEY, org TEXT NOT NULL, last_seen_ms INTEGER NOT NULL) STRICT;
    CREATE TABLE roster_state (id INTEGER PRIMARY KEY CHECK (id = 1), highest_version INTEGER NOT NULL) STRICT;
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, code INTEGER NOT NULL, action TEXT NOT NULL,
        outcome INTEGER NOT NULL, actor TEXT NOT NULL, actor_org TEXT NOT NULL, study TEXT NOT NULL,
        manifest_id TEXT NOT NULL, detail TEXT NOT NULL, prev_hash BLOB NOT NULL, hash BLOB NOT NULL
    ) STRICT
    """,
    """
    CREATE TABLE deliveries (
        manifest_id BLOB NOT NULL REFERENCES manifests (manifest_id) ON DELETE CASCADE,
        org TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL, next_attempt_ms INTEGER NOT NULL,
        last_error TEXT NOT NULL, receipt BLOB, updated_ms INTEGER NOT NULL,
        PRIMARY KEY (manifest_id, org)
    ) STRICT;
    ALTER TABLE transfers ADD COLUMN served_by TEXT NOT NULL DEFAULT '{}'
    """,
    # 3: the gateway (meshnode.storage.sqlite_gateway): quiet-period announcements, forward queue
    """
    CREATE TABLE gateway_announcements (
        study_uid TEXT NOT NULL, route TEXT NOT NULL, state TEXT NOT NULL, instances INTEGER NOT NULL,
        first_ms INTEGER NOT NULL, last_instance_ms INTEGER NOT NULL, revision INTEGER NOT NULL,
        manifest_id BLOB, announced_ms INTEGER, attempts INTEGER NOT NULL, next_attempt_ms INTEGER NOT NULL,
        last_error TEXT NOT NULL,
        PRIMARY KEY (study_uid, route)
    ) STRICT;
    CREATE INDEX gateway_announcements_by_state ON gateway_announcements (state);
    CREATE TABLE forward_items (
        manifest_id BLOB NOT NULL, destination TEXT NOT NULL, seq INTEGER NOT NULL,
        sop_instance_uid TEXT NOT NULL, digest BLOB NOT NULL, study_uid TEXT NOT NULL, priority INTEGER NOT NULL,
        state TEXT NOT NULL, attempts INTEGER NOT NULL, next_attempt_ms INTEGER NOT NULL,
        last_error TEXT NOT NULL, status INTEGER, enqueued_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL,
        PRIMARY KEY (manifest_id, destination, sop_instance_uid)
    ) STRICT;
    CREATE INDEX forward_items_due ON forward_items (destination, state, priority, next_attempt_ms);
    CREATE INDEX forward_items_held ON forward_items (destination, sop_instance_uid, digest, state)
    """,
    # 4: HTTP: DICOMweb/UI users and their API tokens (hashes only), the webhook retry queue
    """
    CREATE TABLE users (
        name TEXT PRIMARY KEY, roles TEXT NOT NULL, created_ms INTEGER NOT NULL, disabled INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE api_tokens (
        token_hash BLOB PRIMARY KEY, token_id TEXT NOT NULL UNIQUE,
        user_name TEXT NOT NULL REFERENCES users (name), label TEXT NOT NULL, created_ms INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL, revoked INTEGER NOT NULL, last_used_ms INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX api_tokens_by_user ON api_tokens (user_name);
    CREATE TABLE webhook_queue (
        id INTEGER PRIMARY KEY, hook TEXT NOT NULL, event_key TEXT NOT NULL, event TEXT NOT NULL,
        body BLOB NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL, next_attempt_ms INTEGER NOT NULL,
        last_error TEXT NOT NULL, created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL,
        UNIQUE (hook, event_key)
    ) STRICT;
    CREATE INDEX webhook_queue_due ON webhook_queue (state, next_attempt_ms)
    """,
    # 5: access by provenance (protocol.access): the blocks fetched under each manifest, the sender's
    # certificate of a received manifest (to relay it to a fellow recipient), what was served to whom
    """
    CREATE TABLE obtained_blocks (
        manifest_id BLOB NOT NULL, cid BLOB NOT NULL, PRIMARY KEY (manifest_id, cid)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX obtained_blocks_by_cid ON obtained_blocks (cid);
    CREATE INDEX manifests_by_share ON manifests (study_uid, sender_org, direction);
    ALTER TABLE manifests ADD COLUMN certificate BLOB NOT NULL DEFAULT x'';
    CREATE TABLE served (
        manifest_id BLOB NOT NULL, org TEXT NOT NULL, blocks INTEGER NOT NULL, bytes INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL, PRIMARY KEY (manifest_id, org)
    ) STRICT;
    CREATE TABLE recall_tombstones (
        manifest_id BLOB PRIMARY KEY, sender_org TEXT NOT NULL, at_ms INTEGER NOT NULL
    ) STRICT
    """,
    # 6: why a received manifest failed (its content disagrees with it), for the inbox
    """
    CREATE TABLE manifest_failures (
        manifest_id BLOB PRIMARY KEY, reason TEXT NOT NULL, at_ms INTEGER NOT NULL
    ) STRICT
    """,
    # 7: tamper-evident audit: signed checkpoints of the chain, the spool for the audit repository
    """
    CREATE TABLE audit_checkpoints (
        n INTEGER PRIMARY KEY, seq INTEGER NOT NULL, hash BLOB NOT NULL, at_ms INTEGER NOT NULL,
        rebase_from INTEGER NOT NULL, rebase_to INTEGER NOT NULL, signature BLOB NOT NULL
    ) STRICT;
    CREATE INDEX audit_checkpoints_by_seq ON audit_checkpoints (seq);
    CREATE TABLE audit_tail (
        id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL, hash BLOB NOT NULL, at_ms INTEGER NOT NULL,
        signature BLOB NOT NULL
    ) STRICT;
    CREATE TABLE audit_spool (
        id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL CHECK (kind IN ('entry', 'checkpoint')),
        seq INTEGER NOT NULL, payload BLOB NOT NULL, created_ms INTEGER NOT NULL, attempts INTEGER NOT NULL
    ) STRICT
    """,
)

_LIVE_REFS = """
    SELECT count(*) FROM instance_blocks WHERE cid = :cid
    UNION ALL
    SELECT count(*) FROM manifest_blocks mb JOIN manifests m ON m.manifest_id = mb.manifest_id
     WHERE mb.cid = :cid AND m.state != :recalled AND m.expires_at >= :now
"""


class SqliteMetadataStore(SqliteConnection):
    def __init__(self, path: Path) -> None:
        super().__init__(path, MIGRATIONS)
        self._audit_key: SigningKey | None = None
        self._own_tail: AuditCheckpoint | None = None  # the tail this connection last wrote

    # -- studies and instances ------------------------------------------------
    def add_instances(
        self, records: Sequence[InstanceRecord], events: Sequence[AuditEvent], now_ms: int
    ) -> list[AddOutcome]:
        outcomes: list[AddOutcome] = []
        conflict_events: list[AuditEvent] = []
        with self._tx() as db:
            for rec in records:
                outcome = self._add_one(db, rec, now_ms)
                outcomes.append(outcome)
                if outcome is AddOutcome.CONFLICT:
                    conflict_events.append(
                        AuditEvent(EventCode.SECURITY_ALERT, "sop-instance-uid-conflict", Outcome.MINOR_FAILURE,
                                   study=hash_uid(rec.study_uid),
                                   detail="same SOP Instance UID with different bytes; both kept")
                    )
            self._append_audit(db, [*events, *conflict_events], now_ms)
        return outcomes

    def _add_one(self, db: sqlite3.Connection, rec: InstanceRecord, now_ms: int) -> AddOutcome:
        st, se = rec.study, rec.series
        db.execute(
            "INSERT INTO studies VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT (study_uid) DO UPDATE SET"
            " patient_name=excluded.patient_name, patient_id=excluded.patient_id, birth_date=excluded.birth_date,"
            " sex=excluded.sex, study_date=excluded.study_date, study_time=excluded.study_time,"
            " description=excluded.description, accession=excluded.accession, updated_ms=excluded.updated_ms",
            (st.study_uid, st.patient_name, st.patient_id, st.birth_date, st.sex, st.study_date, st.study_time,
             st.description, st.accession, now_ms),
        )
        db.execute(
            "INSERT INTO series VALUES (?,?,?,?,?) ON CONFLICT (series_uid) DO UPDATE SET"
            " modality=excluded.modality, series_number=excluded.series_number, description=excluded.description",
            (se.series_uid, st.study_uid, se.modality, se.series_number, se.description),
        )
        existing = db.execute(
            "SELECT digest FROM instances WHERE sop_instance_uid = ?", (rec.sop_instance_uid,)
        ).fetchall()
        if any(bytes(d) == rec.digest for (d,) in existing):
            return AddOutcome.DUPLICATE
        outcome = AddOutcome.CONFLICT if existing else AddOutcome.ADDED
        flags = list(rec.flags) + ([CONFLICT_FLAG] if existing else [])
        if existing:
            db.execute(
                "UPDATE instances SET flags = CASE WHEN flags = '' THEN :f ELSE flags || ',' || :f END"
                " WHERE sop_instance_uid = :uid AND instr(flags, :f) = 0",
                {"f": CONFLICT_FLAG, "uid": rec.sop_instance_uid},
            )
        cur = db.execute(
            "INSERT INTO instances (sop_instance_uid, sop_class_uid, series_uid, study_uid, transfer_syntax, size,"
            " digest, instance_number, rows, columns, frames, flags, source, added_ms)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (rec.sop_instance_uid, rec.sop_class_uid, se.series_uid, st.study_uid, rec.transfer_syntax, rec.size,
             rec.digest, rec.instance_number, rec.rows, rec.columns, rec.frames, ",".join(flags),
             rec.source.value, now_ms),
        )
        instance_id = cur.lastrowid
        db.executemany(
            "INSERT INTO instance_blocks VALUES (?,?,?,?)",
            [(instance_id, i, cid.to_bytes(), size) for i, (cid, size) in enumerate(zip(rec.blocks, rec.block_sizes))],
        )
        db.executemany(
            "INSERT OR IGNORE INTO blocks VALUES (?,?,?)",
            [(cid.to_bytes(), size, now_ms) for cid, size in zip(rec.blocks, rec.block_sizes)],
        )
        return outcome

    _SUMMARY = """
        SELECT s.study_uid, s.patient_name, s.patient_id, s.birth_date, s.sex, s.study_date, s.study_time,
               s.description, s.accession,
               (SELECT group_concat(DISTINCT modality) FROM series WHERE study_uid = s.study_uid
                   AND series_uid IN (SELECT series_uid FROM instances WHERE study_uid = s.study_uid)),
               (SELECT count(DISTINCT series_uid) FROM instances WHERE study_uid = s.study_uid),
               (SELECT count(*) FROM instances WHERE study_uid = s.study_uid),
               (SELECT coalesce(sum(size), 0) FROM instances WHERE study_uid = s.study_uid),
               (SELECT group_concat(DISTINCT source) FROM instances WHERE study_uid = s.study_uid),
               (SELECT count(*) FROM instances WHERE study_uid = s.study_uid AND instr(flags, 'sop-uid-conflict'))
          FROM studies s
         WHERE EXISTS (SELECT 1 FROM instances WHERE study_uid = s.study_uid)
    """

    @staticmethod
    def _summary(row: Any) -> StudySummaryRow:
        attrs = StudyAttributes(*(str(v) for v in row[:9]))
        return StudySummaryRow(
            attributes=attrs,
            modalities=tuple(sorted(str(row[9]).split(","))) if row[9] else (),
            series_count=int(row[10]),
            instance_count=int(row[11]),
            total_bytes=int(row[12]),
            sources=tuple(sorted(str(row[13] or "").split(","))),
            conflicts=int(row[14]),
        )

    def studies(self) -> list[StudySummaryRow]:
        return [self._summary(r) for r in self._query(self._SUMMARY + " ORDER BY s.study_date, s.study_uid")]

    def study(self, study_uid: str) -> StudySummaryRow | None:
        rows = self._query(self._SUMMARY + " AND s.study_uid = ?", (study_uid,))
        return self._summary(rows[0]) if rows else None

    def search_studies(self, search: Search) -> list[StudySummaryRow]:
        return sqlite_search.search_studies(self._query, self._SUMMARY, self._summary, search)

    def search_series(self, search: Search) -> list[SeriesSummaryRow]:
        return sqlite_search.search_series(self._query, search)

    def search_instances(self, search: Search) -> list[InstanceSummaryRow]:
        return sqlite_search.search_instances(self._query, search)

    def instances(self, study_uid: str) -> list[InstanceRecord]:
        rows = self._query(
            "SELECT i.id, i.sop_instance_uid, i.sop_class_uid, i.transfer_syntax, i.size, i.digest,"
            " i.instance_number, i.rows, i.columns, i.frames, i.flags, i.source,"
            " se.series_uid, se.modality, se.series_number, se.description,"
            " st.study_uid, st.patient_name, st.patient_id, st.birth_date, st.sex, st.study_date, st.study_time,"
            " st.description, st.accession"
            " FROM instances i JOIN series se ON se.series_uid = i.series_uid"
            " JOIN studies st ON st.study_uid = i.study_uid WHERE i.study_uid = ?"
            " ORDER BY se.series_number, se.series_uid, i.instance_number, i.sop_instance_uid, i.id",
            (study_uid,),
        )
        blocks: dict[int, list[tuple[CID, int]]] = {}
        for iid, cid, size in self._query(
            "SELECT ib.instance_id, ib.cid, ib.size FROM instance_blocks ib JOIN instances i ON i.id = ib.instance_id"
            " WHERE i.study_uid = ? ORDER BY ib.instance_id, ib.seq",
            (study_uid,),
        ):
            blocks.setdefault(int(iid), []).append((CID.from_bytes(bytes(cid)), int(size)))
        out = []
        for r in rows:
            iid = int(r[0])
            bl = blocks.get(iid, [])
            out.append(
                InstanceRecord(
                    sop_instance_uid=str(r[1]), sop_class_uid=str(r[2]),
                    series=SeriesAttributes(str(r[12]), str(r[13]), _opt_int(r[14]), str(r[15])),
                    study=StudyAttributes(*(str(v) for v in r[16:25])),
                    transfer_syntax=str(r[3]), size=int(r[4]), digest=bytes(r[5]),
                    blocks=tuple(c for c, _ in bl), block_sizes=tuple(s for _, s in bl),
                    instance_number=_opt_int(r[6]), rows=_opt_int(r[7]), columns=_opt_int(r[8]),
                    frames=_opt_int(r[9]), flags=tuple(f for f in str(r[10]).split(",") if f),
                    source=Source(str(r[11])),
                )
            )
        return out

    def forget_study(self, study_uid: str, events: Sequence[AuditEvent], now_ms: int) -> int:
        with self._tx() as db:
            cur = db.execute("DELETE FROM instances WHERE study_uid = ?", (study_uid,))
            db.execute("DELETE FROM series WHERE study_uid = ?", (study_uid,))
            db.execute("DELETE FROM studies WHERE study_uid = ?", (study_uid,))
            self._append_audit(db, events, now_ms)
            return cur.rowcount

    # -- blocks -----------------------------------------------------------------
    def record_blocks(self, blocks: Sequence[tuple[CID, int]], now_ms: int,
                      obtained: Sequence[tuple[CID, CID, str]] = ()) -> None:
        with self._tx() as db:
            db.executemany("INSERT OR IGNORE INTO blocks VALUES (?,?,?)",
                           [(c.to_bytes(), s, now_ms) for c, s in blocks])
            counts: dict[CID, dict[str, int]] = {}
            for manifest_id, cid, peer in obtained:
                if db.execute("INSERT OR IGNORE INTO obtained_blocks VALUES (?,?)",
                              (manifest_id.to_bytes(), cid.to_bytes())).rowcount:
                    per_peer = counts.setdefault(manifest_id, {})
                    per_peer[peer] = per_peer.get(peer, 0) + 1
            for manifest_id, per_peer in counts.items():
                rows = db.execute("SELECT served_by FROM transfers WHERE manifest_id = ?",
                                  (manifest_id.to_bytes(),)).fetchall()
                if not rows:
                    continue
                merged = {str(k): int(v) for k, v in json.loads(rows[0][0]).items()}
                for peer, n in per_peer.items():
                    merged[peer] = merged.get(peer, 0) + n
                db.execute("UPDATE transfers SET served_by = ? WHERE manifest_id = ?",
                           (json.dumps(merged, sort_keys=True), manifest_id.to_bytes()))

    def _by_cid(self, query: str, cids: Iterable[CID], before: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """Rows of `query` (whose `{marks}` is an IN list of CIDs), asked 500 CIDs at a time."""
        wanted = [c.to_bytes() for c in cids]
        rows: list[tuple[Any, ...]] = []
        for i in range(0, len(wanted), 500):
            chunk = wanted[i : i + 500]
            rows.extend(self._query(query.format(marks=",".join("?" * len(chunk))), (*before, *chunk)))
        return rows

    def obtained_blocks(self, manifest_id: CID, cids: Iterable[CID]) -> set[CID]:
        return {CID.from_bytes(bytes(c)) for (c,) in self._by_cid(
            "SELECT DISTINCT o.cid FROM manifests m"
            " JOIN manifests e ON e.study_uid = m.study_uid AND e.sender_org = m.sender_org"
            "  AND e.direction = 'received' AND e.revision <= m.revision"
            " JOIN obtained_blocks o ON o.manifest_id = e.manifest_id"
            " WHERE m.manifest_id = ? AND m.direction = 'received' AND o.cid IN ({marks})",
            cids, (manifest_id.to_bytes(),))}

    def holdings(self, cids: Iterable[CID]) -> dict[CID, list[Holding]]:
        out: dict[CID, list[Holding]] = {}
        for cid, sender, recipients, direction, obtained in self._by_cid(
                "SELECT mb.cid, m.sender_org, m.recipients, m.direction,"
                " EXISTS (SELECT 1 FROM obtained_blocks o WHERE o.manifest_id = mb.manifest_id AND o.cid = mb.cid)"
                " FROM manifest_blocks mb JOIN manifests m ON m.manifest_id = mb.manifest_id"
                " WHERE mb.cid IN ({marks})", cids):
            out.setdefault(CID.from_bytes(bytes(cid)), []).append(Holding(
                str(sender), frozenset(x for x in str(recipients).split(",") if x),
                direction == "sent" or bool(obtained)))
        return out

    def present_blocks(self, cids: Iterable[CID]) -> set[CID]:
        return {CID.from_bytes(bytes(c)) for (c,) in self._by_cid(
            "SELECT cid FROM blocks WHERE cid IN ({marks})", cids)}

    def block_refcount(self, cid: CID, now_s: int) -> int:
        rows = self._query(_LIVE_REFS,
                           {"cid": cid.to_bytes(), "now": now_s, "recalled": ManifestState.RECALLED.value})
        return sum(int(n) for (n,) in rows)

    def unreferenced_blocks(self, now_s: int) -> list[CID]:
        rows = self._query(
            "SELECT b.cid FROM blocks b WHERE NOT EXISTS (SELECT 1 FROM instance_blocks ib WHERE ib.cid = b.cid)"
            " AND NOT EXISTS (SELECT 1 FROM manifest_blocks mb JOIN manifests m ON m.manifest_id = mb.manifest_id"
            "   WHERE mb.cid = b.cid AND m.state != ? AND m.expires_at >= ?)",
            (ManifestState.RECALLED.value, now_s),
        )
        return [CID.from_bytes(bytes(c)) for (c,) in rows]

    def forget_blocks(self, cids: Sequence[CID]) -> None:
        with self._tx() as db:
            db.executemany("DELETE FROM blocks WHERE cid = ?", [(c.to_bytes(),) for c in cids])

    # -- manifests and transfers ----------------------------------------------
    def save_manifest(self, row: ManifestRow, blocks: Iterable[CID]) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO manifests (manifest_id, study_uid, direction, sender_org, recipients, revision, state,"
                " created_at, expires_at, raw, certificate) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT (manifest_id) DO UPDATE SET state = excluded.state",
                (row.manifest_id.to_bytes(), row.study_uid, row.direction, row.sender_org,
                 ",".join(row.recipients), row.revision, row.state.value, row.created_at, row.expires_at, row.raw,
                 row.certificate),
            )
            db.executemany("INSERT OR IGNORE INTO manifest_blocks VALUES (?,?)",
                           [(row.manifest_id.to_bytes(), c.to_bytes()) for c in blocks])

    def _manifest_rows(self, where: str, params: Sequence[object]) -> list[ManifestRow]:
        return [
            ManifestRow(
                manifest_id=CID.from_bytes(bytes(r[0])), study_uid=str(r[1]), direction=str(r[2]),
                sender_org=str(r[3]), recipients=tuple(x for x in str(r[4]).split(",") if x),
                revision=int(r[5]), state=parse_state(str(r[6])), created_at=int(r[7]), expires_at=int(r[8]),
                raw=bytes(r[9]), certificate=bytes(r[10]),
            )
            for r in self._query(
                "SELECT manifest_id, study_uid, direction, sender_org, recipients, revision, state, created_at,"
                f" expires_at, raw, certificate FROM manifests {where} ORDER BY created_at, manifest_id", params)
        ]

    def manifest(self, manifest_id: CID) -> ManifestRow | None:
        rows = self._manifest_rows("WHERE manifest_id = ?", (manifest_id.to_bytes(),))
        return rows[0] if rows else None

    def manifests(self, direction: str | None = None) -> list[ManifestRow]:
        if direction is None:
            return self._manifest_rows("", ())
        return self._manifest_rows("WHERE direction = ?", (direction,))

    def not_in_manifest(self, manifest_id: CID, cids: Sequence[CID]) -> set[CID]:
        wanted = {c.to_bytes(): c for c in cids}
        marks = ",".join("?" * len(wanted))
        found = {bytes(r[0]) for r in self._query(
            f"SELECT cid FROM manifest_blocks WHERE manifest_id = ? AND cid IN ({marks})",
            (manifest_id.to_bytes(), *wanted))} if wanted else set()
        return {c for raw, c in wanted.items() if raw not in found}

    def set_manifest_state(self, manifest_id: CID, state: ManifestState) -> None:
        with self._tx() as db:
            db.execute("UPDATE manifests SET state = ? WHERE manifest_id = ?", (state.value, manifest_id.to_bytes()))

    def fail_manifest(self, manifest_id: CID, reason: str, now_ms: int) -> None:
        with self._tx() as db:
            db.execute("UPDATE manifests SET state = ? WHERE manifest_id = ?",
                       (ManifestState.FAILED.value, manifest_id.to_bytes()))
            db.execute("INSERT INTO manifest_failures VALUES (?,?,?) ON CONFLICT (manifest_id) DO UPDATE SET"
                       " reason = excluded.reason, at_ms = excluded.at_ms", (manifest_id.to_bytes(), reason, now_ms))

    def _text_of(self, query: str, manifest_id: CID) -> str | None:
        """The one text column `query` selects for a manifest, if it has a row."""
        rows = self._query(query, (manifest_id.to_bytes(),))
        return str(rows[0][0]) if rows else None

    def manifest_failure(self, manifest_id: CID) -> str | None:
        return self._text_of("SELECT reason FROM manifest_failures WHERE manifest_id = ?", manifest_id)

    def set_transfer(self, manifest_id: CID, state: ManifestState, blocks_done: int, bytes_done: int, now_ms: int) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO transfers (manifest_id, state, blocks_done, bytes_done, updated_ms) VALUES (?,?,?,?,?)"
                " ON CONFLICT (manifest_id) DO UPDATE SET state = excluded.state,"
                " blocks_done = excluded.blocks_done, bytes_done = excluded.bytes_done,"
                " updated_ms = excluded.updated_ms",
                (manifest_id.to_bytes(), state.value, blocks_done, bytes_done, now_ms))

    def transfer(self, manifest_id: CID) -> tuple[str, int, int] | None:
        rows = self._query("SELECT state, blocks_done, bytes_done FROM transfers WHERE manifest_id = ?",
                           (manifest_id.to_bytes(),))
        return (str(rows[0][0]), int(rows[0][1]), int(rows[0][2])) if rows else None

    def save_delivery(self, row: DeliveryRow) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO deliveries VALUES (?,?,?,?,?,?,?,?)",
                (row.manifest_id.to_bytes(), row.org, row.state, row.attempts, row.next_attempt_ms, row.last_error,
                 row.document, row.updated_ms),
            )

    def deliveries(self, manifest_id: CID | None = None) -> list[DeliveryRow]:
        where, params = ("WHERE manifest_id = ?", (manifest_id.to_bytes(),)) if manifest_id else ("", ())
        return [
            DeliveryRow(CID.from_bytes(bytes(r[0])), str(r[1]), str(r[2]), int(r[3]), int(r[4]), str(r[5]),
                        bytes(r[6]) if r[6] is not None else None, int(r[7]))
            for r in self._query(f"SELECT * FROM deliveries {where} ORDER BY manifest_id, org", params)
        ]

    def share_revisions(self, study_uid: str, sender_org: str, direction: str) -> list[tuple[int, tuple[str, ...]]]:
        return [(int(r[0]), tuple(x for x in str(r[1]).split(",") if x)) for r in self._query(
            "SELECT revision, recipients FROM manifests WHERE study_uid = ? AND sender_org = ? AND direction = ?"
            " ORDER BY revision", (study_uid, sender_org, direction))]

    def highest_revision(self, study_uid: str, sender_org: str) -> int:
        rows = self._query("SELECT coalesce(max(revision), 0) FROM manifests WHERE direction = 'received'"
                           " AND study_uid = ? AND sender_org = ?", (study_uid, sender_org))
        return int(rows[0][0])

    def served_by(self, manifest_id: CID) -> dict[str, int]:
        rows = self._query("SELECT served_by FROM transfers WHERE manifest_id = ?", (manifest_id.to_bytes(),))
        return {str(k): int(v) for k, v in json.loads(rows[0][0]).items()} if rows else {}

    def record_recall_tombstone(self, manifest_id: CID, sender_org: str, now_ms: int) -> None:
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO recall_tombstones VALUES (?,?,?)",
                       (manifest_id.to_bytes(), sender_org, now_ms))

    def recall_tombstone(self, manifest_id: CID) -> str | None:
        return self._text_of("SELECT sender_org FROM recall_tombstones WHERE manifest_id = ?", manifest_id)

    def add_served(self, manifest_id: CID, org: str, blocks: int, nbytes: int, now_ms: int) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO served VALUES (?,?,?,?,?) ON CONFLICT (manifest_id, org) DO UPDATE SET"
                " blocks = blocks + excluded.blocks, bytes = bytes + excluded.bytes, updated_ms = excluded.updated_ms",
                (manifest_id.to_bytes(), org, blocks, nbytes, now_ms))

    def served(self, manifest_id: CID | None = None) -> list[ServedRow]:
        where, params = ("WHERE manifest_id = ?", (manifest_id.to_bytes(),)) if manifest_id else ("", ())
        return [ServedRow(CID.from_bytes(bytes(r[0])), str(r[1]), int(r[2]), int(r[3]))
                for r in self._query(f"SELECT manifest_id, org, blocks, bytes FROM served {where}"
                                     " ORDER BY manifest_id, org", params)]

    # -- identity ----------------------------------------------------------------
    def highest_roster_version(self) -> int:
        rows = self._query("SELECT highest_version FROM roster_state WHERE id = 1")
        return int(rows[0][0]) if rows else 0

    def record_roster_version(self, version: int) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO roster_state VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET"
                " highest_version = max(highest_version, excluded.highest_version)",
                (version,),
            )

    def record_peer(self, peer_id: str, org: str, now_ms: int) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO peers VALUES (?,?,?)", (peer_id, org, now_ms))

    def peers(self) -> list[tuple[str, str, int]]:
        return [(str(p), str(o), int(t)) for p, o, t in
                self._query("SELECT peer_id, org, last_seen_ms FROM peers ORDER BY org, peer_id")]

    # -- audit -------------------------------------------------------------------
    def _append_audit(self, db: sqlite3.Connection, events: Sequence[AuditEvent], now_ms: int) -> list[AuditEntry]:
        if not events:
            return []
        last = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        entries = audit.chain(last[0] if last else 0, bytes(last[1]) if last else audit.GENESIS,
                              list(events), now_ms)
        db.executemany(
            "INSERT INTO audit VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            [(e.seq, e.at_ms, int(e.event.code), e.event.action, int(e.event.outcome), e.event.actor,
              e.event.actor_org, e.event.study, e.event.manifest_id, e.event.detail, e.prev_hash, e.hash)
             for e in entries],
        )
        if self._audit_key is not None:
            before = (int(last[0]), bytes(last[1])) if last else None
            tail = self._read_tail(db)
            have_any = tail is not None or db.execute("SELECT 1 FROM audit_checkpoints LIMIT 1").fetchone() is not None
            vouched = tail_vouches(tail, before, self._audit_key, self._own_tail)
            checkpoints, new_tail = due_checkpoints(entries, vouched, have_any, self._audit_key, now_ms)
        else:
            checkpoints, new_tail = [], None
        self._insert_checkpoints(db, checkpoints)
        if new_tail is not None:
            self._write_tail(db, new_tail)
        self._spool(db, spool_rows(entries, checkpoints), now_ms)
        return entries

    def _insert_checkpoints(self, db: sqlite3.Connection, checkpoints: Sequence[AuditCheckpoint]) -> None:
        db.executemany("INSERT INTO audit_checkpoints (seq, hash, at_ms, rebase_from, rebase_to, signature)"
                       " VALUES (?,?,?,?,?,?)",
                       [(c.seq, c.hash, c.at_ms, c.rebase_from, c.rebase_to, c.signature) for c in checkpoints])

    @staticmethod
    def _spool(db: sqlite3.Connection, rows: Sequence[tuple[str, int, bytes]], now_ms: int) -> None:
        db.executemany("INSERT INTO audit_spool (kind, seq, payload, created_ms, attempts) VALUES (?,?,?,?,0)",
                       [(kind, seq, payload, now_ms) for kind, seq, payload in rows])

    @staticmethod
    def _read_tail(db: sqlite3.Connection) -> AuditCheckpoint | None:
        r = db.execute("SELECT seq, hash, at_ms, signature FROM audit_tail WHERE id = 1").fetchone()
        return AuditCheckpoint(int(r[0]), bytes(r[1]), int(r[2]), bytes(r[3])) if r else None

    def _write_tail(self, db: sqlite3.Connection, tail: AuditCheckpoint) -> None:
        # Remembered even if the transaction then rolls back: it is a genuine signature of ours either way,
        # only ever used to skip re-checking that signature when the database holds exactly it.
        self._own_tail = tail
        db.execute("INSERT OR REPLACE INTO audit_tail VALUES (1,?,?,?,?)", (tail.seq, tail.hash, tail.at_ms,
                                                                            tail.signature))

    def set_audit_key(self, key: SigningKey | None) -> None:
        self._audit_key = key

    def audit_tail(self) -> AuditCheckpoint | None:
        with self._tx() as db:
            return self._read_tail(db)

    def audit_snapshot(self) -> tuple[list[AuditEntry], list[AuditCheckpoint], AuditCheckpoint | None]:
        # one read transaction (a WAL snapshot, no write lock): a node appending meanwhile cannot skew them
        try:
            self._db.execute("BEGIN")
        except sqlite3.Error as exc:
            raise StorageError(f"database unavailable: {exc}") from exc
        try:
            return self.audit_entries(), self.audit_checkpoints(), self._read_tail(self._db)
        finally:
            self._rollback()

    def append_audit_rebased(self, events: Sequence[AuditEvent], now_ms: int, key: SigningKey, rebase_from: int,
                             rebase_to: int, sign_seqs: Sequence[int]) -> tuple[int, bytes]:
        with self._tx() as db:
            entries = self._append_audit(db, events, now_ms)
            if not entries:
                raise StorageError("an acknowledgement needs its audit entry")
            hashes = dict(db.execute(f"SELECT seq, hash FROM audit WHERE seq IN ({','.join('?' * len(sign_seqs))})",
                                     list(sign_seqs)).fetchall()) if sign_seqs else {}
            made = rebased_checkpoints(key, entries[-1], hashes, rebase_from, rebase_to, now_ms)
            self._insert_checkpoints(db, made[:-1])
            self._spool(db, spool_rows([], made[:-1]), now_ms)
            self._write_tail(db, made[-1])
            return entries[-1].seq, entries[-1].hash

    def add_audit_checkpoint(self, checkpoint: AuditCheckpoint) -> None:
        with self._tx() as db:
            self._insert_checkpoints(db, [checkpoint])
            self._spool(db, spool_rows([], [checkpoint]), checkpoint.at_ms)

    def audit_checkpoints(self) -> list[AuditCheckpoint]:
        return [AuditCheckpoint(int(r[0]), bytes(r[1]), int(r[2]), bytes(r[5]), int(r[3]), int(r[4])) for r in
                self._query("SELECT seq, hash, at_ms, rebase_from, rebase_to, signature FROM audit_checkpoints"
                            " ORDER BY n")]

    def audit_spool(self, limit: int) -> list[SpoolItem]:
        out = []
        for r in self._query("SELECT id, kind, seq, payload, attempts FROM audit_spool ORDER BY id LIMIT ?",
                             (limit,)):
            try:
                payload = decode_payload(bytes(r[3]))
            except ValueError:
                raise StorageError(f"audit spool item {r[0]} is corrupt") from None
            out.append(SpoolItem(int(r[0]), str(r[1]), int(r[2]), payload, int(r[4])))
        return out

    def audit_spool_sent(self, ids: Sequence[int]) -> None:
        with self._tx() as db:
            db.executemany("DELETE FROM audit_spool WHERE id = ?", [(i,) for i in ids])

    def audit_spool_attempted(self, ids: Sequence[int]) -> None:
        with self._tx() as db:
            db.executemany("UPDATE audit_spool SET attempts = attempts + 1 WHERE id = ?", [(i,) for i in ids])

    def audit_spool_size(self) -> int:
        return int(self._query("SELECT count(*) FROM audit_spool")[0][0])

    def append_audit(self, events: Sequence[AuditEvent], now_ms: int) -> list[AuditEntry]:
        with self._tx() as db:
            return self._append_audit(db, events, now_ms)

    def audit_head(self) -> tuple[int, bytes] | None:
        rows = self._query("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
        return (int(rows[0][0]), bytes(rows[0][1])) if rows else None

    def search_audit(self, query: AuditQuery) -> list[AuditEntry]:
        return sqlite_search.search_audit(self._query, self._audit_rows, query)

    def audit_range(self, after_seq: int, limit: int) -> list[AuditEntry]:
        return self._audit_rows("WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit))

    def audit_entries(self) -> list[AuditEntry]:
        return self._audit_rows("ORDER BY seq", ())

    def _audit_rows(self, where: str, params: Sequence[object]) -> list[AuditEntry]:
        out = []
        for r in self._query("SELECT seq, at_ms, code, action, outcome, actor, actor_org, study, manifest_id,"
                             f" detail, prev_hash, hash FROM audit {where}", params):
            event = AuditEvent(_event_code(r[2]), str(r[3]), _outcome(r[4]), str(r[5]), str(r[6]), str(r[7]),
                               str(r[8]), str(r[9]))
            out.append(AuditEntry(int(r[0]), int(r[1]), event, bytes(r[10]), bytes(r[11])))
        return out


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _event_code(value: Any) -> EventCode:
    try:
        return EventCode(int(value))
    except ValueError:
        raise StorageError(f"audit entry has unknown event code {value!r}") from None


def _outcome(value: Any) -> Outcome:
    try:
        return Outcome(int(value))
    except ValueError:
        raise StorageError(f"audit entry has unknown outcome {value!r}") from None
