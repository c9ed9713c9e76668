"""Auto-forward: every received study, once verified and receipted, is stored into the local PACS.

The queue is durable (forward_items in node.db, one row per manifest,
destination and instance), so forwarding survives a restart. Per [[pacs]]
destination one task sends what is due, most urgent first, a batch per
association, as the bytes the node holds (meshnode.gateway.dimse.sending):

- the PACS cannot be reached or refuses the association: every pending item
  of that destination waits, 2 s doubling up to retry_max_seconds, for ever;
- the PACS answers a C-STORE with a failure status: that instance is retried
  with back-off, and marked failed after max_attempts (`meshnode forward
  retry` queues it again); warning statuses count as stored;
- each batch is audited (Instances Transferred, 110104), per study.

Lifecycle of a study: `enqueue` when it is verified and recorded (items wait
for the receipt), `release` once the receipt is sent, `cancel` on recall.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import trio
from pynetdicom import AE

from meshnode.gateway.config import PacsDestination
from meshnode.gateway.dimse.bridge import AuditFn
from meshnode.node.context import keep_running
from meshnode.gateway.dimse.sending import (
    MAX_CONTEXTS,
    RawInstance,
    install_raw_sending,
    read_instance,
    requested_contexts,
    syntaxes_to_propose,
)
from meshnode.storage.audit import AuditEvent, EventCode, Outcome
from meshnode.storage.blockstore import BlockStore
from meshnode.storage.dbthread import DatabaseThread
from meshnode.storage.gateway_store import (
    ForwardInstance,
    ForwardItem,
    ForwardProgress,
    ForwardResult,
    ForwardState,
    GatewayStore,
)
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.records import InstanceRecord, hash_uid
from protocol.backoff import Backoff
from protocol.cid import CID
from protocol.document import Signed
from protocol.errors import MeshError
from protocol.lifecycle import ManifestState
from protocol.manifest import Manifest

if TYPE_CHECKING:
    from trio_typing import TaskStatus

log = logging.getLogger(__name__)

BATCH = 64
IDLE_S = 60.0
WARNING_STATUSES = frozenset({0x0001, 0xB000, 0xB006, 0xB007})
CONNECT_TIMEOUT_S = 10
ACSE_TIMEOUT_S = 30
DIMSE_TIMEOUT_S = 120


def backoff(dest: PacsDestination) -> Backoff:
    """Between attempts to a PACS: 2 s doubling up to the destination's retry_max_seconds."""
    return Backoff(base=2.0, factor=2.0, cap=float(dest.retry_max_s))


@dataclass
class BatchOutcome:
    results: list[ForwardResult] = field(default_factory=list)
    unreachable: str = ""  # why the destination could not take the rest (empty: it could)


