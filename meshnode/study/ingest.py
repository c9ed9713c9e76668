"""Ingest DICOM files and folders into the node's store.

Worker processes (both cores: planning is Python, under the GIL) plan each
file (header parsed, no pixel decoding) and stage its blocks as temp files
(staging.py: each byte read once, hashed in place, written by a writer
thread); the parent makes each batch's blocks durable and visible
(BlockStore.commit_staged) and only then commits the batch's metadata,
together with the audit entries, in one transaction. A crash at
any point leaves at most block files that no metadata references (removed
by `gc` after a grace period), never a half-recorded instance; running the
same ingest again completes it without rewriting blocks already on disk.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from meshnode.dicom.blocks import DEFAULT_CHUNK_SIZE
from meshnode.storage.audit import AuditEvent, EventCode, Outcome
from meshnode.storage.blockstore import BlockMissingError, BlockStore
from meshnode.storage.node_storage import NodeStorage, local_actor
from meshnode.storage.conflicts import Incoming
from meshnode.storage.records import AddOutcome, InstanceRecord, hash_uid
from meshnode.study.renaming import keep_both
from meshnode.study.staging import (
    FileStager,
    StagedFile,
    StagedInstance,
    instance_record,
)
from protocol.conflict import DEFAULT_POLICY, ConflictPolicy
from protocol.errors import MeshError, StorageError

log = logging.getLogger(__name__)

__all__ = ["IngestReport", "Ingester", "instance_record", "iter_files"]  # instance_record: the gateway's intake

PR_SET_PDEATHSIG = 1  # linux/prctl.h

BATCH_SIZE = 64
#: files staged behind a commit under way, at most this many batches (then the ingest waits for it)
PENDING_GROUPS = 8
DEFAULT_WORKERS = os.cpu_count() or 2
SECURITY_FLAGS = frozenset({"executable-preamble"})


@dataclass
class IngestReport:
    files: int = 0
    added: int = 0
    duplicates: int = 0
    conflicts: int = 0  # same SOP Instance UID, other bytes: held in the conflict queue (or renamed: keep-both)
    replaced: int = 0  # same SOP Instance UID, other bytes, policy replace: superseded the stored version
    bytes: int = 0
    studies: set[str] = field(default_factory=set)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    flagged: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def instances(self) -> int:
        return self.added + self.duplicates + self.conflicts + self.replaced

    @property
    def images_per_second(self) -> float:
        return self.instances / self.seconds if self.seconds > 0 else 0.0


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Every regular file under the given files and folders, recursively, in a stable order."""
    for path in paths:
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    candidate = Path(root) / name
                    if candidate.is_file():
                        yield candidate
        elif path.is_file():
            yield path
        else:
            raise StorageError(f"{path}: no such file or folder")


FileOutcome = StagedInstance | MeshError | OSError
TASK_FILES = 8  # files per worker task: amortises the inter-process round trip
_stagers: dict[tuple[int, Path, int], FileStager] = {}


def _stager(store_root: Path, chunk_size: int) -> FileStager:
    """This process's stager for the store (its writer threads and buffers live as long as the worker)."""
    key = (os.getpid(), store_root, chunk_size)  # a stager inherited through fork has no threads: not reused
    stager = _stagers.get(key)
    if stager is None:
        stager = _stagers[key] = FileStager(BlockStore(store_root), chunk_size)
    return stager


def stage_paths(paths: list[Path], store_root: Path, chunk_size: int) -> list[FileOutcome]:
    """Stage several files, in a worker process; each file's error is returned, not raised.

    Returns once every block written is in its temp file (not yet durable: the parent's commit_staged).
    """
    stager = _stager(store_root, chunk_size)
    started: list[StagedFile | MeshError | OSError] = []
    try:
        for path in paths:
            try:
                started.append(stager.stage(path))
            except (MeshError, OSError) as exc:
                started.append(exc)
    finally:
        stager.drain()
    out: list[FileOutcome] = []
    for item in started:
        if isinstance(item, StagedFile):
            try:
                out.append(item.result())
            except (MeshError, OSError) as exc:
                out.append(exc)
        else:
            out.append(item)
    return out


