"""The conflict desk: the running node's conflict queue, as the CLI, the control API and HTTP see it.

    desk = ConflictDesk(ctx.db, ctx.storage, intake, announcer, gateway_state, routes, forwarder)
    rows = await desk.list()                                  # pending and decided, oldest first
    row = await desk.decide(7, Decision.REPLACE, "user:alice")  # audited with the deciding user

A decision (meshnode.storage.conflicts.ConflictStore.decide_conflict) commits with its audit entry
(110113) and, for an instance that came on a route, the route's announcement reopened: the study's
next manifest revision carries what was decided. KEEP_BOTH first re-encodes the held newcomer under a
new UID (meshnode.study.renaming) on a worker thread, its blocks durable before the decision commits.
A conflict of kind pacs:<destination> decided REPLACE puts the forward item back in its PACS queue.

Policy keep-both decides by itself: the intake wakes the desk after a commit that held conflicts, and
the desk decides every pending keep-both conflict (also at start: one whose decision a crash
interrupted is decided then).
"""

from __future__ import annotations

import builtins
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import trio

from meshnode.dicom.blocks import DEFAULT_CHUNK_SIZE
from meshnode.gateway.forward_conflicts import HELD_HERE, not_forwarded
from meshnode.gateway.pacs_queue import KEYS, ForwardKey, queue_name
from meshnode.storage.conflicts import (
    KIND_STORE,
    PACS_KIND_PREFIX,
    ConflictRow,
    check_applicable,
)
from meshnode.storage.dbthread import DatabaseThread
from meshnode.storage.gateway_store import Arrival, GatewayStore
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.node_storage import NodeStorage
from meshnode.storage.records import InstanceRecord, hash_uid
from meshnode.storage.retry_queue import QueuedRow
from meshnode.study.renaming import fresh_uid, store_renamed
from protocol.cid import CID
from protocol.conflict import ConflictPolicy, ConflictState, Decision
from protocol.errors import MeshError
from protocol.outbox import DeliveryState

if TYPE_CHECKING:
    from trio_typing import TaskStatus

    from meshnode.gateway.announcer import StudyAnnouncer
    from meshnode.gateway.forwarder import Forwarder
    from meshnode.gateway.reconciler import Reconciler
    from meshnode.gateway.routes import RouteTable

log = logging.getLogger(__name__)

POLICY_ACTOR = "policy:keep-both"


