"""MetadataStore on the node's SQLite file: the catalog (studies, series, instances, blocks and their
provenance, manifests) here, composed with the exchange state (sqlite_exchange.py), identity state
(sqlite_identity.py) and the audit chain (sqlite_audit.py). The schema of all of them is in schema.py.

WAL, synchronous=FULL, STRICT tables (common.sqlite_db). A catalog write and its audit entries commit
in one transaction.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from typing import Any
from collections.abc import Iterable, Sequence

from meshnode.storage import sqlite_search
from meshnode.storage.audit import AuditEvent, EventCode, Outcome
from meshnode.storage.records import (
    AddOutcome,
    InstanceRecord,
    ManifestRow,
    SeriesAttributes,
    Source,
    StudyAttributes,
    StudySummaryRow,
    hash_uid,
)
from meshnode.storage.search import InstanceSummaryRow, Search, SeriesSummaryRow
from meshnode.storage.sqlite_audit import SqliteAudit
from meshnode.storage.sqlite_conflicts import SqliteConflicts
from meshnode.storage.conflicts import Incoming
from protocol.conflict import ConflictAction
from meshnode.storage.sqlite_exchange import SqliteExchange
from meshnode.storage.sqlite_identity import SqliteIdentity
from meshnode.storage.instance_crcs import SqliteInstanceCrcs
from meshnode.storage.sqlite_patients import HELD_STUDIES_SQL, SqlitePatients
from meshnode.storage.sqlite_retry_queue import SqliteRetryQueue
from meshnode.storage.sqlite_research import SqliteResearch
from meshnode.storage.sqlite_requests import SqliteRequests
from protocol.access import Holding
from protocol.cid import CID
from protocol.errors import MeshError
from protocol.lifecycle import ManifestState, parse_state

log = logging.getLogger(__name__)

CONFLICT_FLAG = "sop-uid-conflict"

_LIVE_REFS = """
    SELECT count(*) FROM instance_blocks WHERE cid = :cid
    UNION ALL
    SELECT count(*) FROM conflict_blocks WHERE cid = :cid
    UNION ALL
    SELECT count(*) FROM manifest_blocks mb JOIN manifests m ON m.manifest_id = mb.manifest_id
     WHERE mb.cid = :cid AND m.state != :recalled AND m.expires_at >= :now
