"""Auto-forward: every received study, once verified and receipted, is stored into the local PACS.

The queue is the node's shared durable retry queue (meshnode.gateway.pacs_queue:
one `pacs:<destination>` queue, one item per manifest and instance, the states
of protocol.outbox.DeliveryState), driven per [[pacs]] destination by a
meshnode.node.retry_driver.RetryDriver in batch mode: the due items of a
destination go in one association (at most BATCH), as the bytes the node holds
(meshnode.gateway.dimse.sending):

- the PACS cannot be reached or refuses the association: the batch's items are
  put back without counting an attempt (Outbox.postpone), 2 s doubling up to
  retry_max_seconds, for ever;
- the PACS answers a C-STORE with a failure status: a transient one (out of
  resources, processing failure) is retried with back-off and failed after
  max_attempts, any other fails at once; `meshnode gateway retry` queues failed
  items again; warning statuses count as stored;
- each batch is audited (Instances Transferred, 110104), per study.

Lifecycle of a study: nothing is queued until its receipt is delivered; the
receipt's delivery queues it in the same database call (`queue_write`, wired by
the node runtime), `release` then hands it to the driver (and queues it itself
if needed: idempotent); `cancel` on recall removes what was not sent.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import trio
from pynetdicom import AE

from meshnode.gateway.coercion import Coercion, forwarded_bytes
from meshnode.gateway.config import PacsDestination
from meshnode.gateway.dimse.bridge import AuditFn
from meshnode.gateway.forward_conflicts import HELD_MARK
from meshnode.gateway.dimse.sending import (
    MAX_CONTEXTS,
    RawInstance,
    install_raw_sending,
    read_instance,
    requested_contexts,
    syntaxes_to_propose,
)
from meshnode.gateway.pacs_queue import (
    KEYS,
    ForwardKey,
    ForwardProgress,
    counts,
    manifest_prefix,
    progress,
    queue_name,
    queue_received,
    urgency,
)
from meshnode.node.retry_driver import (
    BatchMode,
    BatchOutcome,
    Database,
    Failure,
    RetryDriver,
    RetryPolicy,
)
from meshnode.storage.audit import AuditEvent, EventCode, Outcome
from meshnode.storage.blockstore import BlockStore
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.records import InstanceRecord, hash_uid
from meshnode.storage.retry_queue import QueuedRow
from protocol.backoff import Backoff
from protocol.cid import CID
from protocol.errors import MeshError
from protocol.outbox import DeliveryState

if TYPE_CHECKING:
    from trio_typing import TaskStatus

    from meshnode.gateway.reconciler import Reconciler

log = logging.getLogger(__name__)

BATCH = 64
#: an item of a manifest reconciliation holds back, refused at send time (queued by some other path)
HELD_RECONCILIATION = HELD_MARK + "its study waits for patient reconciliation (decide with `meshnode reconcile`)"
WARNING_STATUSES = frozenset({0x0001, 0xB000, 0xB006, 0xB007})
#: C-STORE failures worth retrying: out of resources (A7xx), processing failure, resource limitation
TRANSIENT_STATUSES = frozenset({0x0110, 0x0213})
CONNECT_TIMEOUT_S = 10
ACSE_TIMEOUT_S = 30
DIMSE_TIMEOUT_S = 120
#: a batch's bound (pynetdicom's own timeouts end each step sooner)
BATCH_TIMEOUT_S = CONNECT_TIMEOUT_S + ACSE_TIMEOUT_S + BATCH * DIMSE_TIMEOUT_S

#: one association: the keys' outcomes (meshnode.node.retry_driver.BatchOutcome)
SendFn = Callable[[PacsDestination, Sequence[ForwardKey]], Awaitable[BatchOutcome[ForwardKey]]]


def backoff(dest: PacsDestination) -> Backoff:
    """Between attempts to a PACS: 2 s doubling up to the destination's retry_max_seconds."""
    return Backoff(base=2.0, factor=2.0, cap=float(dest.retry_max_s))


def _destination(name: str, _key: ForwardKey) -> str:
    """A destination's driver has one group: the destination."""
    return name


def _rows(store: MetadataStore, queue: str, key_prefix: str) -> list[QueuedRow]:
    return store.queue_rows(queue, key_prefix=key_prefix)


def _classify(exc: BaseException) -> Failure | None:
    if isinstance(exc, MeshError):
        return Failure(f"{exc.name}: {exc}", False)
    return None


