"""StudyIntake: one DICOM instance in, durable in the node's store, or refused with nothing stored.

Both doors into the node from the hospital use it: the DIMSE C-STORE SCP
and DICOMweb STOW-RS.

    stored = await intake.store(part10_bytes, route, source="dimse:RGT_PACS@10.1.2.3")

An instance is parsed and checked exactly as `meshnode ingest` checks a file
(meshnode.dicom.layout.plan_instance: structure, pydicom cross-check, UIDs,
pixel data length), split into the same content-addressed blocks, and made
durable the same way: every block fsynced and renamed into place, then its
metadata committed together with the audit entry. `store` returns only
after that commit; a refused instance raises a DicomError (a MeshError) and
leaves nothing behind.

The work is split in two so that a caller already on a worker thread (a
pynetdicom association) does not hop threads twice: `prepare` (synchronous,
any thread: parse, hash, write and sync the blocks; or take the blocks a
C-STORE streamed while it arrived, once they check out) and `commit` (trio:
metadata). When the instance came on a route, the announcer is told, so
that the study is shared once it has been quiet for the route's quiet period.

Group commit: concurrent commits are grouped (for pynetdicom's association
threads by meshnode.gateway.group_commit, each association waiting for its
response before it sends the next instance; for trio callers by `commit`).
With `prepare(durable=False)` the group's block files are synced together
(fdatasync'd in parallel), renamed to their CIDs and their folders synced,
and only then are the group's metadata, announcement bookkeeping and audit
entries committed in ONE SQLite transaction (one WAL fsync for the whole
group). Every commit of the group returns (so every association gets its
C-STORE-RSP) only after that; if any step fails, every instance of the
group fails with the error and no metadata of the group is recorded (block
files renamed already are unreferenced content-addressed files, which a
later store of the same bytes reuses).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from meshnode.dicom.blocks import DEFAULT_CHUNK_SIZE, block_ranges
from meshnode.dicom.errors import DicomLimitError, SopMismatchError
from meshnode.dicom.layout import plan_layout
from meshnode.dicom.structure import scan_layout_bytes
from meshnode.storage.audit import AuditEvent, EventCode, Outcome
from meshnode.storage.blockstore import BlockMissingError
from meshnode.storage.dbthread import DatabaseThread
from meshnode.storage.gateway_store import Arrival, GatewayStore
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.node_storage import NodeStorage, now_ms
from meshnode.storage.conflicts import Incoming
from meshnode.storage.records import AddOutcome, InstanceRecord, Source, hash_uid
from meshnode.study.ingest import SECURITY_FLAGS, instance_record
from protocol.cid import CID
from protocol.conflict import DEFAULT_POLICY, ConflictPolicy
from protocol.errors import MeshError

if TYPE_CHECKING:
    from trio_typing import TaskStatus

    from meshnode.gateway.announcer import StudyAnnouncer
    from meshnode.gateway.dimse.streaming import StreamedBlocks
    from meshnode.gateway.routes import Route

log = logging.getLogger(__name__)

DEFAULT_MAX_INSTANCE_BYTES = 2 << 30
MAX_SOURCE_CHARS = 128
#: the audit head file (state/audit-head) is rewritten at most this often while instances stream in
HEAD_FLUSH_S = 0.5


@dataclass(frozen=True)
class StoredInstance:
    """An instance the node now holds durably."""

    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax: str
    size: int
    outcome: AddOutcome  # added, duplicate (these very bytes were held already), conflict (same UID, other bytes)
    route: str | None


@dataclass(frozen=True)
class PreparedInstance:
    """An instance whose blocks are on disk; its metadata is not committed yet.

    `unsynced`: its block temp files and their CIDs when it was prepared with durable=False (the
    group commit syncs and places them); empty when its blocks are durable under their CIDs already.
    """

    record: InstanceRecord
    source: str
    blocks_written: int
    unsynced: tuple[tuple[Path, CID], ...] = ()


@dataclass
class PendingCommit:
    """One instance of a commit group, and once the group is done, what became of it."""

    prepared: PreparedInstance
    route: Route | None
    done: bool = False
    on_conflict: ConflictPolicy | None = None  # overrides the route's (or the node default's) policy
    result: StoredInstance | None = None
    error: BaseException | None = None

    def outcome(self) -> StoredInstance:
        """The stored instance; raises the group's error if its commit failed."""
        if self.error is not None:
            raise self.error
        if self.result is None:
            raise RuntimeError("the commit group has not finished")  # a bug: asked before the group was done
        return self.result