class ConflictDesk:
    def __init__(self, db: DatabaseThread, storage: NodeStorage, gateway: GatewayStore,
                 announcer: StudyAnnouncer | None, routes: RouteTable, forwarder: Forwarder | None = None,
                 clock: Callable[[], float] = time.time, reconciler: Reconciler | None = None) -> None:
        self.db = db
        self.storage = storage
        self.gateway = gateway
        self.announcer = announcer
        self.routes = routes
        self.forwarder = forwarder
        self.clock = clock
        #: patient reconciliation: a decision admitting a held instance of a received manifest has it decided
        #: again before it is forwarded (review 2 findings 3, 4)
        self.reconciler = reconciler
        self._wake = trio.Event()
        self._lock = trio.Lock()  # one decision at a time: a keep-both's re-encoding and its commit

    def wake(self) -> None:
        """Conflicts were held (the intake, on the trio loop): apply keep-both now."""
        self._wake.set()

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            try:
                await self.apply_keep_both()
            except MeshError as exc:  # a held instance that cannot be re-encoded stays pending, for a human
                log.error("keep-both: %s", exc)
            await self._wake.wait()
            self._wake = trio.Event()

    async def apply_keep_both(self) -> int:
        """Decide every pending conflict held under policy keep-both. Returns how many."""
        rows = await self.db.run(lambda s: s.conflicts(ConflictState.PENDING))
        n = 0
        for row in rows:
            if row.policy is ConflictPolicy.KEEP_BOTH and row.kind == KIND_STORE:
                await self.decide(row.conflict_id, Decision.KEEP_BOTH, POLICY_ACTOR)
                n += 1
        return n

    async def list(self, state: ConflictState | None = None) -> list[ConflictRow]:
        return await self.db.run(lambda s: s.conflicts(state))

    async def decide(self, conflict_id: int, decision: Decision, actor: str,
                     expected_existing: bytes | None = None) -> ConflictRow:
        """Apply a decision; ConflictError (nothing changed) for an unknown, decided or unfitting conflict,
        one whose manifest was recalled, or one whose stored version is not `expected_existing` (the sha256
        the deciding user saw, when given) or changed since it was held (compare-and-set)."""
        async with self._lock:
            row = await self.db.run(lambda s: s.conflict(conflict_id))
            renamed: InstanceRecord | None = None
            if decision is Decision.KEEP_BOTH:
                placeholder = replace(row.newcomer, sop_instance_uid="2.25.0") if row and row.newcomer else None
                row = check_applicable(row, conflict_id, decision, placeholder)  # refused before any work
                if row.newcomer is not None:
                    renamed = await trio.to_thread.run_sync(store_renamed, self.storage, row.newcomer, fresh_uid(),
                                                            DEFAULT_CHUNK_SIZE, row.source)
            now_ms = int(self.clock() * 1000)
            readmitted: builtins.list[bool] = []
            reopened: dict[str, builtins.list[str]] = {}
            done = await self.db.run(lambda s: self._commit(s, conflict_id, decision, actor, renamed, now_ms,
                                                            expected_existing, readmitted, reopened))
        log.info("conflict %d (%s) decided %s by %s", conflict_id, hash_uid(done.sop_instance_uid),
                 decision.value, actor)
        await self._after(done, decision, now_ms, again=any(readmitted), reopened=reopened)
        if any(readmitted):
            await self._decide_again(done, decision, actor)
        return done

    def _admit(self, store: MetadataStore, done: ConflictRow, decision: Decision,
               renamed: InstanceRecord | None) -> bool:
        """Database thread: a held instance of a received manifest let in goes through reconciliation first;
        True when the manifest is to be decided again (its held forward items are dropped, queued anew once
        it is matched)."""
        if self.reconciler is None or done.kind != KIND_STORE or not done.manifest_id \
                or decision is Decision.DISCARD:
            return False
        manifest_id = CID.parse(done.manifest_id)
        if not self.reconciler.instances_admitted(store, manifest_id, renamed):
            return False
        if decision is Decision.REPLACE and self.forwarder is not None:
            key = KEYS.encode(ForwardKey(manifest_id, done.sop_instance_uid, done.newcomer_digest))
            for name in self.forwarder.drivers:
                store.queue_remove(queue_name(name), [key])
        return True

    async def _decide_again(self, done: ConflictRow, decision: Decision, actor: str) -> None:
        """After the commit of a decision that sent its manifest back to reconciliation: decide it now
        (forwarded only when matched again: Forwarder.release, or settle without a PACS)."""
        assert self.reconciler is not None  # _admit returned True
        manifest_id = CID.parse(done.manifest_id)
        await self.reconciler.admitted(manifest_id, actor)
        if self.forwarder is None:
            await self.reconciler.settle(manifest_id)
            return
        if decision is Decision.REPLACE:
            key = ForwardKey(manifest_id, done.sop_instance_uid, done.newcomer_digest)
            for driver in self.forwarder.drivers.values():
                driver.forget([key])
        await self.forwarder.release(manifest_id)

    def _commit(self, store: MetadataStore, conflict_id: int, decision: Decision, actor: str,
                renamed: InstanceRecord | None, now_ms: int, expected_existing: bytes | None = None,
                readmitted: builtins.list[bool] | None = None,
                reopened: dict[str, builtins.list[str]] | None = None) -> ConflictRow:
        """Database thread: the decision, its audit entry, and the route's announcement (or the PACS item)
        reopened, in one transaction when the gateway store shares the metadata store's connection. The
        forward items this write made pending go into `reopened` (destination -> keys)."""
        with store.atomic():
            done = store.decide_conflict(conflict_id, decision, actor, [], now_ms, renamed=renamed,
                                         expected_existing=expected_existing)
            route = self.routes.get(done.route) if done.route else None
            if done.kind == KIND_STORE and route is not None and decision is not Decision.DISCARD:
                arrival = Arrival(done.study_uid, route.name, 1)
                if self.announcer is not None and self.gateway.writes_with(store):
                    self.announcer.note(store, [arrival], now_ms)
            again = self._admit(store, done, decision, renamed)
            if again and readmitted is not None:
                readmitted.append(True)
            found: dict[str, builtins.list[str]] = {}
            if again and decision is Decision.REPLACE:
                pass  # queued anew once matched again (_admit dropped the held items)
            elif done.kind.startswith(PACS_KIND_PREFIX) and done.manifest_id:
                found = self._reopen_forward(store, done, decision, [done.kind[len(PACS_KIND_PREFIX):]])
            elif done.kind == KIND_STORE and done.manifest_id and self.forwarder is not None:
                # a received instance held on arrival: its forward items (FAILED, HELD_HERE) in every PACS queue
                found = self._reopen_forward(store, done, decision, list(self.forwarder.drivers), renamed, now_ms)
            if reopened is not None:
                reopened.update(found)
        self.storage.write_head()
        return done

    @staticmethod
    def _reopen_forward(store: MetadataStore, done: ConflictRow, decision: Decision,
                        destinations: Sequence[str], renamed: InstanceRecord | None = None,
                        now_ms: int = 0) -> dict[str, builtins.list[str]]:
        """The held forward items of the decided instance, per destination: reopened (replace) or saying why
        not sent. Kept both: the renamed instance (added to the study) is queued for every destination that
        held the manifest's item, under that manifest (its reconciliation applies). Returns the keys made
        pending here, per destination (the running drivers take exactly these on again: RetryDriver.reopen)."""
        key = ForwardKey(CID.parse(done.manifest_id), done.sop_instance_uid, done.newcomer_digest)
        pending: dict[str, builtins.list[str]] = {}
        for destination in destinations:
            queue = queue_name(destination)
            # held on arrival: every manifest listing these bytes (a later revision sending them again too)
            rows = [r for r in store.queue_rows(queue, ref=KEYS.ref(key)) if r.key == KEYS.encode(key)
                    or (done.kind == KIND_STORE and r.state is DeliveryState.FAILED and r.last_error == HELD_HERE)]
            _reopen_rows(store, rows, done, decision)
            keys = [r.key for r in rows] if decision is Decision.REPLACE else []
            mine = [r for r in rows if r.key == KEYS.encode(key)]
            if decision is Decision.KEEP_BOTH and renamed is not None and mine:
                new = ForwardKey(key.manifest_id, renamed.sop_instance_uid, renamed.digest)
                keys += store.queue_add([QueuedRow(queue, KEYS.encode(new), KEYS.ref(new), DeliveryState.PENDING, 0,
                                                   now_ms, now_ms, "", mine[0].payload)])
            if keys:
                pending[destination] = keys
        return pending


    async def _after(self, done: ConflictRow, decision: Decision, now_ms: int, again: bool = False,
                     reopened: dict[str, builtins.list[str]] | None = None) -> None:
        """After the commit: the announcer's timer; each PACS driver takes on again exactly the forward items
        the commit made pending (`reopened`, from _reopen_forward), also those it holds as FAILED (held on
        arrival, or held as a PACS conflict, since the node started)."""
        route = self.routes.get(done.route) if done.route else None
        announcer = self.announcer
        if done.kind == KIND_STORE and route is not None and decision is not Decision.DISCARD \
                and announcer is not None:
            arrival = Arrival(done.study_uid, route.name, 1)
            if not self.gateway.writes_with(self.storage.metadata):
                await self.db.run(lambda s: announcer.note(s, [arrival], now_ms))
            announcer.arrived(done.study_uid, route.name, now_ms / 1000)
        if self.forwarder is None or again:  # sent back to reconciliation: forwarded once matched (_decide_again)
            return
        for name, keys in sorted((reopened or {}).items()):
            driver = self.forwarder.drivers.get(name)
            if driver is not None:
                await driver.reopen([KEYS.decode(k) for k in keys])


def _reopen_rows(store: MetadataStore, rows: list[QueuedRow], done: ConflictRow, decision: Decision) -> None:
    """REPLACE: the held forward items are sent now; otherwise they stay failed, saying why."""
    if decision is Decision.REPLACE:
        store.queue_reopen([replace(r, state=DeliveryState.PENDING, attempts=0) for r in rows])
    else:
        note = not_forwarded(decision is Decision.DISCARD, done.decided_by)
        store.queue_save([replace(r, last_error=note) for r in rows])