def die_with_parent(parent: int) -> None:
    """Worker initializer: a worker must not outlive its ingest, which kill -9 gives no chance to clean up.

    Linux sends the worker SIGKILL when the process that forked it dies; a
    parent already gone before that took effect is caught by its pid.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the worker ends when its task queue breaks
        log.debug("no PR_SET_PDEATHSIG here")
    if os.getppid() != parent:
        os._exit(1)


class Ingester:
    def __init__(self, storage: NodeStorage, *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 workers: int = DEFAULT_WORKERS, batch_size: int = BATCH_SIZE, actor: str | None = None,
                 conflict_policy: ConflictPolicy = DEFAULT_POLICY) -> None:
        self.storage = storage
        self.chunk_size = chunk_size
        self.workers = max(1, workers)
        self.batch_size = batch_size
        self.actor = actor or local_actor()
        #: a file whose SOP Instance UID is stored here with other bytes (protocol.conflict; [conflicts] default)
        self.conflict_policy = conflict_policy

    def ingest(self, paths: Sequence[Path], progress: Callable[[int, int], None] | None = None) -> IngestReport:
        """Ingest every file under `paths`; bad files are skipped with a reason.

        Durable when it returns: every instance reported added is committed, its blocks synced first.
        """
        started = time.perf_counter()
        report = IngestReport()
        files = list(iter_files(paths))
        pending: list[tuple[Path, StagedInstance]] = []
        window: list[tuple[list[Path], Future[list[FileOutcome]]]] = []
        # One commit at a time on its own thread (syncs, renames and SQLite release the GIL), while the
        # workers stage the next files: a group commit takes everything staged meanwhile.
        committer = ThreadPoolExecutor(1, thread_name_prefix="ingest-commit")
        committing: list[Future[None]] = []
        try:
            # Processes, not threads: planning is CPU-bound Python (the GIL). Forked before the commit
            # thread starts (all workers start with the first task).
            with ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("fork"),
                                     initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
                for i in range(0, len(files), TASK_FILES):
                    chunk = files[i : i + TASK_FILES]
                    window.append((chunk, pool.submit(stage_paths, chunk, self.storage.blocks.root, self.chunk_size)))
                    if len(window) >= self.workers * 4:
                        self._collect(window.pop(0), pending, report, progress, len(files))
                        self._group_commit(committer, committing, pending, report)
                while window:
                    self._collect(window.pop(0), pending, report, progress, len(files))
                    self._group_commit(committer, committing, pending, report)
            for commit in committing:
                commit.result()
            self._commit(pending, report)
        except BaseException:
            # A commit under way finishes first (its own failure discards its blocks); nothing of an
            # unfinished batch becomes visible, and its temp files go now.
            for commit in committing:
                commit.exception()
            for _, future in window:
                if not future.cancel() and future.exception() is None:
                    self.storage.blocks.discard_staged(
                        [b for r in future.result() if isinstance(r, StagedInstance) for b in r.staged])
            self.storage.blocks.discard_staged([b for _, item in pending for b in item.staged])
            raise
        finally:
            committer.shutdown(wait=True)
        if report.conflicts and self.conflict_policy is ConflictPolicy.KEEP_BOTH:
            keep_both(self.storage, self.actor, self.chunk_size)
        report.seconds = time.perf_counter() - started
        return report

    def _group_commit(self, committer: ThreadPoolExecutor, committing: list[Future[None]],
                      pending: list[tuple[Path, StagedInstance]], report: IngestReport) -> None:
        """Hand everything pending to the commit thread once batch_size are, unless a commit is under way
        (then the next group grows, up to PENDING_GROUPS batches: then this waits for that commit, so a
        stalled disk holds staging back); raises the error of a commit that failed."""
        if committing and (committing[0].done() or len(pending) >= PENDING_GROUPS * self.batch_size):
            committing.pop().result()
        if not committing and len(pending) >= self.batch_size:
            committing.append(committer.submit(self._commit, pending[:], report))
            pending.clear()

    def _collect(self, item: tuple[list[Path], Future[list[FileOutcome]]],
                 pending: list[tuple[Path, StagedInstance]], report: IngestReport,
                 progress: Callable[[int, int], None] | None, total: int) -> None:
        paths, future = item
        results = future.result()
        storage_error = next((r for r in results if isinstance(r, StorageError)), None)
        if storage_error is not None:
            self.storage.blocks.discard_staged(
                [b for r in results if isinstance(r, StagedInstance) for b in r.staged])
            raise storage_error
        for path, result in zip(paths, results):
            report.files += 1
            if isinstance(result, StagedInstance):
                pending.append((path, result))
            elif isinstance(result, MeshError):
                report.skipped.append((str(path), str(result)))
                log.info("skipped %s: %s", path.name, result.name)
            else:
                report.skipped.append((str(path), f"cannot read: {result.strerror or result}"))
        if progress is not None:
            progress(report.files, total)

    def _commit(self, pending: list[tuple[Path, StagedInstance]], report: IngestReport) -> None:
        if not pending:
            return
        # Blocks first (durable and visible), then the metadata that points at them.
        self.storage.blocks.commit_staged([b for _, item in pending for b in item.staged])
        records = [item.record for _, item in pending]
        events: list[AuditEvent] = []
        per_study: dict[str, list[InstanceRecord]] = {}
        for rec in records:
            per_study.setdefault(rec.study_uid, []).append(rec)
        for study_uid, recs in per_study.items():
            events.append(AuditEvent(EventCode.IMPORT, "ingest", actor=self.actor, study=hash_uid(study_uid),
                                     detail=f"{len(recs)} instance(s), {sum(r.size for r in recs)} bytes"))
        for path, rec in zip((p for p, _ in pending), records):
            bad = SECURITY_FLAGS.intersection(rec.flags)
            if bad:
                report.flagged.append((str(path), rec.flags))
                events.append(AuditEvent(EventCode.SECURITY_ALERT, "suspicious-instance", Outcome.MINOR_FAILURE,
                                         actor=self.actor, study=hash_uid(rec.study_uid),
                                         detail=f"{','.join(sorted(bad))} in {hash_uid(rec.sop_instance_uid)}"
                                                " (bytes kept unchanged)"))
        # a block staging found stored already (so did not write) may have been deleted since by the gc of a
        # node running beside this process: checked last, so that no instance is recorded without its blocks
        # (another process's gc is not locked out of the commit itself, so this narrows the window only)
        blocks = self.storage.blocks
        missing = sum(1 for rec in records for cid in set(rec.blocks) if not blocks.has(cid))
        if missing:
            raise BlockMissingError(f"{missing} block(s) were removed (gc?) before their instances were recorded")
        incoming = [Incoming(self.conflict_policy, f"ingest:{self.actor}:{path.name}"[:128], "")
                    for path, _ in pending]
        outcomes = self.storage.add_instances(records, events, incoming)
        for rec, outcome in zip(records, outcomes):
            report.studies.add(rec.study_uid)
            if outcome is AddOutcome.ADDED:
                report.added += 1
                report.bytes += rec.size
            elif outcome is AddOutcome.DUPLICATE:
                report.duplicates += 1
            elif outcome is AddOutcome.REPLACED:
                report.replaced += 1
                report.bytes += rec.size
            else:
                report.conflicts += 1
        pending.clear()
