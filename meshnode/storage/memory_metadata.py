"""MetadataStore in plain dictionaries: for unit tests of the layers above storage.

It follows the same contract as the SQLite store (tests/meshnode/storage run
one suite against both) but keeps nothing across restarts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from meshnode.storage import audit
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
    InstanceRecord,
    ManifestRow,
    ServedRow,
    Source,
    StudyAttributes,
    StudySummaryRow,
    hash_uid,
)
from meshnode.storage.patients import MemoryPatients
from meshnode.storage.instance_crcs import MemoryInstanceCrcs
from meshnode.storage.research_store import MemoryResearchStore
from meshnode.storage.request_store import MemoryRequestStore
from meshnode.storage.retry_queue import MemoryRetryQueue
from meshnode.storage.conflicts import Incoming
from meshnode.storage.memory_conflicts import MemoryConflicts
from protocol.conflict import ConflictAction
from meshnode.storage.search import (
    AuditQuery,
    audit_matches,
    InstanceSummaryRow,
    Search,
    SeriesSummaryRow,
    memory_search_instances,
    memory_search_series,
    memory_search_studies,
)
from meshnode.storage.sqlite_metadata import CONFLICT_FLAG
from protocol.access import Holding
from protocol.cid import CID
from protocol.keys import SigningKey
from protocol.lifecycle import ManifestState


@dataclass
class _Transfer:
    state: str
    blocks_done: int
    bytes_done: int


class MemoryMetadataStore(MemoryResearchStore, MemoryConflicts, MemoryPatients, MemoryRequestStore,
                          MemoryInstanceCrcs):
    def __init__(self) -> None:
        MemoryInstanceCrcs.__init__(self)
        MemoryRequestStore.__init__(self)
        MemoryResearchStore.__init__(self)
        MemoryConflicts.__init__(self)  # and MemoryRetryQueue's
        self._append_audit = self.append_audit  # the conflict queue's audit entries go to the one chain
        MemoryPatients.__init__(self)
        self._studies: dict[str, StudyAttributes] = {}
        self._instances: list[InstanceRecord] = []
        self._blocks: dict[CID, int] = {}
        self._manifests: dict[CID, ManifestRow] = {}
        self._manifest_blocks: dict[CID, frozenset[CID]] = {}
        self._transfers: dict[CID, _Transfer] = {}
        self._peers: dict[str, tuple[str, int]] = {}
        self._roster_version = 0
        self._audit: list[AuditEntry] = []
        self._audit_key: SigningKey | None = None
        self._checkpoints: list[AuditCheckpoint] = []
        self._tail: AuditCheckpoint | None = None
        self._spool: dict[int, SpoolItem] = {}
        self._spool_next = 0
        self._receipts: dict[tuple[CID, str], bytes] = {}
        self._forward_reports: dict[tuple[CID, str], tuple[int, bytes]] = {}
        self._served: dict[CID, dict[str, int]] = {}
        self._obtained: set[tuple[CID, CID]] = set()
        self._served_to: dict[tuple[CID, str], tuple[int, int]] = {}
        self._tombstones: dict[CID, str] = {}
        self._failures: dict[CID, str] = {}

    def close(self) -> None:
        """Nothing to release."""

    def add_instances(
        self, records: Sequence[InstanceRecord], events: Sequence[AuditEvent], now_ms: int,
        incoming: Sequence[Incoming] | None = None,
    ) -> list[AddOutcome]:
        outcomes = []
        extra: list[AuditEvent] = []
        for n, rec in enumerate(records):
            action, alerts = self._arrive(rec, incoming[n] if incoming is not None else Incoming(), now_ms)
            extra.extend(alerts)
            if action is ConflictAction.HOLD:
                outcomes.append(AddOutcome.CONFLICT)
                continue
            if action is ConflictAction.DUPLICATE:
                if any(i.sop_instance_uid == rec.sop_instance_uid and i.digest == rec.digest for i in self._instances):
                    self._note_study(rec)  # not a held or decided newcomer's
                outcomes.append(AddOutcome.DUPLICATE)
                continue
            outcomes.append(AddOutcome.REPLACED if action is ConflictAction.SUPERSEDE else AddOutcome.ADDED)
            self._add_instance(rec)
        self.append_audit([*events, *extra], now_ms)
        return outcomes

    def _summary(self, study_uid: str) -> StudySummaryRow | None:
        insts = [i for i in self._instances if i.study_uid == study_uid]
        if not insts:
            return None
        return StudySummaryRow(
            attributes=self._studies[study_uid],
            modalities=tuple(sorted({i.series.modality for i in insts})),
            series_count=len({i.series_uid for i in insts}),
            instance_count=len(insts),
            total_bytes=sum(i.size for i in insts),
            sources=tuple(sorted({i.source.value for i in insts})),
            conflicts=sum(1 for i in insts if CONFLICT_FLAG in i.flags),
        )

    def studies(self) -> list[StudySummaryRow]:
        rows = [self._summary(uid) for uid in self._studies]
        return sorted((r for r in rows if r), key=lambda r: (r.attributes.study_date, r.attributes.study_uid))

    def study(self, study_uid: str) -> StudySummaryRow | None:
        return self._summary(study_uid)

    def held_studies(self) -> set[str]:
        """Reconciliation's held studies and the research copies made here (PatientStore.held_studies)."""
        return MemoryPatients.held_studies(self) | self.research_copies()

    def _shown(self, search: Search) -> list[InstanceRecord]:
        if not search.hide_held:
            return list(self._instances)
        held, copies = self.held_instances(), self.research_copies()
        return [i for i in self._instances if (i.sop_instance_uid, i.digest) not in held and i.study_uid not in copies]

    def search_studies(self, search: Search) -> list[StudySummaryRow]:
        held = self.held_studies() if search.hide_held else set()
        studies = [s for s in self.studies() if s.attributes.study_uid not in held]
        return memory_search_studies(studies, self._shown(search), search)

    def search_series(self, search: Search) -> list[SeriesSummaryRow]:
        return memory_search_series(self._shown(search), search)

    def search_instances(self, search: Search) -> list[InstanceSummaryRow]:
        return memory_search_instances(self._shown(search), search)

    def instances(self, study_uid: str) -> list[InstanceRecord]:
        insts = [i for i in self._instances if i.study_uid == study_uid]
        return sorted(insts, key=lambda i: (i.series.series_number or 0, i.series_uid, i.instance_number or 0,
                                            i.sop_instance_uid))

    def instances_of(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> list[InstanceRecord]:
        return [i for i in self.instances(study_uid)
                if i.series_uid == series_uid and i.sop_instance_uid == sop_instance_uid]

    def held_transfer_syntaxes(self, sop_classes: Iterable[str]) -> dict[str, set[str]]:
        wanted = set(sop_classes)
        hidden = self.held_studies()  # not retrievable while reconciliation holds them back
        held: dict[str, set[str]] = {}
        for i in self._instances:
            if i.sop_class_uid in wanted and i.study_uid not in hidden:
                held.setdefault(i.sop_class_uid, set()).add(i.transfer_syntax)
        return held

    def forget_study(self, study_uid: str, events: Sequence[AuditEvent], now_ms: int) -> int:
        before = len(self._instances)
        self._instances = [i for i in self._instances if i.study_uid != study_uid]
        self._studies.pop(study_uid, None)
        self.append_audit(events, now_ms)
        return before - len(self._instances)

    def forget_received(self, study_uid: str, origin: str, keys: Iterable[tuple[str, bytes]],
                        events: Sequence[AuditEvent], now_ms: int) -> int:
        wanted = set(keys)
        before = len(self._instances)
        self._instances = [i for i in self._instances if not (
            i.study_uid == study_uid and i.source is Source.RECEIVED and i.origin == origin
            and (i.sop_instance_uid, i.digest) in wanted)]
        if not any(i.study_uid == study_uid for i in self._instances):
            self._studies.pop(study_uid, None)
        self.append_audit(events, now_ms)
        return before - len(self._instances)

    def record_blocks(self, blocks: Sequence[tuple[CID, int]], now_ms: int,
                      obtained: Sequence[tuple[CID, CID, str]] = ()) -> None:
        for cid, size in blocks:
            self._blocks.setdefault(cid, size)
        for manifest_id, cid, peer in obtained:
            if (manifest_id, cid) in self._obtained:
                continue
            self._obtained.add((manifest_id, cid))
            if manifest_id in self._transfers:
                per_peer = self._served.setdefault(manifest_id, {})
                per_peer[peer] = per_peer.get(peer, 0) + 1

    def obtained_blocks(self, manifest_id: CID, cids: Iterable[CID]) -> set[CID]:
        m = self._manifests.get(manifest_id)
        if m is not None and m.direction == "sent":  # a sibling's manifest: copied under this very one
            return {c for c in cids if (manifest_id, c) in self._obtained}
        if m is None or m.direction != "received":
            return set()
        chain = [e.manifest_id for e in self._manifests.values() if e.direction == "received"
                 and e.study_uid == m.study_uid and e.sender_org == m.sender_org and e.revision <= m.revision]
        return {c for c in cids if any((e, c) in self._obtained for e in chain)}

    def holdings(self, cids: Iterable[CID]) -> dict[CID, list[Holding]]:
        out: dict[CID, list[Holding]] = {}
        for cid in cids:
            for m in self._manifests.values():
                if cid in self._manifest_blocks.get(m.manifest_id, frozenset()):
                    out.setdefault(cid, []).append(Holding(
                        m.sender_org, frozenset(m.recipients),
                        m.direction == "sent" or (m.manifest_id, cid) in self._obtained))
        return out

    def present_blocks(self, cids: Iterable[CID]) -> set[CID]:
        return {c for c in cids if c in self._blocks}

    def _live_manifests(self, now_s: int) -> list[CID]:
        return [m.manifest_id for m in self._manifests.values() if m.state is not ManifestState.RECALLED and m.expires_at >= now_s]

    def block_refcount(self, cid: CID, now_s: int) -> int:
        local = sum(1 for i in self._instances for b in i.blocks if b == cid)
        local += sum(1 for b in self._held_blocks() if b == cid)
        return local + sum(1 for m in self._live_manifests(now_s) if cid in self._manifest_blocks.get(m, ()))

    def unreferenced_blocks(self, now_s: int) -> list[CID]:
        used = {b for i in self._instances for b in i.blocks} | set(self._held_blocks())
        for m in self._live_manifests(now_s):
            used |= self._manifest_blocks.get(m, frozenset())
        return [c for c in self._blocks if c not in used]

    def forget_blocks(self, cids: Sequence[CID]) -> None:
        for cid in cids:
            self._blocks.pop(cid, None)

    def save_manifest(self, row: ManifestRow, blocks: Iterable[CID]) -> None:
        old = self._manifests.get(row.manifest_id)
        self._manifests[row.manifest_id] = row if old is None else replace(old, state=row.state)
        self._manifest_blocks[row.manifest_id] = self._manifest_blocks.get(row.manifest_id, frozenset()) | set(blocks)

    def manifest(self, manifest_id: CID) -> ManifestRow | None:
        return self._manifests.get(manifest_id)

    def manifests(self, direction: str | None = None) -> list[ManifestRow]:
        rows = [m for m in self._manifests.values() if direction is None or m.direction == direction]
        return sorted(rows, key=lambda m: (m.created_at, m.manifest_id.to_bytes()))

    def not_in_manifest(self, manifest_id: CID, cids: Sequence[CID]) -> set[CID]:
        listed = self._manifest_blocks.get(manifest_id, frozenset())
        return {c for c in cids if c not in listed}

    def set_manifest_state(self, manifest_id: CID, state: ManifestState) -> None:
        if manifest_id in self._manifests:
            self._manifests[manifest_id] = replace(self._manifests[manifest_id], state=state)

    def fail_manifest(self, manifest_id: CID, reason: str, now_ms: int) -> None:
        self.set_manifest_state(manifest_id, ManifestState.FAILED)
        self._failures[manifest_id] = reason

    def manifest_failure(self, manifest_id: CID) -> str | None:
        return self._failures.get(manifest_id)

    def set_transfer(self, manifest_id: CID, state: ManifestState, blocks_done: int, bytes_done: int, now_ms: int) -> None:
        self._transfers[manifest_id] = _Transfer(state.value, blocks_done, bytes_done)

    def transfer(self, manifest_id: CID) -> tuple[str, int, int] | None:
        t = self._transfers.get(manifest_id)
        return (t.state, t.blocks_done, t.bytes_done) if t else None

    def save_receipt(self, manifest_id: CID, org: str, receipt: bytes, at_ms: int) -> None:
        self._receipts.setdefault((manifest_id, org), receipt)

    def receipts(self, manifest_id: CID) -> dict[str, bytes]:
        return {org: r for (m, org), r in self._receipts.items() if m == manifest_id}

    def save_forward_report(self, manifest_id: CID, org: str, seq: int, report: bytes, at_ms: int) -> bool:
        stored = self._forward_reports.get((manifest_id, org))
        if stored is not None and seq <= stored[0]:
            return False
        self._forward_reports[(manifest_id, org)] = (seq, report)
        return True

    def forward_reports(self, manifest_id: CID) -> dict[str, bytes]:
        return {org: r for (m, org), (_, r) in self._forward_reports.items() if m == manifest_id}

    def received_manifests_of(self, study_uid: str) -> list[ManifestRow]:
        return sorted((m for m in self._manifests.values() if m.study_uid == study_uid and m.direction == "received"),
                      key=lambda m: (m.created_at, m.manifest_id.to_bytes()))

    def share_revisions(self, study_uid: str, sender_org: str, direction: str) -> list[tuple[int, tuple[str, ...]]]:
        return sorted((m.revision, m.recipients) for m in self._manifests.values()
                      if m.study_uid == study_uid and m.sender_org == sender_org and m.direction == direction)

    def highest_revision(self, study_uid: str, sender_org: str) -> int:
        return max((m.revision for m in self._manifests.values() if m.direction == "received"
                    and m.study_uid == study_uid and m.sender_org == sender_org), default=0)

    def served_by(self, manifest_id: CID) -> dict[str, int]:
        return dict(self._served.get(manifest_id, {}))

    def record_recall_tombstone(self, manifest_id: CID, sender_org: str, now_ms: int) -> None:
        self._tombstones.setdefault(manifest_id, sender_org)

    def recall_tombstone(self, manifest_id: CID) -> str | None:
        return self._tombstones.get(manifest_id)

    def add_served(self, manifest_id: CID, org: str, blocks: int, nbytes: int, now_ms: int) -> None:
        old = self._served_to.get((manifest_id, org), (0, 0))
        self._served_to[(manifest_id, org)] = (old[0] + blocks, old[1] + nbytes)

    def served(self, manifest_id: CID | None = None) -> list[ServedRow]:
        return [ServedRow(m, org, b, n) for (m, org), (b, n) in sorted(
            self._served_to.items(), key=lambda kv: (kv[0][0].to_bytes(), kv[0][1]))
            if manifest_id is None or m == manifest_id]

    def highest_roster_version(self) -> int:
        return self._roster_version

    def record_roster_version(self, version: int) -> None:
        self._roster_version = max(self._roster_version, version)

    def record_peer(self, peer_id: str, org: str, now_ms: int) -> None:
        self._peers[peer_id] = (org, now_ms)

    def peers(self) -> list[tuple[str, str, int]]:
        return sorted(((p, o, t) for p, (o, t) in self._peers.items()), key=lambda x: (x[1], x[0]))

    def append_audit(self, events: Sequence[AuditEvent], now_ms: int) -> list[AuditEntry]:
        last = self._audit[-1] if self._audit else None
        entries = audit.chain(last.seq if last else 0, last.hash if last else audit.GENESIS, list(events), now_ms)
        self._audit.extend(entries)
        before = (last.seq, last.hash) if last else None
        have_any = bool(self._checkpoints)
        vouched = tail_vouches(self._tail, before, self._audit_key, self._tail)  # nobody else writes it
        checkpoints, tail = due_checkpoints(entries, vouched, have_any, self._audit_key, now_ms)
        self._checkpoints.extend(checkpoints)
        self._tail = tail or self._tail
        self._spool_rows(spool_rows(entries, checkpoints))
        return entries

    def _spool_rows(self, rows: list[tuple[str, int, bytes]]) -> None:
        for kind, seq, payload in rows:
            self._spool_next += 1
            self._spool[self._spool_next] = SpoolItem(self._spool_next, kind, seq, decode_payload(payload))

    def set_audit_key(self, key: SigningKey | None) -> None:
        self._audit_key = key

    def audit_tail(self) -> AuditCheckpoint | None:
        return self._tail

    def audit_snapshot(self) -> tuple[list[AuditEntry], list[AuditCheckpoint], AuditCheckpoint | None]:
        return list(self._audit), list(self._checkpoints), self._tail

    def append_audit_rebased(self, events: Sequence[AuditEvent], now_ms: int, key: SigningKey, rebase_from: int,
                             rebase_to: int, sign_seqs: Sequence[int]) -> tuple[int, bytes]:
        entries = self.append_audit(events, now_ms)
        hashes = {e.seq: e.hash for e in self._audit if e.seq in set(sign_seqs)}
        made = rebased_checkpoints(key, entries[-1], hashes, rebase_from, rebase_to, now_ms)
        self._checkpoints.extend(made[:-1])
        self._spool_rows(spool_rows([], made[:-1]))
        self._tail = made[-1]
        return entries[-1].seq, entries[-1].hash

    def add_audit_checkpoint(self, checkpoint: AuditCheckpoint) -> None:
        self._checkpoints.append(checkpoint)
        self._spool_rows(spool_rows([], [checkpoint]))

    def audit_checkpoints(self) -> list[AuditCheckpoint]:
        return list(self._checkpoints)

    def audit_spool(self, limit: int) -> list[SpoolItem]:
        return [self._spool[i] for i in sorted(self._spool)][:limit]

    def audit_spool_sent(self, ids: Sequence[int]) -> None:
        for i in ids:
            self._spool.pop(i, None)

    def audit_spool_attempted(self, ids: Sequence[int]) -> None:
        for i in ids:
            if i in self._spool:
                item = self._spool[i]
                self._spool[i] = replace(item, attempts=item.attempts + 1)

    def audit_spool_size(self) -> int:
        return len(self._spool)

    def audit_entries(self) -> list[AuditEntry]:
        return list(self._audit)

    def search_audit(self, query: AuditQuery) -> list[AuditEntry]:
        return [e for e in reversed(self._audit) if audit_matches(query, e)][:query.limit]

    def audit_range(self, after_seq: int, limit: int) -> list[AuditEntry]:
        return [e for e in self._audit if e.seq > after_seq][:limit]

    def audit_head(self) -> tuple[int, bytes] | None:
        return (self._audit[-1].seq, self._audit[-1].hash) if self._audit else None