"""


def _next_syntax(sop_class: str, after: str) -> str:
    return ("SELECT transfer_syntax FROM instances WHERE sop_class_uid = " + sop_class + " AND transfer_syntax > "
            + after + " AND study_uid NOT IN (SELECT study_uid FROM hidden) ORDER BY transfer_syntax LIMIT 1")


#: held_transfer_syntaxes: (SOP class, syntax) rows; the parameter is a JSON array of SOP class UIDs
HELD_SYNTAXES_SQL = (
    "WITH RECURSIVE wanted(c) AS (SELECT value FROM json_each(?)),"
    f" hidden(study_uid) AS MATERIALIZED ({HELD_STUDIES_SQL}),"
    f" held(c, t) AS (SELECT c, ({_next_syntax('wanted.c', repr(''))}) FROM wanted"
    f" UNION ALL SELECT c, ({_next_syntax('held.c', 'held.t')}) FROM held WHERE t IS NOT NULL)"
    " SELECT c, t FROM held WHERE t IS NOT NULL")


class SqliteMetadataStore(SqliteExchange, SqliteIdentity, SqliteConflicts, SqliteAudit, SqliteRetryQueue,
                          SqlitePatients, SqliteResearch, SqliteRequests, SqliteInstanceCrcs):
    # -- studies and instances ------------------------------------------------
    def add_instances(
        self, records: Sequence[InstanceRecord], events: Sequence[AuditEvent], now_ms: int,
        incoming: Sequence[Incoming] | None = None,
    ) -> list[AddOutcome]:
        outcomes: list[AddOutcome] = []
        conflict_events: list[AuditEvent] = []
        with self._tx() as db:
            for i, rec in enumerate(records):
                outcome, alerts = self._add_one(db, rec, now_ms, incoming[i] if incoming is not None else Incoming())
                outcomes.append(outcome)
                conflict_events.extend(alerts)
            self._append_audit(db, [*events, *conflict_events], now_ms)
        return outcomes

    def _add_one(self, db: sqlite3.Connection, rec: InstanceRecord, now_ms: int, incoming: Incoming
                 ) -> tuple[AddOutcome, list[AuditEvent]]:
        """protocol.conflict.decide for a UID stored with other bytes (sqlite_conflicts.py), then the insert."""
        action, alerts = self._arrive(db, rec, incoming, now_ms)
        if action is ConflictAction.HOLD:
            return AddOutcome.CONFLICT, alerts
        if action is ConflictAction.DUPLICATE:
            if db.execute("SELECT 1 FROM instances WHERE sop_instance_uid = ? AND digest = ?",
                          (rec.sop_instance_uid, rec.digest)).fetchone():  # not a held or decided newcomer's
                self._upsert_study(db, rec, now_ms)
            return AddOutcome.DUPLICATE, alerts
        self._insert_instance(db, rec, now_ms)
        return (AddOutcome.REPLACED if action is ConflictAction.SUPERSEDE else AddOutcome.ADDED), alerts

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

    def held_transfer_syntaxes(self, sop_classes: Iterable[str]) -> dict[str, set[str]]:
        # one query: a recursive skip scan on instances_by_class_syntax (one index probe per syntax held, not
        # one row per instance); instances of studies held back by reconciliation (not retrievable) skipped
        wanted = sorted(set(sop_classes))
        if not wanted:
            return {}
        rows = self._query(HELD_SYNTAXES_SQL, (json.dumps(wanted),))
        held: dict[str, set[str]] = {}
        for sop_class, syntax in rows:
            held.setdefault(str(sop_class), set()).add(str(syntax))
        return held

    def search_studies(self, search: Search) -> list[StudySummaryRow]:
        return sqlite_search.search_studies(self._query, self._SUMMARY, self._summary, search)

    def search_series(self, search: Search) -> list[SeriesSummaryRow]:
        return sqlite_search.search_series(self._query, search)

    def search_instances(self, search: Search) -> list[InstanceSummaryRow]:
        return sqlite_search.search_instances(self._query, search)

    def instances(self, study_uid: str) -> list[InstanceRecord]:
        return self._instance_records("i.study_uid = ?", (study_uid,))

    def instances_of(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> list[InstanceRecord]:
        return self._instance_records("i.study_uid = ? AND i.series_uid = ? AND i.sop_instance_uid = ?",
                                      (study_uid, series_uid, sop_instance_uid))

    def _instance_records(self, where: str, params: tuple[str, ...]) -> list[InstanceRecord]:
        rows = self._query(
            "SELECT i.id, i.sop_instance_uid, i.sop_class_uid, i.transfer_syntax, i.size, i.digest,"
            " i.instance_number, i.rows, i.columns, i.frames, i.flags, i.source,"
            " se.series_uid, se.modality, se.series_number, se.description,"
            " st.study_uid, st.patient_name, st.patient_id, st.birth_date, st.sex, st.study_date, st.study_time,"
            " st.description, st.accession, i.origin"
            " FROM instances i JOIN series se ON se.series_uid = i.series_uid"
            " JOIN studies st ON st.study_uid = i.study_uid WHERE " + where +
            " ORDER BY se.series_number, se.series_uid, i.instance_number, i.sop_instance_uid, i.id",
            params,
        )
        blocks: dict[int, list[tuple[CID, int]]] = {}
        for iid, cid, size in self._query(
            "SELECT ib.instance_id, ib.cid, ib.size FROM instance_blocks ib JOIN instances i ON i.id = ib.instance_id"
            " WHERE " + where + " ORDER BY ib.instance_id, ib.seq",
            params,
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
                    source=Source(str(r[11])), origin=str(r[25]),
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

    def forget_received(self, study_uid: str, origin: str, keys: Iterable[tuple[str, bytes]],
                        events: Sequence[AuditEvent], now_ms: int) -> int:
        with self._tx() as db:
            removed = 0
            for uid, digest in keys:
                removed += db.execute(
                    "DELETE FROM instances WHERE study_uid = ? AND source = 'received' AND origin = ?"
                    " AND sop_instance_uid = ? AND digest = ?", (study_uid, origin, uid, digest)).rowcount
            db.execute("DELETE FROM series WHERE study_uid = ? AND NOT EXISTS"
                       " (SELECT 1 FROM instances i WHERE i.series_uid = series.series_uid)", (study_uid,))
            db.execute("DELETE FROM studies WHERE study_uid = ? AND NOT EXISTS"
                       " (SELECT 1 FROM instances i WHERE i.study_uid = ?)", (study_uid, study_uid))
            self._append_audit(db, events, now_ms)
            return removed

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
        wanted = list(cids)
        received = {CID.from_bytes(bytes(c)) for (c,) in self._by_cid(
            "SELECT DISTINCT o.cid FROM manifests m"
            " JOIN manifests e ON e.study_uid = m.study_uid AND e.sender_org = m.sender_org"
            "  AND e.direction = 'received' AND e.revision <= m.revision"
            " JOIN obtained_blocks o ON o.manifest_id = e.manifest_id"
            " WHERE m.manifest_id = ? AND m.direction = 'received' AND o.cid IN ({marks})",
            wanted, (manifest_id.to_bytes(),))}
        copied = {CID.from_bytes(bytes(c)) for (c,) in self._by_cid(  # a sibling's manifest: copied under it
            "SELECT o.cid FROM obtained_blocks o JOIN manifests m ON m.manifest_id = o.manifest_id"
            " WHERE o.manifest_id = ? AND m.direction = 'sent' AND o.cid IN ({marks})",
            wanted, (manifest_id.to_bytes(),))}
        return received | copied

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
            " AND NOT EXISTS (SELECT 1 FROM conflict_blocks cb WHERE cb.cid = b.cid)"
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
        """The rows that can be read; one that cannot (an unknown state, a bad ID: a later version's or a
        tampered file) is logged (no patient data) and skipped, as RetryDriver.load skips a bad queue row."""
        out = []
        for r in self._query(
                "SELECT manifest_id, study_uid, direction, sender_org, recipients, revision, state, created_at,"
                f" expires_at, raw, certificate FROM manifests {where} ORDER BY created_at, manifest_id", params):
            try:
                out.append(ManifestRow(
                    manifest_id=CID.from_bytes(bytes(r[0])), study_uid=str(r[1]), direction=str(r[2]),
                    sender_org=str(r[3]), recipients=tuple(x for x in str(r[4]).split(",") if x),
                    revision=int(r[5]), state=parse_state(str(r[6])), created_at=int(r[7]), expires_at=int(r[8]),
                    raw=bytes(r[9]), certificate=bytes(r[10]),
                ))
            except (MeshError, ValueError, TypeError) as exc:
                log.warning("stored manifest %s skipped, cannot be read: %s", bytes(r[0])[:64].hex(), exc)
        return out

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

    def manifest_failure(self, manifest_id: CID) -> str | None:
        return self._text_of("SELECT reason FROM manifest_failures WHERE manifest_id = ?", manifest_id)

    def received_manifests_of(self, study_uid: str) -> list[ManifestRow]:
        return self._manifest_rows("WHERE study_uid = ? AND direction = 'received'", (study_uid,))

    def share_revisions(self, study_uid: str, sender_org: str, direction: str) -> list[tuple[int, tuple[str, ...]]]:
        return [(int(r[0]), tuple(x for x in str(r[1]).split(",") if x)) for r in self._query(
            "SELECT revision, recipients FROM manifests WHERE study_uid = ? AND sender_org = ? AND direction = ?"
            " ORDER BY revision", (study_uid, sender_org, direction))]

    def highest_revision(self, study_uid: str, sender_org: str) -> int:
        rows = self._query("SELECT coalesce(max(revision), 0) FROM manifests WHERE direction = 'received'"
                           " AND study_uid = ? AND sender_org = ?", (study_uid, sender_org))
        return int(rows[0][0])



def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)
