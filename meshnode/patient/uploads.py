"""Uploads through patient upload links: the part files, the checks, the quarantine (issue 14).

    <home>/uploads/<hash of link ID>/<upload ID>.part        a resumable upload as it arrives
    <home>/tmp/uploads/<random>/                             ZIP members while they are checked
    <home>/quarantine/<hash of link ID>/<sha256>.dcm         accepted files, until the PACS team decides

Every name on disk is a hash or a random ID: nothing an uploader sends (file names, relative paths) is
ever part of a path. Before anything is written into quarantine the resolved target is checked to be a
direct child of the link's quarantine folder.

Durable before acknowledged: the bytes of an append are fsynced, then the new offset is committed to the
store, and only then does the caller answer with it. After a crash the part file is cut back to the
committed offset (bytes past it were never acknowledged), so a client resumes from there.

Per link: the declared lengths of its uploads plus the bytes unpacked from its archives stay within
max_upload_mb; its uploads plus their files within max_files; each file within max_file_mb.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import BinaryIO

import trio

from meshnode.gateway.intake import PreparedInstance, StudyIntake
from meshnode.gateway.reconciler import Reconciler, arriving_patient, stored_patients
from meshnode.patient.config import PatientAccessConfig
from meshnode.patient.links import LinkGrant
from meshnode.patient.upload_check import (
    Outcome,
    UploadLimits,
    Verdict,
    check_file,
    display_name,
    preamble_refusal,
)
from meshnode.patient.upload_errors import UploadLimitError, UploadStateError
from meshnode.storage.audit import AuditEvent, EventCode
from meshnode.storage.audit import Outcome as AuditOutcome
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.records import InstanceRecord, hash_uid
from meshnode.storage.upload_store import (
    ACCEPTED,
    HELD,
    NONE,
    RECEIVING,
    REJECTED,
    FileRow,
    UploadRow,
    UploadStore,
)
from protocol.errors import MeshError, NotFoundError, StorageError
from protocol.reconciliation import ArrivingPatient, Match, decide_study, nhs_numbers

log = logging.getLogger(__name__)

AuditFn = Callable[[AuditEvent], Awaitable[None]]
MB = 1 << 20
#: bytes written per thread hop while a PATCH body arrives
WRITE_BATCH = 1 << 20
_UPLOAD_ID = re.compile(r"[0-9a-f]{32}")
SWEEP_EVERY_S = 3600.0
#: checks running at once on the whole node (each may read a 2 GB file or unpack a ZIP): more wait their turn
CHECKS_AT_ONCE = 2
#: free disk space an upload must leave (besides twice its length: the part and its quarantine copy)
MIN_FREE_BYTES = 512 * MB
#: leftovers younger than this are left alone at start (a check may have begun already)
LEFTOVER_AGE_S = 600.0
#: refusals that look like an attack rather than a mistake (audited as a Security Alert, 110113)
HOSTILE = frozenset({"executable-preamble", "archive-refused"})


def link_folder(link_id: str) -> str:
    """The folder name of a link: a hash, whatever the link ID looks like."""
    return hashlib.sha256(link_id.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def valid_upload_id(text: str) -> bool:
    return bool(_UPLOAD_ID.fullmatch(text))


@dataclass(frozen=True)
class HeldStudy:
    study_uid: str
    patient_name: str
    patient_id: str
    study_date: str
    study_description: str
    modalities: tuple[str, ...]
    files: int
    bytes: int
    #: every distinct (patient ID, patient name) the study's files name (patient_id/patient_name above join
    #: them); more than one: `mixed`, and accept holds the study back (patient reconciliation)
    patients: tuple[tuple[str, str], ...] = ()
    mixed: bool = False


@dataclass(frozen=True)
class AcceptResult:
    #: instances ingested
    stored: int
    #: study UID -> why its files stay held in quarantine (patient reconciliation: not stored)
    held: dict[str, str]


class Uploads:
    def __init__(self, home: Path, store: UploadStore, config: PatientAccessConfig, audit: AuditFn,
                 intake: Callable[[], StudyIntake | None], clock: Callable[[], float],
                 reconciler: Callable[[], Reconciler | None] = lambda: None) -> None:
        self.home = home
        self.store = store
        self.config = config
        self.audit = audit
        self.intake = intake
        self.clock = clock
        #: the gateway's patient reconciliation ([reconciliation]): an accepted study is decided by it first
        self.reconciler = reconciler
        self.parts_root = home / "uploads"
        self.quarantine_root = home / "quarantine"
        self.scratch_root = home / "tmp" / "uploads"
        self._busy: set[str] = set()
        self._deciding: set[str] = set()
        self._locks: dict[str, trio.Lock] = {}
        #: node-wide: checks of all links share it (not trio's default thread limiter of 40)
        self.checks = trio.CapacityLimiter(CHECKS_AT_ONCE)
        self.min_free_bytes = MIN_FREE_BYTES

    # -- the uploader's side (tus) --------------------------------------------------------------------

    async def create(self, grant: LinkGrant, length: int, name: str) -> UploadRow:
        max_file = self.config.max_file_mb * MB
        if length < 0:
            raise UploadStateError("Upload-Length must not be negative")
        if length > max_file:
            raise UploadLimitError(f"the file is {length} bytes, over the limit of {max_file} bytes per file")
        row = UploadRow(secrets.token_hex(16), grant.link_id, display_name(name), length, 0, RECEIVING,
                        int(self.clock() * 1000))
        part = self._part(row)

        def make() -> None:
            self.parts_root.mkdir(parents=True, exist_ok=True)
            if shutil.disk_usage(self.parts_root).free < 2 * length + self.min_free_bytes:
                log.warning("an upload of %d bytes refused: the node is short of disk space", length)
                raise UploadLimitError("the node has no room for this file now: try again later, or contact "
                                       "the hospital")
            usage = self.store.usage(grant.link_id)
            if usage.files + 1 > self.config.max_files:
                raise UploadLimitError(f"this link takes at most {self.config.max_files} files")
            if usage.bytes + length > self.config.max_upload_mb * MB:
                raise UploadLimitError(f"this link takes at most {self.config.max_upload_mb} MB in all")
            part.parent.mkdir(parents=True, exist_ok=True)
            with open(part, "xb") as out:
                os.fsync(out.fileno())
            _fsync_dir(part.parent)
            self.store.create_upload(row)

        async with self._lock(grant.link_id):  # the usage check and the new row together (no overbooking)
            await trio.to_thread.run_sync(make)
        log.info("upload %s created on link %s: %d bytes", row.upload_id, link_folder(grant.link_id), length)
        if length == 0:  # complete as created (tus): checked (and refused as empty) at once
            await self._complete(grant, row)
        return row

    async def status(self, grant: LinkGrant, upload_id: str) -> UploadRow:
        """The upload, if it is this link's (NotFoundError otherwise: another link's ID is unknown here)."""
        if not valid_upload_id(upload_id):
            raise NotFoundError("no such upload")
        row = await trio.to_thread.run_sync(self.store.upload, grant.link_id, upload_id)
        if row is None:
            raise NotFoundError("no such upload")
        return row

    async def append(self, grant: LinkGrant, upload_id: str, offset: int, chunks: AsyncIterator[bytes],
                     declared: int | None) -> UploadRow:
        """Append a PATCH body at `offset`; durable (fsynced, offset committed) on return. A body cut short
        keeps what arrived (durable too) and re-raises. Past the upload's length: UploadLimitError, nothing
        kept of this body."""
        # the guard before the row is read: a row read while another request appends may be stale, and
        # checking an offset against it would roll back an acknowledged offset (review M3)
        if upload_id in self._busy:
            raise UploadStateError("another request is appending to this upload")
        self._busy.add(upload_id)
        try:
            row = await self.status(grant, upload_id)
            if row.state != RECEIVING:
                raise UploadStateError("this upload is complete")
            if offset != row.received:
                raise UploadStateError(f"Upload-Offset {offset} is not the upload's offset {row.received}")
            if declared is not None and offset + declared > row.length:
                raise UploadLimitError(f"the body would take the upload past its length of {row.length} bytes")
            received = await self._write(row, chunks)
            row = UploadRow(row.upload_id, row.link_id, row.name, row.length, received, row.state, row.created_ms)
            if received == row.length:  # (again, if the checks failed the first time: an empty PATCH retries)
                await self._complete(grant, row)
        finally:
            self._busy.discard(upload_id)
        return row

    async def _write(self, row: UploadRow, chunks: AsyncIterator[bytes]) -> int:
        out = await trio.to_thread.run_sync(_open_at, self._part(row), row.received)
        written = 0  # bytes of this body in the file
        pending: list[bytes] = []
        size = 0  # bytes of this body still in `pending`
        try:
            try:
                async for chunk in chunks:
                    if row.received + written + size + len(chunk) > row.length:
                        raise UploadLimitError(f"the body takes the upload past its length of {row.length} bytes")
                    pending.append(chunk)
                    size += len(chunk)
                    if size >= WRITE_BATCH:
                        await trio.to_thread.run_sync(out.write, b"".join(pending))
                        written, pending, size = written + size, [], 0
            except UploadLimitError:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(out.truncate, row.received)
                written, pending, size = 0, [], 0
                raise
            finally:
                # what arrived before a drop is kept and made durable, so the client resumes after it
                with trio.CancelScope(shield=True):
                    if size:
                        await trio.to_thread.run_sync(out.write, b"".join(pending))
                        written += size
                    await trio.to_thread.run_sync(_sync, out)
                    if written:
                        await trio.to_thread.run_sync(self.store.set_received, row.upload_id,
                                                      row.received + written)
        finally:
            await trio.to_thread.run_sync(out.close)
        return row.received + written

    async def delete(self, grant: LinkGrant, upload_id: str) -> None:
        if upload_id in self._busy:  # guarded as append is: no delete under a body being written
            raise UploadStateError("this upload cannot be deleted now")
        self._busy.add(upload_id)
        try:
            row = await self.status(grant, upload_id)
            if row.state != RECEIVING:
                raise UploadStateError("this upload cannot be deleted now")

            def remove() -> None:
                self.store.delete_upload(upload_id)
                self._part(row).unlink(missing_ok=True)

            await trio.to_thread.run_sync(remove)
        finally:
            self._busy.discard(upload_id)

    async def sweep(self) -> int:
        """Delete uploads still receiving after an upload link's whole lifetime (upload_days and a day): no
        link can finish them any more. Returns how many."""
        before_ms = int((self.clock() - (self.config.upload_days + 1) * 86400) * 1000)

        def remove() -> int:
            stale = [u for u in self.store.stale_uploads(before_ms) if u.upload_id not in self._busy]
            for u in stale:
                self.store.delete_upload(u.upload_id)
                self._part(u).unlink(missing_ok=True)
            return len(stale)

        removed = await trio.to_thread.run_sync(remove)
        if removed:
            log.info("removed %d abandoned upload(s)", removed)
        return removed

    def clear_leftovers(self, now: float) -> int:
        """What a crash left behind (review minor), older than LEFTOVER_AGE_S: scratch folders of checks (ZIP
        members, patient data), quarantine temp files, part files of uploads no longer receiving, and
        quarantine files no held row names. Returns how many paths were removed. Blocking (a worker thread)."""
        def old(path: Path) -> bool:
            try:
                return now - path.lstat().st_mtime > LEFTOVER_AGE_S
            except FileNotFoundError:
                return False

        removed = 0
        if self.scratch_root.is_dir():
            for entry in self.scratch_root.iterdir():
                if old(entry):
                    if entry.is_dir():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink(missing_ok=True)
                    removed += 1
        receiving = {u.upload_id for u in self.store.stale_uploads(1 << 62)}
        if self.parts_root.is_dir():
            for part in self.parts_root.glob("*/*.part"):
                if part.stem not in receiving and old(part):
                    part.unlink(missing_ok=True)
                    removed += 1
        held = {(link_folder(link), f.sha256) for link in self.store.held_links()
                for f in self.store.files(link) if f.state == HELD}
        if self.quarantine_root.is_dir():
            for path in self.quarantine_root.glob("*/*"):
                orphan = path.name.startswith(".") or (path.parent.name, path.stem) not in held
                if path.is_file() and orphan and old(path):
                    path.unlink(missing_ok=True)
                    removed += 1
        return removed

    async def run(self) -> None:
        """Clear a crash's leftovers, then sweep abandoned uploads once an hour (under
        meshnode.node.context.keep_running)."""
        removed = await trio.to_thread.run_sync(self.clear_leftovers, time.time())  # file times: the real clock
        if removed:
            log.info("removed %d leftover(s) of uploads interrupted by a stop", removed)
        while True:
            await self.sweep()
            await trio.sleep(SWEEP_EVERY_S)

    async def results(self, grant: LinkGrant) -> tuple[list[UploadRow], list[FileRow]]:
        """The link's uploads not yet checked, and the verdicts on its files."""
        def read() -> tuple[list[UploadRow], list[FileRow]]:
            return self.store.receiving(grant.link_id), self.store.files(grant.link_id)

        return await trio.to_thread.run_sync(read)

    async def _complete(self, grant: LinkGrant, row: UploadRow) -> None:
        def check() -> list[FileRow]:
            usage = self.store.usage(grant.link_id)
            limits = UploadLimits(
                max_file_bytes=self.config.max_file_mb * MB,
                total_bytes_left=max(0, self.config.max_upload_mb * MB - usage.bytes),
                files_left=max(0, self.config.max_files - usage.files + 1),  # this upload counts already
            )
            return self._check_and_hold(grant, row, limits)

        async with self._lock(grant.link_id):  # one link's totals are read and spent by one check at a time
            rows = await trio.to_thread.run_sync(check, limiter=self.checks)
        held = sum(1 for r in rows if r.state == HELD)
        hostile = [r for r in rows if r.error in HOSTILE]
        if hostile:  # an executable preamble or a path trick: the security officer wants to know
            await self.audit(AuditEvent(
                EventCode.SECURITY_ALERT, "upload-hostile-file", AuditOutcome.SERIOUS_FAILURE,
                actor=f"link:{grant.link_id}",
                detail=f"{len(hostile)} file(s) refused: " + "; ".join(sorted({r.error for r in hostile}))))
        detail = f"{held} of {len(rows)} file(s) held in quarantine, {len(rows) - held} refused or skipped"
        outcome = AuditOutcome.SUCCESS if held == len(rows) else AuditOutcome.MINOR_FAILURE
        studies = sorted({r.study_uid for r in rows if r.state == HELD and r.study_uid})
        for study in studies or [""]:  # one event per study held, each naming it (review minor)
            await self.audit(AuditEvent(EventCode.IMPORT, "upload-received", outcome, actor=f"link:{grant.link_id}",
                                        study=hash_uid(study) if study else "", detail=detail))

    def _check_and_hold(self, grant: LinkGrant, row: UploadRow, limits: UploadLimits) -> list[FileRow]:
        """In a worker thread: the checks, then every accepted file into quarantine, then the verdicts."""
        part = self._part(row)
        scratch = self.scratch_root / secrets.token_hex(16)
        scratch.mkdir(parents=True)
        now_ms = int(self.clock() * 1000)
        rows: list[FileRow] = []
        try:
            for verdict in check_file(part, row.name, limits, scratch):
                rows.append(self._hold(grant, row, verdict, now_ms))
            self.store.finish(row.upload_id, rows)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        # only once the verdicts are committed: a failure before leaves the part, and an empty PATCH at the
        # end offset runs the checks again
        part.unlink(missing_ok=True)
        return rows

    def _hold(self, grant: LinkGrant, row: UploadRow, verdict: Verdict, now_ms: int) -> FileRow:
        archived = verdict.name != row.name
        instance = verdict.instance
        if verdict.outcome is not Outcome.ACCEPTED or instance is None:
            # a refused ZIP member's inflated bytes count towards the link's total (review M5)
            return FileRow(grant.link_id, row.upload_id, display_name(verdict.name), verdict.outcome.value,
                           verdict.reason, size=verdict.inflated if archived else 0, state=NONE, created_ms=now_ms,
                           archived=archived, person=grant.person, error=verdict.error)
        folder = self.quarantine_root / link_folder(grant.link_id)
        target = self.quarantine_file(grant.link_id, instance.sha256)
        for attempt in range(3):  # a decision may remove the (empty) folder between mkdir and the copy
            folder.mkdir(parents=True, exist_ok=True)
            if target.resolve().parent != folder.resolve():  # the os-level check: nowhere but this folder
                raise StorageError("a quarantine path outside the quarantine folder")
            try:
                if not target.exists():
                    tmp = folder / f".{secrets.token_hex(8)}.tmp"
                    shutil.copyfile(instance.path, tmp)
                    with open(tmp, "rb+") as f:
                        os.fsync(f.fileno())
                    os.replace(tmp, target)
                    _fsync_dir(folder)
                break
            except FileNotFoundError:
                if attempt == 2 or not instance.path.exists():
                    raise
        a = instance.attributes
        return FileRow(grant.link_id, row.upload_id, display_name(verdict.name), Outcome.ACCEPTED.value, "",
                       instance.sha256, instance.size, a.study_instance_uid, a.series_instance_uid,
                       a.sop_instance_uid, a.patient_name, a.patient_id, a.study_date, a.study_description,
                       a.modality, HELD, "", now_ms, archived, grant.person)

    def _lock(self, link_id: str) -> trio.Lock:
        if len(self._locks) > 10_000:  # forget idle ones now and then
            self._locks = {k: v for k, v in self._locks.items() if v.locked()}
        return self._locks.setdefault(link_id, trio.Lock())

    def _part(self, row: UploadRow) -> Path:
        if not valid_upload_id(row.upload_id):
            raise StorageError("not an upload ID")
        return self.parts_root / link_folder(row.link_id) / f"{row.upload_id}.part"

    def quarantine_file(self, link_id: str, sha256: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise StorageError("not a SHA-256")
        return self.quarantine_root / link_folder(link_id) / f"{sha256}.dcm"

    # -- the PACS team's review ------------------------------------------------------------------------

    async def held(self) -> list[dict[str, object]]:
        def read() -> list[dict[str, object]]:
            out: list[dict[str, object]] = []
            for link_id in self.store.held_links():
                files = self.store.files(link_id)
                held = [f for f in files if f.state == HELD]
                out.append({
                    "link": link_id, "person": held[0].person if held else "",
                    "files": len(held), "bytes": sum(f.size for f in held),
                    "refused": [{"name": f.name, "reason": f.reason} for f in files if f.outcome != ACCEPTED],
                    "studies": [asdict(s) for s in _studies(held)],
                })
            return out

        return await trio.to_thread.run_sync(read)

    async def accept(self, link_id: str, user: str) -> AcceptResult:
        """Ingest the link's held files through the node's intake, then mark them accepted and remove them
        from quarantine.

        Patient reconciliation first, study by study, as the gateway decides a received study: the files of
        one study must name one patient, a study UID the node holds already must be of that patient, and
        with [reconciliation] enabled the patient must match a local record by NHS number
        (protocol.reconciliation.decide_study with the gateway's settings and patient table). A study that
        fails stays held in quarantine (nothing of it stored; the reason in the answer and the audit): the
        PACS team rejects it, or fixes the local record and accepts again.

        Every file is read again and must still have the SHA-256 and preamble it was checked with; all
        admitted files are prepared (checked by the intake, blocks written) before any is committed, so a
        file the intake refuses stores nothing. Each commit is recorded as it happens: files stored are
        accepted and audited even if a later commit fails."""
        intake = self.intake()
        if intake is None:
            raise UploadStateError("this node runs no study intake (the gateway is not started)")
        async with self._deciding_on(link_id):
            files = [f for f in await trio.to_thread.run_sync(self.store.files, link_id) if f.state == HELD]
            if not files:
                raise UploadStateError("nothing of this link is held in quarantine (decided already?)")
            patients = await trio.to_thread.run_sync(self._patients, link_id, files)
            held = await self._reconcile(intake, files, patients)
            admitted = [f for f in files if f.study_uid not in held]
            if held:
                await self.audit(AuditEvent(
                    EventCode.PATIENT_RECORD, "upload-held-by-reconciliation", AuditOutcome.MINOR_FAILURE,
                    actor=f"user:{user}", study=hash_uid(next(iter(held))) if len(held) == 1 else "",
                    detail=f"link {link_folder(link_id)}: {len(held)} stud(ies) stay in quarantine: "
                           + "; ".join(sorted(set(held.values())))[:250]))
            if not admitted:
                return AcceptResult(0, held)
            prepared = await trio.to_thread.run_sync(self._prepare_all, intake, link_id, admitted)
            stored: list[FileRow] = []
            try:
                for sha, instance in prepared.items():
                    await intake.commit(instance, None)
                    stored.extend(f for f in admitted if f.sha256 == sha)
            finally:
                with trio.CancelScope(shield=True):
                    if stored:
                        await self._accepted(link_id, user, stored, len({f.sha256 for f in stored}),
                                             complete=len(stored) == len(admitted))
        return AcceptResult(len(prepared), held)

    async def _accepted(self, link_id: str, user: str, stored: list[FileRow], instances: int,
                        complete: bool) -> None:
        await trio.to_thread.run_sync(self.store.decide, link_id, ACCEPTED, user, [f.file_id for f in stored])
        await trio.to_thread.run_sync(self._remove, link_id, stored)
        by = _by_study(stored)
        for study, shas in sorted(by.items()):  # one event per study: each names its study (review minor)
            await self.audit(AuditEvent(EventCode.IMPORT, "upload-accepted",
                                        AuditOutcome.SUCCESS if complete else AuditOutcome.MINOR_FAILURE,
                                        actor=f"user:{user}", study=hash_uid(study),
                                        detail=f"link {link_folder(link_id)}: {len(shas)} instance(s) of this "
                                               f"study ingested ({instances} in {len(by)} stud(ies) in all)"
                                               + ("" if complete else "; the rest failed and stay held")))

    def _read_held(self, link_id: str, sha: str) -> bytes:
        """A quarantined file's bytes, refused unless they are still what was checked (M1: a file changed
        after its check is never ingested)."""
        data = self.quarantine_file(link_id, sha).read_bytes()
        if hashlib.sha256(data).hexdigest() != sha or len(data) < 132 or preamble_refusal(data[:128], len(data)) is not None:
            log.warning("a quarantined file of link %s changed after its check", link_folder(link_id))
            raise UploadStateError("a quarantined file changed after it was checked: nothing accepted "
                                   "(reject this upload)")
        return data

    def _patients(self, link_id: str, files: list[FileRow]) -> dict[str, ArrivingPatient]:
        """Worker thread: the patient each held file (by SHA-256) names, read from its checked bytes."""
        out: dict[str, ArrivingPatient] = {}
        for sha in dict.fromkeys(f.sha256 for f in files):
            try:
                out[sha] = arriving_patient(io.BytesIO(self._read_held(link_id, sha)))
            except OSError:
                raise UploadStateError("a quarantined file is missing: nothing accepted") from None
        return out

    async def _reconcile(self, intake: StudyIntake, files: list[FileRow],
                         patients: dict[str, ArrivingPatient]) -> dict[str, str]:
        """Study UID -> why it stays held (the studies patient reconciliation does not let in)."""
        reconciler = self.reconciler()
        settings = reconciler.settings if reconciler is not None and reconciler.settings.enabled else None
        held: dict[str, str] = {}
        for study, shas in _by_study(files).items():
            named = [patients[s] for s in shas]
            if len(set(named)) > 1:
                held[study] = f"the study's files name {len(set(named))} different patients"
                continue
            records = await intake.db.run(partial(_first_instance, study_uid=study))
            if records:
                try:
                    [existing] = await trio.to_thread.run_sync(stored_patients, intake.storage.blocks, records)
                except MeshError:
                    existing = None
                if existing != named[0]:
                    held[study] = "the node holds this study already under another patient"
                    continue
            if settings is None or reconciler is None:
                continue
            numbers = nhs_numbers(named[0], frozenset(settings.nhs_issuers))
            candidates = await reconciler.db.run(lambda s: [p for n in numbers for p in s.patients(n)])
            decision = decide_study(named, [c.local_patient() for c in candidates],
                                    issuers=frozenset(settings.nhs_issuers),
                                    demographics_must_agree=settings.demographics_must_agree)
            if not isinstance(decision, Match):
                held[study] = (f"patient reconciliation: {decision.reason.value}"
                               + (f" ({decision.detail})" if decision.detail else ""))
        return held

    def _prepare_all(self, intake: StudyIntake, link_id: str, files: list[FileRow]) -> dict[str, PreparedInstance]:
        """Worker thread: every admitted file checked again and prepared (blocks durable) before any commit."""
        out: dict[str, PreparedInstance] = {}
        for sha in dict.fromkeys(f.sha256 for f in files):
            try:
                out[sha] = intake.prepare(self._read_held(link_id, sha), f"upload:{link_folder(link_id)}")
            except UploadStateError:
                raise
            except MeshError as exc:
                raise UploadStateError(f"the node's intake refuses a held file ({exc.name}): nothing accepted "
                                       f"({str(exc)[:200]})") from None
        return out

    async def reject(self, link_id: str, user: str, reason: str) -> int:
        async with self._deciding_on(link_id):
            moved = await trio.to_thread.run_sync(self.store.decide, link_id, REJECTED, user)
            if not moved:
                raise UploadStateError("nothing of this link is held in quarantine (decided already?)")
            await trio.to_thread.run_sync(self._remove, link_id, moved)
        await self.audit(AuditEvent(EventCode.IMPORT, "upload-rejected", AuditOutcome.MINOR_FAILURE,
                                    actor=f"user:{user}",
                                    detail=f"link {link_folder(link_id)}: {len(moved)} file(s) deleted: "
                                           f"{reason}"[:300]))
        return len(moved)

    def _remove(self, link_id: str, decided: list[FileRow]) -> None:
        """Delete the decided files from quarantine (a file held again since, by a later upload of the same
        bytes, stays)."""
        still = {f.sha256 for f in self.store.files(link_id) if f.state == HELD}
        for sha in {f.sha256 for f in decided} - still:
            self.quarantine_file(link_id, sha).unlink(missing_ok=True)
        folder = self.quarantine_root / link_folder(link_id)
        try:
            folder.rmdir()  # only if empty: a file a check holds meanwhile keeps it (review minor: no race)
        except OSError:
            pass

    def _deciding_on(self, link_id: str) -> _Deciding:
        return _Deciding(self._deciding, link_id)


class _Deciding:
    """One decision per link at a time in this process (the store's compare-and-set covers the rest)."""

    def __init__(self, busy: set[str], link_id: str) -> None:
        self.busy = busy
        self.link_id = link_id

    async def __aenter__(self) -> None:
        if self.link_id in self.busy:
            raise UploadStateError("another decision on this link is under way")
        self.busy.add(self.link_id)

    async def __aexit__(self, *exc: object) -> None:
        self.busy.discard(self.link_id)


def _first_instance(store: MetadataStore, study_uid: str) -> list[InstanceRecord]:
    return store.instances(study_uid)[:1]


def _by_study(files: list[FileRow]) -> dict[str, list[str]]:
    """Study UID -> the SHA-256 of its files (each once)."""
    by: dict[str, list[str]] = {}
    for f in files:
        shas = by.setdefault(f.study_uid, [])
        if f.sha256 not in shas:
            shas.append(f.sha256)
    return by


def _studies(files: list[FileRow]) -> list[HeldStudy]:
    by: dict[str, list[FileRow]] = {}
    for f in files:
        by.setdefault(f.study_uid, []).append(f)
    out = []
    for uid, fs in sorted(by.items()):
        patients = tuple(sorted({(f.patient_id, f.patient_name) for f in fs}))
        out.append(HeldStudy(uid, " / ".join(n for _, n in patients), " / ".join(i for i, _ in patients),
                             fs[0].study_date, fs[0].study_description,
                             tuple(sorted({f.modality for f in fs if f.modality})), len(fs),
                             sum(f.size for f in fs), patients, len(patients) > 1))
    return out


def _open_at(part: Path, received: int) -> BinaryIO:
    """The part file opened for appending at the committed offset (a tail past it was never acknowledged)."""
    out = open(part, "r+b")  # noqa: SIM115 (the caller closes it after the body)
    out.truncate(received)
    out.seek(received)
    return out


def _sync(out: BinaryIO) -> None:
    out.flush()
    os.fsync(out.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