class Forwarder:
    def __init__(self, db: Database, blocks: BlockStore | None, destinations: Sequence[PacsDestination],
                 calling_ae: str, audit: AuditFn, tmp_dir: Path, clock: Callable[[], float] = time.time, *,
                 rng: random.Random | None = None, send: SendFn | None = None, jitter: float = 0.2) -> None:
        self.db = db
        self.blocks = blocks
        self.destinations = tuple(destinations)
        self.calling_ae = calling_ae
        self.audit = audit
        self.tmp_dir = tmp_dir
        self.clock = clock
        self._send = send or self._send_dimse
        self._stopping = threading.Event()
        self.drivers: dict[str, RetryDriver[ForwardKey]] = {}
        for dest in self.destinations:
            policy = RetryPolicy(backoff(dest), attempt_timeout=BATCH_TIMEOUT_S, max_attempts=dest.max_attempts,
                                 jitter=jitter, concurrency=1)
            self.drivers[dest.name] = RetryDriver(
                queue_name(dest.name), KEYS, db, clock, None, _classify, policy=policy, rng=rng,
                batch=BatchMode(group=partial(_destination, dest.name), attempt=partial(self._attempt, dest), size=BATCH,
                                rank=urgency, after=partial(self._after_batch, dest)))
        #: told (manifest, destination, error, instances) when instances failed for good (webhooks, metrics)
        self.failed_hook: Callable[[CID, str, str, int], Awaitable[None]] | None = None
        #: told (manifest) after each batch that sent or failed some of its items: the forward report to the
        #: study's sender, once every reporting destination has ended (meshnode.node.forward_reports)
        self.report_hook: Callable[[CID], Awaitable[None]] | None = None
        #: patient reconciliation ([reconciliation] enabled): a study is queued only once matched, and
        #: forwarded as the reconciled copy (meshnode.gateway.reconciler, meshnode.gateway.coercion)
        self.reconciler: Reconciler | None = None

    @staticmethod
    def refusal(code: int, comment: str) -> Failure:
        """A C-STORE failure status: transient (retried up to max_attempts) or not (failed at once)."""
        transient = (code & 0xFF00) == 0xA700 or code in TRANSIENT_STATUSES
        return Failure(f"PACS refused it: 0x{code:04X} {comment}".strip(), not transient)

    @property
    def unreachable(self) -> dict[str, str]:
        """Destination -> why, while it cannot be reached."""
        return {name: why for name, d in self.drivers.items() for why in d.unreachable.values()}

    # -- the lifecycle of a received study -------------------------------------------------------
    def queue_write(self, store: MetadataStore, manifest_id: CID, *, receipt_delivered: bool = True) -> None:
        """In the database call that records the receipt delivered: queue the study (database thread). A stored
        manifest that cannot be read is logged and not forwarded: it must not undo the receipt's record."""
        try:
            if self.reconciler is not None and not self.reconciler.gate(store, manifest_id):
                return  # waits for its patient to be reconciled (the reconciler releases it)
            queue_received(store, manifest_id, self.destinations, int(self.clock() * 1000),
                           receipt_delivered=receipt_delivered)
        except MeshError as exc:
            log.error("manifest %s: not forwarded to the PACS, its stored copy is unreadable: %s", manifest_id, exc)

    async def release(self, manifest_id: CID) -> int:
        """The receipt was delivered: forward the study now (queued here if the receipt's write did not).
        Returns how many items were newly handed to the drivers."""
        await self.db.run(partial(self.queue_write, manifest_id=manifest_id, receipt_delivered=False))
        if self.reconciler is not None:
            if not await self.reconciler.settle(manifest_id):
                return 0
            await self.db.run(partial(self.queue_write, manifest_id=manifest_id, receipt_delivered=False))
        added = 0
        for driver in self.drivers.values():
            added += len(await driver.adopt(manifest_prefix(manifest_id)))
            held = [r.key for r in driver.records() if r.state is DeliveryState.FAILED
                    and r.key.manifest_id == manifest_id and r.last_error == HELD_RECONCILIATION]
            if held:  # held at send time while it waited: matched now
                added += await driver.retry(held)
        if not added:  # nothing to send (every item already held or sent): no batch will report it
            await self._report(manifest_id)
        return added

    async def _report(self, manifest_id: CID) -> None:
        if self.report_hook is not None:
            try:
                await self.report_hook(manifest_id)
            except MeshError as exc:  # the forward itself is done: a report that cannot be made is logged
                log.error("manifest %s: forward report not queued: %s", manifest_id, exc)

    async def cancel(self, manifest_id: CID) -> None:
        """The manifest was recalled: what was not sent is removed (a batch in progress still ends)."""
        prefix = manifest_prefix(manifest_id)
        sent: dict[str, int] = {}
        removed = 0
        for name, driver in self.drivers.items():
            rows = await self.db.run(partial(_rows, queue=driver.queue, key_prefix=prefix))
            live = [KEYS.decode(r.key) for r in rows if r.state is not DeliveryState.DELIVERED]
            n_sent = sum(1 for r in rows if r.state is DeliveryState.DELIVERED)
            if n_sent:
                sent[name] = n_sent
            if live:
                await driver.remove(live)
                removed += len(live)
        if sent:
            log.warning("manifest %s was recalled after %s instance(s) had been forwarded (%s): remove them from "
                        "the PACS by hand", manifest_id, sum(sent.values()), ", ".join(sorted(sent)))
            await self.audit(AuditEvent(EventCode.INSTANCES_TRANSFERRED, "forward-recalled", Outcome.MINOR_FAILURE,
                                        manifest_id=str(manifest_id),
                                        detail=f"recalled after forwarding to {', '.join(sorted(sent))}; "
                                               f"{removed} item(s) not yet sent cancelled"))

    async def retry(self, manifest_id: CID | None, destination: str | None) -> int:
        """Operator: failed items (of one manifest / destination, or all) are queued again."""
        n = 0
        for name, driver in self.drivers.items():
            if destination is not None and name != destination:
                continue
            keys = [r.key for r in driver.records() if r.state is DeliveryState.FAILED
                    and (manifest_id is None or r.key.manifest_id == manifest_id)
                    and not r.last_error.startswith(HELD_MARK)]  # held for a person: `meshnode conflicts`
            if keys:
                n += await driver.retry(keys)
        return n

    # -- what the operator sees (database thread) --------------------------------------------------
    def progress(self, store: MetadataStore, manifest_id: CID) -> dict[str, ForwardProgress]:
        return progress(store, manifest_id, self.destinations)

    def counts(self, store: MetadataStore) -> dict[str, dict[str, int]]:
        return counts(store)

    # -- the service -------------------------------------------------------------------------------
    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                for driver in self.drivers.values():
                    await nursery.start(driver.run)
                if self.reconciler is not None:  # decided after a restart: arrived, or matched and not queued
                    for manifest_id in await self.reconciler.unsettled(self.destinations):
                        nursery.start_soon(self._release_logged, manifest_id)
                task_status.started()
        finally:
            self._stopping.set()

    async def _release_logged(self, manifest_id: CID) -> None:
        try:
            await self.release(manifest_id)
        except MeshError as exc:
            log.error("manifest %s: not released to the PACS after a restart: %s", manifest_id, exc)

    async def _attempt(self, dest: PacsDestination, _group: str,
                       items: Sequence[tuple[ForwardKey, bytes | None]]) -> BatchOutcome[ForwardKey]:
        return await self._send(dest, [k for k, _ in items])

    async def _send_dimse(self, dest: PacsDestination, keys: Sequence[ForwardKey]) -> BatchOutcome[ForwardKey]:
        records = await self.db.run(partial(_records_for, keys=keys))
        coercions: dict[CID, Coercion] = {}
        blocked: dict[ForwardKey, Failure | None] = {}
        if self.reconciler is not None:
            reconciler = self.reconciler
            manifests = [k.manifest_id for k in keys]
            coercions = await self.db.run(partial(reconciler.coercions, manifest_ids=manifests))
            # whatever queued it: an item of a manifest not matched is never sent (held until it is: release)
            held = await self.db.run(partial(reconciler.unmatched, manifest_ids=manifests))
            blocked = {k: Failure(HELD_RECONCILIATION, True) for k in keys if k.manifest_id in held}
            if blocked:
                log.warning("PACS %s: %d item(s) of studies waiting for patient reconciliation held, not sent",
                            dest.name, len(blocked))
                keys = [k for k in keys if k not in blocked]
        outcome: BatchOutcome[ForwardKey] = BatchOutcome()
        if keys:
            outcome = await trio.to_thread.run_sync(partial(self._send_batch, dest, keys, records, coercions),
                                                    abandon_on_cancel=True)  # type: ignore[call-arg]
        outcome.results.update(blocked)
        return outcome

    async def _after_batch(self, dest: PacsDestination, _group: str, keys: Sequence[ForwardKey],
                           outcome: BatchOutcome[ForwardKey]) -> None:
        if not outcome.results:
            return
        driver = self.drivers[dest.name]
        by_manifest: dict[CID, list[ForwardKey]] = {}
        for key in outcome.results:
            by_manifest.setdefault(key.manifest_id, []).append(key)
        studies = await self.db.run(lambda s: {m: (row.study_uid if (row := s.manifest(m)) is not None else "")
                                               for m in by_manifest})
        for manifest_id, ks in by_manifest.items():
            failures = [outcome.results[k] for k in ks if outcome.results[k] is not None]
            sent = len(ks) - len(failures)
            await self.audit(AuditEvent(
                EventCode.INSTANCES_TRANSFERRED, "forward", Outcome.SUCCESS if not failures else Outcome.MINOR_FAILURE,
                actor=self.calling_ae, study=hash_uid(studies.get(manifest_id, "")), manifest_id=str(manifest_id),
                detail=f"{sent} of {len(ks)} instance(s) stored into PACS {dest.name} "
                       f"({dest.ae_title}@{dest.host}:{dest.port})" + (f"; {len(failures)} not stored"
                                                                       if failures else "")))
            given_up = [r for k in ks if (r := driver.outbox.record(k)) is not None
                        and r.state is DeliveryState.FAILED]
            if given_up and self.failed_hook is not None:
                await self.failed_hook(manifest_id, dest.name, given_up[0].last_error, len(given_up))
            await self._report(manifest_id)

    # -- one association (worker thread) ----------------------------------------------------------
    def _send_batch(self, dest: PacsDestination, keys: Sequence[ForwardKey],
                    records: dict[tuple[str, bytes], InstanceRecord],
                    coercions: dict[CID, Coercion] | None = None) -> BatchOutcome[ForwardKey]:
        outcome: BatchOutcome[ForwardKey] = BatchOutcome()
        results = outcome.results
        if self.blocks is None:
            raise RuntimeError("a forwarder without a block store cannot send")
        sendable: list[tuple[ForwardKey, InstanceRecord]] = []
        for key in keys:
            rec = records.get((key.sop_instance_uid, key.digest))
            if rec is None:
                results[key] = Failure("instance no longer stored here", True)
            else:
                sendable.append((key, rec))
        contexts = requested_contexts(rec for _, rec in sendable)
        if len(contexts) > MAX_CONTEXTS:  # keep what fits in one association; the rest go in a later batch
            kept = contexts[:MAX_CONTEXTS]
            classes = {sop for sop, _ in kept}
            sendable = [(k, r) for k, r in sendable if r.sop_class_uid in classes
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
            return BatchOutcome(results, f"cannot connect: {exc}")
        if not assoc.is_established:
            return BatchOutcome(results, "association rejected by the PACS" if assoc.is_rejected
                                else "no association (connection refused, closed or timed out)")
        install_raw_sending(assoc, self.tmp_dir)
        unreachable = ""
        try:
            for key, rec in sendable:
                if self._stopping.is_set():
                    break
                try:
                    data = forwarded_bytes(read_instance(self.blocks, rec), (coercions or {}).get(key.manifest_id))
                except MeshError as exc:
                    results[key] = Failure(f"local: {exc.name}: {exc}", True)
                    continue
                try:
                    status = assoc.send_c_store(RawInstance(rec, data))
                except (ValueError, RuntimeError, AttributeError) as exc:
                    if not assoc.is_established:
                        unreachable = f"association lost: {exc}"
                        break
                    results[key] = Failure(f"not sent: {exc}", False)
                    continue
                code = getattr(status, "Status", None)
                if code is None:
                    unreachable = "no C-STORE response (timed out or association aborted)"
                    break
                if code == 0x0000 or code in WARNING_STATUSES:
                    if code:
                        log.info("PACS %s stored an instance with warning 0x%04X", dest.name, code)
                    results[key] = None
                else:
                    results[key] = self.refusal(code, str(getattr(status, "ErrorComment", "") or ""))
        finally:
            if assoc.is_established:
                assoc.release()
        return BatchOutcome(results, unreachable)


def _records_for(store: MetadataStore, keys: Sequence[ForwardKey]) -> dict[tuple[str, bytes], InstanceRecord]:
    """The stored instance records of the keys, by (SOP Instance UID, digest)."""
    out: dict[tuple[str, bytes], InstanceRecord] = {}
    studies = set()
    for manifest_id in {k.manifest_id for k in keys}:
        row = store.manifest(manifest_id)
        if row is not None:
            studies.add(row.study_uid)
    for study in studies:
        for rec in store.instances(study):
            out[(rec.sop_instance_uid, rec.digest)] = rec
    return out