class Forwarder:
    def __init__(self, db: DatabaseThread, state: GatewayStore, blocks: BlockStore,
                 destinations: Sequence[PacsDestination], calling_ae: str, audit: AuditFn, tmp_dir: Path,
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.state = state
        self.blocks = blocks
        self.destinations = tuple(destinations)
        self.calling_ae = calling_ae
        self.audit = audit
        self.tmp_dir = tmp_dir
        self.clock = clock
        self._wake = {d.name: trio.Event() for d in self.destinations}
        self._stopping = threading.Event()
        self.unreachable: dict[str, str] = {}  # destination -> why, while it is
        #: told (manifest, destination, error, instances) when instances failed for good (webhooks, metrics)
        self.failed_hook: Callable[[CID, str, str, int], Awaitable[None]] | None = None

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def wake(self) -> None:
        for event in self._wake.values():
            event.set()

    # -- the lifecycle of a received study -------------------------------------------------------
    async def enqueue(self, signed: Signed[Manifest]) -> int:
        """Queue a verified study for every destination that takes studies from its sender."""
        manifest = signed.document
        instances = [ForwardInstance(i.sop_instance_uid, i.digest) for i in manifest.instances]
        now = self._now_ms()
        queued = 0
        for dest in self.destinations:
            if dest.from_orgs and manifest.sender_org not in dest.from_orgs:
                continue
            queued += await self.db.run(partial(self._enqueue, signed.cid, manifest, dest.name, instances, now))
        return queued

    def _enqueue(self, manifest_id: CID, manifest: Manifest, destination: str, instances: list[ForwardInstance],
                 now: int, _: object) -> int:
        return self.state.enqueue_forward(manifest_id, manifest.study_uid, destination, manifest.priority.rank,
                                          instances, now)

    async def release(self, manifest_id: CID) -> None:
        """The receipt was sent: forward the study now."""
        if await self.db.run(lambda _: self.state.release_forward(manifest_id, self._now_ms())):
            self.wake()

    async def cancel(self, manifest_id: CID) -> None:
        progress = await self.db.run(lambda _: self.state.forward_progress(manifest_id))
        cancelled = await self.db.run(lambda _: self.state.cancel_forward(manifest_id, self._now_ms()))
        sent = {dest: p.sent for dest, p in progress.items() if p.sent}
        if sent:
            log.warning("manifest %s was recalled after %s instance(s) had been forwarded (%s): remove them from "
                        "the PACS by hand", manifest_id, sum(sent.values()), ", ".join(sorted(sent)))
            await self.audit(AuditEvent(EventCode.INSTANCES_TRANSFERRED, "forward-recalled", Outcome.MINOR_FAILURE,
                                        manifest_id=str(manifest_id),
                                        detail=f"recalled after forwarding to {', '.join(sorted(sent))}; "
                                               f"{cancelled} item(s) not yet sent cancelled"))

    async def retry(self, manifest_id: CID | None, destination: str | None) -> int:
        n = await self.db.run(lambda _: self.state.retry_forward(manifest_id, destination, self._now_ms()))
        self.wake()
        return n

    # -- the service -------------------------------------------------------------------------------
    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self._reconcile()
        try:
            async with trio.open_nursery() as nursery:
                for dest in self.destinations:
                    nursery.start_soon(keep_running, f"forward to {dest.name}", partial(self._loop, dest))
                task_status.started()
        finally:
            self._stopping.set()

    async def _reconcile(self) -> None:
        """Items still waiting for a receipt that was sent before a crash are released."""

        def find(store: MetadataStore) -> list[CID]:
            out = []
            for manifest_id in self.state.waiting_manifests():
                row = store.manifest(manifest_id)
                if row is not None and row.state is ManifestState.RECEIPTED:
                    out.append(manifest_id)
                elif row is not None and row.state is ManifestState.RECALLED:
                    self.state.cancel_forward(manifest_id, self._now_ms())
            return out

        for manifest_id in await self.db.run(find):
            await self.release(manifest_id)

    async def _loop(self, dest: PacsDestination) -> None:
        failures = 0
        while True:
            wake = self._wake[dest.name] = trio.Event()
            now = self._now_ms()
            due = await self.db.run(lambda _: self.state.forward_due(dest.name, now, BATCH))
            if not due:
                nxt = await self.db.run(lambda _: self.state.next_forward_ms(dest.name))
                delay = IDLE_S if nxt is None else max(0.05, (nxt - self._now_ms()) / 1000)
                with trio.move_on_after(min(delay, IDLE_S)):
                    await wake.wait()
                continue
            records = await self.db.run(partial(_records_for, items=due))
            outcome = await trio.to_thread.run_sync(partial(self._send_batch, dest, due, records),
                                                    abandon_on_cancel=True)  # type: ignore[call-arg]
            now = self._now_ms()
            if outcome.results:
                await self.db.run(lambda _: self.state.record_forward(outcome.results, now))
                await self._audit_batch(dest, due, outcome.results)
            if outcome.unreachable:
                failures += 1
                retry = now + int(1000 * backoff(dest).delay(failures))
                if dest.name not in self.unreachable or failures == 1:
                    log.warning("PACS %s (%s@%s:%d) unreachable: %s; retrying", dest.name, dest.ae_title, dest.host,
                                dest.port, outcome.unreachable)
                self.unreachable[dest.name] = outcome.unreachable
                await self.db.run(lambda _: self.state.defer_forward(dest.name, retry, outcome.unreachable, now))
            else:
                if dest.name in self.unreachable:
                    log.info("PACS %s reachable again", dest.name)
                failures = 0
                self.unreachable.pop(dest.name, None)

    # -- one association (worker thread) ----------------------------------------------------------
    def _send_batch(self, dest: PacsDestination, items: list[ForwardItem],
                    records: dict[tuple[str, bytes], InstanceRecord]) -> BatchOutcome:
        outcome = BatchOutcome()
        now = self._now_ms()
        sendable: list[tuple[ForwardItem, InstanceRecord]] = []
        for item in items:
            rec = records.get((item.sop_instance_uid, item.digest))
            if rec is None:
                outcome.results.append(self._result(item, ForwardState.FAILED, "instance no longer stored here",
                                                    None, item.attempts + 1, now))
            else:
                sendable.append((item, rec))
        contexts = requested_contexts(rec for _, rec in sendable)
        if len(contexts) > MAX_CONTEXTS:  # keep what fits in one association; the rest go in a later batch
            kept = contexts[:MAX_CONTEXTS]
            classes = {sop for sop, _ in kept}
            sendable = [(i, r) for i, r in sendable if r.sop_class_uid in classes
                        and (r.sop_class_uid, syntaxes_to_propose(r.transfer_syntax)[:1]) in kept]
            contexts = kept
        if not sendable:
            return outcome
        ae = AE(ae_title=dest.calling_ae_title or self.calling_ae)
        ae.connection_timeout = CONNECT_TIMEOUT_S
        ae.acse_timeout = ACSE_TIMEOUT_S
        ae.dimse_timeout = DIMSE_TIMEOUT_S
        ae.network_timeout = DIMSE_TIMEOUT_S
        for sop_class, syntaxes in contexts:
            ae.add_requested_context(sop_class, syntaxes)
        try:
            assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
        except (OSError, RuntimeError, ValueError) as exc:
            outcome.unreachable = f"cannot connect: {exc}"
            return outcome
        if not assoc.is_established:
            outcome.unreachable = ("association rejected by the PACS" if assoc.is_rejected
                                   else "no association (connection refused, closed or timed out)")
            return outcome
        install_raw_sending(assoc, self.tmp_dir)
        try:
            for item, rec in sendable:
                if self._stopping.is_set():
                    break
                try:
                    data = read_instance(self.blocks, rec)
                except MeshError as exc:
                    outcome.results.append(self._result(item, ForwardState.FAILED, f"local: {exc.name}: {exc}",
                                                        None, item.attempts + 1, now))
                    continue
                try:
                    status = assoc.send_c_store(RawInstance(rec, data))
                except (ValueError, RuntimeError, AttributeError) as exc:
                    if not assoc.is_established:
                        outcome.unreachable = f"association lost: {exc}"
                        break
                    outcome.results.append(self._failure(dest, item, f"not sent: {exc}", None, now))
                    continue
                code = getattr(status, "Status", None)
                if code is None:
                    outcome.unreachable = "no C-STORE response (timed out or association aborted)"
                    break
                if code == 0x0000 or code in WARNING_STATUSES:
                    note = "" if code == 0 else f"stored with warning 0x{code:04X}"
                    outcome.results.append(self._result(item, ForwardState.SENT, note, code, item.attempts + 1, now))
                else:
                    comment = str(getattr(status, "ErrorComment", "") or "")
                    outcome.results.append(self._failure(dest, item, f"PACS refused it: 0x{code:04X} {comment}".strip(),
                                                         code, now))
        finally:
            if assoc.is_established:
                assoc.release()
        return outcome

    @staticmethod
    def _result(item: ForwardItem, state: ForwardState, error: str, status: int | None, attempts: int,
                next_ms: int) -> ForwardResult:
        return ForwardResult(item.manifest_id, item.destination, item.sop_instance_uid, state, attempts, next_ms,
                             error, status)

    def _failure(self, dest: PacsDestination, item: ForwardItem, error: str, status: int | None,
                 now: int) -> ForwardResult:
        attempts = item.attempts + 1
        if attempts >= dest.max_attempts:
            return self._result(item, ForwardState.FAILED, error, status, attempts, now)
        retry = now + int(1000 * backoff(dest).delay(attempts))
        return self._result(item, ForwardState.PENDING, error, status, attempts, retry)

    async def _audit_batch(self, dest: PacsDestination, items: list[ForwardItem],
                           results: list[ForwardResult]) -> None:
        by_study: dict[str, list[ForwardResult]] = {}
        study_of = {(i.manifest_id, i.sop_instance_uid): i.study_uid for i in items}
        manifest_of: dict[str, CID] = {}
        for r in results:
            study = study_of.get((r.manifest_id, r.sop_instance_uid), "")
            by_study.setdefault(study, []).append(r)
            manifest_of[study] = r.manifest_id
        for study, rs in by_study.items():
            sent = sum(1 for r in rs if r.state is ForwardState.SENT)
            failed = len(rs) - sent
            await self.audit(AuditEvent(
                EventCode.INSTANCES_TRANSFERRED, "forward", Outcome.SUCCESS if not failed else Outcome.MINOR_FAILURE,
                actor=self.calling_ae, study=hash_uid(study), manifest_id=str(manifest_of[study]),
                detail=f"{sent} of {len(rs)} instance(s) stored into PACS {dest.name} "
                       f"({dest.ae_title}@{dest.host}:{dest.port})" + (f"; {failed} not stored" if failed else "")))
            given_up = [r for r in rs if r.state is ForwardState.FAILED]
            if given_up and self.failed_hook is not None:
                await self.failed_hook(manifest_of[study], dest.name, given_up[0].last_error, len(given_up))


def _records_for(store: MetadataStore, items: Sequence[ForwardItem]) -> dict[tuple[str, bytes], InstanceRecord]:
    """The stored instance records of the items, by (SOP Instance UID, digest)."""
    out: dict[tuple[str, bytes], InstanceRecord] = {}
    for study in {i.study_uid for i in items}:
        for rec in store.instances(study):
            out[(rec.sop_instance_uid, rec.digest)] = rec
    return out


def progress_json(progress: ForwardProgress) -> dict[str, object]:
    """A ForwardProgress as the control API shows it."""
    return {"state": progress.state, "total": progress.total, "sent": progress.sent, "pending": progress.pending,
            "waiting": progress.waiting, "failed": progress.failed, "cancelled": progress.cancelled,
            "last_error": progress.last_error}