@dataclass
class IntakeCounters:
    """Updated from several threads (association threads, trio's): under `lock`."""

    stored: int = 0
    duplicates: int = 0
    refused: int = 0
    bytes: int = 0
    commits: int = 0
    streamed: int = 0  # instances whose blocks were written while they arrived
    held: int = 0  # SOP Instance UID conflicts held in the conflict queue (meshnode.storage.conflicts)
    by_route: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)


class StudyIntake:
    def __init__(self, storage: NodeStorage, db: DatabaseThread, gateway: GatewayStore,
                 announcer: StudyAnnouncer | None = None, *, max_instance_bytes: int = DEFAULT_MAX_INSTANCE_BYTES,
                 chunk_size: int = DEFAULT_CHUNK_SIZE, clock: Callable[[], float] | None = None,
                 conflict_default: ConflictPolicy = DEFAULT_POLICY) -> None:
        self.storage = storage
        self.db = db
        self.gateway = gateway
        self.announcer = announcer
        self.max_instance_bytes = max_instance_bytes
        self.chunk_size = chunk_size
        self._clock = clock
        self._workers = trio.CapacityLimiter(max(2, os.cpu_count() or 2))
        self._queue: list[PendingCommit] = []
        self._committing = False
        self._idle = trio.Event()
        self._head_dirty = trio.Event()
        self.counters = IntakeCounters()
        #: the policy for an instance on no route (the node's own AE title, STOW-RS without a route)
        self.conflict_default = conflict_default
        #: told (on the trio loop) when a commit held conflicts: the conflict desk applies keep-both at once
        self.conflicts_held: Callable[[], None] | None = None

    def _now_ms(self) -> int:
        return int(self._clock() * 1000) if self._clock is not None else now_ms()

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep state/audit-head up to date: one durable file write per HEAD_FLUSH_S, not per instance.

        A crash can leave the head up to HEAD_FLUSH_S behind the log; `audit verify`
        accepts a head older than the log (it detects a log shorter than its head).
        """
        task_status.started()
        try:
            while True:
                await self._head_dirty.wait()
                self._head_dirty = trio.Event()
                await self.db.run(lambda _: self.storage.write_head())
                await trio.sleep(HEAD_FLUSH_S)
        finally:
            with trio.CancelScope(shield=True):
                if self._head_dirty.is_set():
                    await self.db.run(lambda _: self.storage.write_head())

    # -- the one-call API -----------------------------------------------------------------
    async def store(self, data: bytes, route: Route | None, *, source: str,
                    on_conflict: ConflictPolicy | None = None) -> StoredInstance:
        """Parse, check and durably store one Part 10 instance; returns once it is durable.
        `on_conflict`: the conflict policy whatever the route or the node default says (a research copy:
        reject, meshnode.node.research_share).

        Raises a DicomError (bad DICOM, too large), or a StorageError (disk full, I/O):
        in every case nothing of the instance stays visible.
        """
        prepared = await trio.to_thread.run_sync(self.prepare, data, source, limiter=self._workers)
        return await self.commit(prepared, route, on_conflict=on_conflict)

    # -- step 1: blocks (any thread) ----------------------------------------------------------
    def prepare(self, data: bytes, source: str, *, expect: tuple[str, str] | None = None,
                streamed: StreamedBlocks | None = None, durable: bool = True) -> PreparedInstance:
        """Check the instance and make its blocks durable. Synchronous; safe on any thread.

        `durable=False`: write the blocks to temp files only; `commit` syncs and places them with
        the rest of its group (fewer syncs when several associations store at once).

        `expect`: the (SOP Class UID, SOP Instance UID) the data set must have (a
        C-STORE request names them); SopMismatchError otherwise. Nothing is
        written before every check has passed, except `streamed` blocks (written
        while a C-STORE arrived, meshnode.gateway.dimse.streaming): they are
        used only if the full check computes the same block ranges, and removed
        otherwise.
        """
        source = source[:MAX_SOURCE_CHARS]
        try:
            try:
                if len(data) > self.max_instance_bytes:
                    raise DicomLimitError(f"instance of {len(data)} bytes exceeds the limit of "
                                          f"{self.max_instance_bytes} bytes")
                layout = scan_layout_bytes(data)
                plan = plan_layout(data, layout)
                if expect is not None and (plan.attributes.sop_class_uid,
                                           plan.attributes.sop_instance_uid) != expect:
                    raise SopMismatchError("the data set's SOP Class or SOP Instance UID is not the one "
                                           "the request names")
                ranges = block_ranges(plan, self.chunk_size)
            except BaseException:
                if streamed is not None:
                    self.storage.blocks.discard_temp(streamed.temps)
                raise
            if streamed is not None and streamed.ranges == tuple(ranges) and streamed.size == len(data):
                cids, digest, written = list(streamed.cids), streamed.digest, list(streamed.temps)
                with self.counters.lock:
                    self.counters.streamed += 1
            else:
                if streamed is not None:
                    self.storage.blocks.discard_temp(streamed.temps)
                view = memoryview(data)
                cids = [CID(hashlib.sha256(view[start:end]).digest()) for start, end in ranges]
                digest = hashlib.sha256(view).digest()
                written = self._write_blocks(view, ranges)
            unsynced = tuple(zip(written, cids))
            if durable:
                self.make_durable(unsynced)
                unsynced = ()
        except MeshError as exc:
            with self.counters.lock:
                self.counters.refused += 1
            log.info("instance from %s refused: %s", source, exc.name)
            raise
        sizes = [end - start for start, end in ranges]
        record = instance_record(plan, cids, sizes, len(data), digest, Source.LOCAL)
        return PreparedInstance(record, source, len(written), unsynced)

    def _write_blocks(self, view: memoryview, ranges: Sequence[tuple[int, int]]) -> list[Path]:
        """Each block to a temp file (not synced yet). On error, nothing stays."""
        blocks = self.storage.blocks
        written: list[Path] = []
        try:
            for start, end in ranges:
                written.append(blocks.write_temp(view[start:end]))
        except BaseException:
            blocks.discard_temp(written)
            raise
        return written

    def make_durable(self, written: Sequence[tuple[Path, CID]]) -> None:
        """Sync temp block files (their flushes overlap), rename them to their CIDs and sync their folders.
        On error, no temp file stays (a StorageError)."""
        blocks = self.storage.blocks
        try:
            blocks.make_durable([tmp for tmp, _ in written])
        except BaseException:
            blocks.discard_temp([tmp for tmp, _ in written])
            raise
        blocks.place(written)  # discards the temp files itself on error

    # -- step 2: metadata (trio) ---------------------------------------------------------------
    async def commit(self, prepared: PreparedInstance, route: Route | None, *,
                     on_conflict: ConflictPolicy | None = None) -> StoredInstance:
        """Commit the metadata of a prepared instance (grouped with concurrent ones); durable on return."""
        item = PendingCommit(prepared, route, on_conflict=on_conflict)
        self._queue.append(item)
        while not item.done:
            if self._committing:
                await self._idle.wait()
                continue
            self._committing = True
            batch, self._queue = self._queue, []
            try:
                await self._commit_batch(batch)
            except BaseException as exc:
                for pending in batch:
                    if not pending.done:
                        pending.done, pending.error = True, exc
                raise
            finally:
                self._committing = False
                self._idle.set()
                self._idle = trio.Event()
        return item.outcome()

    def commit_group_here(self, group: list[PendingCommit], token: trio.lowlevel.TrioToken) -> None:
        """Commit a group formed by the caller (meshnode.gateway.group_commit) on the calling thread, a plain
        one (pynetdicom's), not trio's: the transaction runs here, exclusive with the database thread's calls
        (DatabaseThread.run_blocking), so the group's response waits for no trio hop. On return each item is
        done, with its result or the group's error (a MeshError). The announcer's in-memory bookkeeping is
        handed to the trio loop afterwards (its durable part is in the transaction)."""
        now = self._now_ms()
        # every arrival's queue item is written (reopened or pushed): whether it is pending already is the
        # trio loop's state, not read from this thread
        noted, work = self._group_work(group, now, persist_all=True)
        try:
            outcomes = self.db.run_blocking(work)
        except MeshError as exc:
            log.error("cannot commit %d instance(s): %s", len(group), exc)
            for p in group:
                p.done, p.error = True, exc
            return
        try:
            token.run_sync_soon(self._committed_soon, noted, now, AddOutcome.CONFLICT in outcomes)
        except trio.RunFinishedError:
            pass  # the node is stopping: what the announcer would note is durable, and read at the next start
        self._finish(group, outcomes)

    def _committed_soon(self, noted: Sequence[Arrival], now: int, held: bool = False) -> None:
        """_committed, run by the trio loop itself (run_sync_soon): an exception here would end the whole trio
        run (TrioInternalError), so a bug is logged instead; the group is committed, durably, either way."""
        try:
            self._committed(noted, now, held)
        except Exception:  # a task boundary: the loop's own callback
            log.exception("after a group commit: cannot note %d arrival(s)", len(noted))

    def _committed(self, noted: Sequence[Arrival], now: int, held: bool = False) -> None:
        """After a group's commit, on the trio loop: the audit head is due, the announcer counts arrivals, the
        conflict desk hears of held conflicts."""
        self._head_dirty.set()
        if held and self.conflicts_held is not None:
            self.conflicts_held()
        if self.announcer is not None:
            for a in noted:
                self.announcer.arrived(a.study_uid, a.route, now / 1000)

    async def _commit_batch(self, batch: list[PendingCommit]) -> None:
        now = self._now_ms()
        noted, work = self._group_work(batch, now, persist_all=False)
        try:
            outcomes = await self.db.run(work)
        except MeshError as exc:
            log.error("cannot commit %d instance(s): %s", len(batch), exc)
            for p in batch:
                p.done, p.error = True, exc
            return
        self._committed(noted, now, AddOutcome.CONFLICT in outcomes)
        self._finish(batch, outcomes)

    def _group_work(self, batch: list[PendingCommit], now: int, *, persist_all: bool
                    ) -> tuple[list[Arrival], Callable[[MetadataStore], list[AddOutcome]]]:
        """The arrivals of a group, and its database work: its blocks made durable if they are not yet, then
        its arrivals, announcement items, instances and audit entries (one transaction when the gateway store
        shares the metadata store's connection)."""
        records = [p.prepared.record for p in batch]
        incoming = [self.incoming(p) for p in batch]
        events = self._audit_events(batch)
        arrivals: dict[tuple[str, str], int] = {}
        for p in batch:
            if p.route is not None:
                key = (p.prepared.record.study_uid, p.route.name)
                arrivals[key] = arrivals.get(key, 0) + 1
        noted = [Arrival(s, r, n) for (s, r), n in arrivals.items()]
        to_persist = [a for a in noted if persist_all or self.announcer is None
                      or self.announcer.needs_note(a.study_uid, a.route)]
        storage, gateway, announcer = self.storage, self.gateway, self.announcer
        unsynced = [w for p in batch for w in p.prepared.unsynced]
        make_durable = self.make_durable

        blocks = storage.blocks

        def work(store: MetadataStore) -> list[AddOutcome]:
            if unsynced:  # the group's blocks, durable under their CIDs before any metadata names them
                make_durable(unsynced)
            # a block placed earlier may have been an existing file (place() then drops its own copy) that
            # the node's gc deleted before this call took the database lock (gc runs under it too): checked
            # here, under the lock, nothing can delete it before the transaction references it
            missing = sum(1 for rec in records for cid in set(rec.blocks) if not blocks.has(cid))
            if missing:
                raise BlockMissingError(f"{missing} block(s) of the group were removed before its commit")
            # one transaction when the gateway store shares the metadata store's connection (the node's:
            # sqlite_gateway.py): the arrivals, the announcement's queue item, the instances and their audit
            # entries. Otherwise the announcement first: a crash between the two leaves a pending announcement
            # without its instance (harmless), never the reverse.
            with store.atomic() if gateway.writes_with(store) else nullcontext():
                if noted and announcer is not None:
                    announcer.note(store, noted, now, reopen=to_persist)
                elif to_persist:
                    gateway.note_arrivals(to_persist, now)
                return storage.metadata.add_instances(records, events, now, incoming)

        return noted, work

    def incoming(self, p: PendingCommit) -> Incoming:
        """How an instance came, for protocol.conflict.decide: its route's policy (or the node default)."""
        if p.on_conflict is not None:
            return Incoming(p.on_conflict, p.prepared.source, p.route.name if p.route else "")
        if p.route is None:
            return Incoming(self.conflict_default, p.prepared.source, "")
        return Incoming(p.route.on_conflict, p.prepared.source, p.route.name)

    def _finish(self, batch: list[PendingCommit], outcomes: list[AddOutcome]) -> None:
        """The group is committed: count it, and give each item its result (done)."""
        c = self.counters
        with c.lock:
            c.commits += 1
            for p, outcome in zip(batch, outcomes):
                if outcome is AddOutcome.DUPLICATE:
                    c.duplicates += 1
                elif outcome is AddOutcome.CONFLICT:
                    c.held += 1
                else:
                    c.stored += 1
                    c.bytes += p.prepared.record.size
                if p.route is not None:
                    c.by_route[p.route.name] = c.by_route.get(p.route.name, 0) + 1
        for p, outcome in zip(batch, outcomes):
            rec = p.prepared.record
            p.result = StoredInstance(rec.sop_instance_uid, rec.sop_class_uid, rec.study_uid, rec.series_uid,
                                      rec.transfer_syntax, rec.size, outcome, p.route.name if p.route else None)
            p.done = True

    @staticmethod
    def _audit_events(batch: Sequence[PendingCommit]) -> list[AuditEvent]:
        """One Data Import (110107) entry per study, source and route in the batch; security alerts."""
        groups: dict[tuple[str, str, str], list[InstanceRecord]] = {}
        events: list[AuditEvent] = []
        for p in batch:
            rec = p.prepared.record
            key = (rec.study_uid, p.prepared.source, p.route.name if p.route else "")
            groups.setdefault(key, []).append(rec)
            bad = SECURITY_FLAGS.intersection(rec.flags)
            if bad:
                events.append(AuditEvent(EventCode.SECURITY_ALERT, "suspicious-instance", Outcome.MINOR_FAILURE,
                                         actor=p.prepared.source, study=hash_uid(rec.study_uid),
                                         detail=f"{','.join(sorted(bad))} in {hash_uid(rec.sop_instance_uid)}"
                                                " (bytes kept unchanged)"))
        for (study, source, route), recs in groups.items():
            events.append(AuditEvent(EventCode.IMPORT, "gateway-store", actor=source, study=hash_uid(study),
                                     detail=f"{len(recs)} instance(s), {sum(r.size for r in recs)} bytes"
                                            + (f", route {route}" if route else ", no route (kept here)")))
        return events

