"""The trio driver of a protocol.outbox.Outbox whose records live in the node's database.

One driver per durable retry queue (meshnode.storage.retry_queue). It restores
the outbox from the stored rows not yet delivered, then loops: sleep until the outbox's next due
time (woken early when an item is added or retried), claim the due keys
(`Outbox.due`, at most as many as there is room for: `concurrency` at once),
write the claim, attempt each key (bounded by `attempt_timeout`), report `succeeded` or
`failed(permanent=...)` with a jitter fraction (protocol.delivery_policy.jitter_fraction
of a uniform draw from `random` made here: protocol/ has no randomness), and write what changed (`Outbox.changes`). A delivered item is
then dropped from memory (its row stays, so its key is never queued twice):
memory holds what is still to do, however long the node's history.

Data safety: an item is written to the database before it is added to the
outbox (`enqueue`), so nothing is attempted that a restart would forget; an
attempt cut short by a stop is due again at once after the restart
(`Outbox.restore`). A success hook runs in the same database call that
records the success.

Batch mode (`batch=BatchMode(...)`, for the PACS forwarder: one DICOM
association carries many items) attempts the due keys of one group (a
destination) together, one batch per group at a time (`Outbox.due(where=)`):
the attempt reports each key it tried as succeeded or failed; when the
destination could not be reached at all, the keys it did not try are
postponed (`Outbox.postpone`: the attempt is not counted) by the group's
backoff, which grows with the group's consecutive unreachable batches.

Expected failures (the caller's `expected` exception types: the network, a
refusal) are logged as one line; anything else is a bug and is logged with its
traceback, then counted as a transient failure so the queue keeps moving.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

import trio

from meshnode.storage.metadata import MetadataStore
from meshnode.storage.retry_queue import QueuedRow
from protocol.backoff import Backoff
from protocol.errors import LocalProtocolError, MeshError
from protocol.delivery_policy import DeliveryPolicy, jitter_fraction
from protocol.outbox import DeliveryRecord, DeliveryState, Outbox

if TYPE_CHECKING:
    from trio_typing import TaskStatus

log = logging.getLogger(__name__)

#: The states an item is kept in memory in (FAILED: for an operator's retry).
LIVE = (DeliveryState.PENDING, DeliveryState.ATTEMPTING, DeliveryState.FAILED)

K = TypeVar("K")
T = TypeVar("T")
StoreFn = Callable[[MetadataStore], object]


class Database(Protocol):
    """What the driver needs of meshnode.storage.dbthread.DatabaseThread."""

    async def run(self, fn: Callable[[MetadataStore], T]) -> T: ...


class KeyCodec(Protocol[K]):
    """A queue's keys as text (unique in the queue) and the ref they are looked up by."""

    def encode(self, key: K) -> str: ...

    def decode(self, text: str) -> K: ...

    def ref(self, key: K) -> str: ...


@dataclass(frozen=True)
class RetryPolicy(DeliveryPolicy):
    """A DeliveryPolicy (its defaults: the node's deliveries') and how many attempts run at once."""

    concurrency: int = 32

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.concurrency, bool) or self.concurrency < 1:
            raise LocalProtocolError("concurrency must be >= 1")


@dataclass(frozen=True)
class Failure:
    """An attempt's failure as the attempt function classifies it."""

    error: str
    permanent: bool


@dataclass(frozen=True)
class BatchOutcome(Generic[K]):
    """What one batch attempt came to: for each key attempted, None (succeeded) or its Failure.
    `unreachable`: why the group's destination took none of the rest (empty: it was reached). Keys not
    reported were not attempted: postponed by the group's backoff if unreachable, else due again at once."""

    results: dict[K, Failure | None] = field(default_factory=dict)
    unreachable: str = ""


@dataclass(frozen=True)
class BatchMode(Generic[K]):
    """Attempt the due keys of one group (`group(key)`, e.g. a PACS destination) together, at most `size`."""

    group: Callable[[K], str]
    attempt: Callable[[str, Sequence[tuple[K, bytes | None]]], Awaitable[BatchOutcome[K]]]
    size: int = 64
    #: the backoff after the n-th consecutive unreachable batch of a group (the policy's by default)
    backoff: Callable[[str], Backoff] | None = None
    #: which due keys go first (lowest first, then the oldest due), from the key and its payload
    rank: Callable[[K, bytes | None], int] | None = None
    #: after a batch's outcome is durable (audit, hooks)
    after: Callable[[str, Sequence[K], BatchOutcome[K]], Awaitable[None]] | None = None


#: Attempt one key (its payload given); raise to fail. The classify function says whether an error is
#: expected (a Failure) or a bug (None).
AttemptFn = Callable[[K, "bytes | None"], Awaitable[None]]
ClassifyFn = Callable[[BaseException], "Failure | None"]
#: After an item ended (DELIVERED, or FAILED for good): a write in the same database call, then an action.
EndedFn = Callable[[DeliveryRecord[K], "bytes | None"], "tuple[StoreFn | None, Callable[[], Awaitable[None]] | None]"]

class RetryDriver(Generic[K]):
    def __init__(
        self, queue: str, codec: KeyCodec[K], db: Database, clock: Callable[[], float],
        attempt: AttemptFn[K] | None, classify: ClassifyFn, *, policy: RetryPolicy = RetryPolicy(),
        on_ended: EndedFn[K] | None = None, rng: random.Random | None = None, batch: BatchMode[K] | None = None,
    ) -> None:
        if (attempt is None) == (batch is None):
            raise ValueError("a retry driver attempts one key at a time or in batches: give one of the two")
        self.queue = queue
        self.codec = codec
        self.db = db
        self.clock = clock
        self.policy = policy
        self._attempt_fn = attempt
        self._classify = classify
        self._on_ended = on_ended
        self._batch = batch
        #: batch mode: groups with a batch in progress; consecutive unreachable batches and why, per group
        self._busy: set[str] = set()
        self._unreachable_count: dict[str, int] = {}
        self.unreachable: dict[str, str] = {}
        self._rng = rng or random.Random()
        # the Outbox's own attempt deadline is a backstop (protocol.delivery_policy): this driver ends attempts
        self.outbox: Outbox[K] = policy.outbox()
        self._payloads: dict[K, bytes | None] = {}
        self._refs: dict[K, str] = {}
        self._in_flight: set[K] = set()
        self._wakeup = trio.Event()
        self._flush_lock = trio.Lock()
        self._loaded = False
        #: written by no flush yet (its write failed): written by the next one, so nothing is forgotten
        self._unwritten: dict[str, QueuedRow] = {}
        self._unended: dict[K, None] = {}

    # -- the loop -------------------------------------------------------------------------
    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if not self._loaded:
            await self.load()
        task_status.started()
        async with trio.open_nursery() as nursery:
            while True:
                if self._batch is not None:
                    await self._start_batches(nursery, self._batch)
                else:
                    await self._start_due(nursery)
                next_due = self._next_due()
                if next_due is None or len(self._in_flight) >= self.policy.concurrency:
                    delay = math.inf  # nothing to do, or no room: an attempt ending wakes the loop
                else:
                    delay = max(0.0, next_due - self.clock())
                wakeup = self._wakeup
                with trio.move_on_after(delay):
                    await wakeup.wait()

    async def load(self) -> None:
        """Restore the outbox from the stored items (done by run() unless called before)."""
        rows = await self.db.run(lambda s: s.queue_rows(self.queue, states=LIVE))
        records = []
        for row in rows:
            try:
                key = self.codec.decode(row.key)
            except MeshError as exc:  # one unreadable row must not stop the queue: left as it is, skipped
                log.warning("%s: stored item %r skipped: %s", self.queue, row.key[:80], exc)
                continue
            self._payloads[key] = row.payload
            self._refs[key] = row.ref
            records.append(_record(key, row))
        self.outbox = self.policy.outbox(records)
        self._loaded = True
        self.wake()

    def wake(self) -> None:
        self._wakeup.set()
        self._wakeup = trio.Event()

    async def _start_due(self, nursery: trio.Nursery) -> None:
        # claim only what can start now: a claimed key never waits for room (its deadline runs from the claim)
        room = max(0, self.policy.concurrency - len(self._in_flight))
        keys = [k for k in self.outbox.due(self.clock(), limit=room) if k not in self._in_flight]
        await self._flush()  # the claim (attempts + 1) is durable before the attempt
        for key in keys:
            self._in_flight.add(key)
            nursery.start_soon(self._attempt_one, key)

    def _next_due(self) -> float | None:
        if self._batch is None or not self._busy:
            return self.outbox.next_due()
        group = self._batch.group  # a busy group's keys wait for its batch to end (which wakes the loop)
        times = [r.next_attempt_at for r in self.outbox.snapshot()
                 if r.state in (DeliveryState.PENDING, DeliveryState.ATTEMPTING) and group(r.key) not in self._busy]
        return min(times) if times else None

    async def _start_batches(self, nursery: trio.Nursery, batch: BatchMode[K]) -> None:
        now = self.clock()
        ready = {batch.group(r.key) for r in self.outbox.snapshot()
                 if r.state is DeliveryState.PENDING and r.next_attempt_at <= now} - self._busy
        claims = []
        for group in sorted(ready):
            def in_group(key: K, group: str = group) -> bool:
                return batch.group(key) == group

            keys = self.outbox.due(now, limit=batch.size, where=in_group,
                                   rank=self._rank if batch.rank is not None else None)
            if keys:
                claims.append((group, keys))
        await self._flush()  # the claims (attempts + 1) are durable before the attempts
        for group, keys in claims:
            self._busy.add(group)
            nursery.start_soon(self._attempt_batch, batch, group, keys)

    def _rank(self, key: K) -> int:
        rank = self._batch.rank if self._batch is not None else None
        return rank(key, self._payloads.get(key)) if rank is not None else 0

    async def _attempt_batch(self, batch: BatchMode[K], group: str, keys: list[K]) -> None:
        try:
            outcome = await self._try_batch(batch, group, keys)
            now = self.clock()
            for key in keys:
                if key in outcome.results:
                    failure = outcome.results[key]
                    if failure is None:
                        self.outbox.succeeded(key, now)
                    else:
                        jitter = jitter_fraction(self.policy, self._rng.random())
                        self.outbox.failed(key, now, permanent=failure.permanent, error=failure.error[:500],
                                           jitter=jitter)
            until = now
            failures = self._unreachable_count.get(group, 0) + 1 if outcome.unreachable else 0
            if failures:
                backoff = batch.backoff(group) if batch.backoff is not None else self.policy.backoff
                until = now + backoff.delay(failures, jitter_fraction(self.policy, self._rng.random()))
            for key in keys:
                if key not in outcome.results:
                    self.outbox.postpone(key, now, until, outcome.unreachable[:500])
            await self._flush(keys)
            # shown once the outcome is durable (what the operator reads next agrees with it)
            if failures:
                self._unreachable_count[group] = failures
                if failures == 1:
                    log.warning("%s: %s unreachable: %s; retrying", self.queue, group, outcome.unreachable)
                self.unreachable[group] = outcome.unreachable
            else:
                if group in self.unreachable:
                    log.info("%s: %s reachable again", self.queue, group)
                self._unreachable_count.pop(group, None)
                self.unreachable.pop(group, None)
            if batch.after is not None:
                await batch.after(group, keys, outcome)
        finally:
            self._busy.discard(group)
            self.wake()

    async def _try_batch(self, batch: BatchMode[K], group: str, keys: list[K]) -> BatchOutcome[K]:
        try:
            with trio.fail_after(self.policy.attempt_timeout):
                return await batch.attempt(group, [(k, self._payloads.get(k)) for k in keys])
        except trio.TooSlowError:
            failure = Failure(f"no answer within {self.policy.attempt_timeout:g} s", False)
        except Exception as exc:  # the batch's task boundary: classified, never propagated
            classified = self._classify(exc)
            if classified is None:
                log.exception("%s: a batch to %s failed with an unexpected error", self.queue, group)
                classified = Failure(f"internal error: {type(exc).__name__}", False)
            failure = classified
        log.log(logging.WARNING if failure.permanent else logging.INFO, "%s: a batch of %d to %s failed: %s",
                self.queue, len(keys), group, failure.error)
        return BatchOutcome({k: failure for k in keys})

    async def _attempt_one(self, key: K) -> None:
        try:
            failure = await self._try(key)
            now = self.clock()
            if failure is None:
                self.outbox.succeeded(key, now)
            else:
                jitter = jitter_fraction(self.policy, self._rng.random())
                self.outbox.failed(key, now, permanent=failure.permanent, error=failure.error[:500], jitter=jitter)
            await self._flush((key,))
        finally:
            self._in_flight.discard(key)
            self.wake()

    async def _try(self, key: K) -> Failure | None:
        record = self.outbox.record(key)
        attempts = record.attempts if record is not None else 0
        if self._attempt_fn is None:  # cannot happen: __init__ checked it
            raise RuntimeError("no attempt function")
        try:
            with trio.fail_after(self.policy.attempt_timeout):
                await self._attempt_fn(key, self._payloads.get(key))
            return None
        except trio.TooSlowError:
            failure = Failure(f"no answer within {self.policy.attempt_timeout:g} s", False)
        except Exception as exc:  # the attempt's task boundary: classified, never propagated
            classified = self._classify(exc)
            if classified is None:
                log.exception("%s %s: attempt %d failed with an unexpected error", self.queue,
                              self.codec.encode(key), attempts)
                classified = Failure(f"internal error: {type(exc).__name__}", False)
            failure = classified
        log.log(logging.WARNING if failure.permanent else logging.INFO, "%s %s: attempt %d failed%s: %s",
                self.queue, self.codec.encode(key), attempts, " for good" if failure.permanent else "",
                failure.error)
        return failure

    async def _flush(self, ended: Sequence[K] = ()) -> None:
        """Write what changed; on return, every change made before the call is durable (flushes are
        serialised: one that finds its changes taken by another still waits for that one's write)."""
        async with self._flush_lock:
            await self._flush_locked(ended)

    async def _flush_locked(self, ended: Sequence[K]) -> None:
        unwritten = self._unwritten
        for r in self.outbox.changes():
            row = self._row(r)
            unwritten[row.key] = row
        for key in ended:
            self._unended[key] = None
        if not unwritten and not self._unended:
            return
        rows = list(unwritten.values())
        ends = list(self._unended)
        writes: list[StoreFn] = []
        actions: list[Callable[[], Awaitable[None]]] = []
        delivered: list[K] = []
        for key in ends:
            record = self.outbox.record(key)
            if record is None or record.state not in (DeliveryState.DELIVERED, DeliveryState.FAILED):
                continue
            if record.state is DeliveryState.DELIVERED:
                delivered.append(key)
            if self._on_ended is not None:
                write, action = self._on_ended(record, self._payloads.get(key))
                if write is not None:
                    writes.append(write)
                if action is not None:
                    actions.append(action)

        def save(store: MetadataStore) -> None:
            with store.atomic():
                store.queue_save(rows)
                for write in writes:
                    write(store)

        await self.db.run(save)  # on failure, kept in _unwritten / _unended for the next flush
        self._unwritten = {}
        self._unended = {}
        for key in delivered:
            self._forget(key)
        for action in actions:
            await action()

    def _forget(self, key: K) -> None:
        self.outbox.remove(key)
        self._payloads.pop(key, None)
        self._refs.pop(key, None)

    def _row(self, r: DeliveryRecord[K]) -> QueuedRow:
        return QueuedRow(self.queue, self.codec.encode(r.key), self._refs.get(r.key, self.codec.ref(r.key)),
                         r.state, r.attempts, _ms(r.next_attempt_at), _ms(r.updated_at), r.last_error)

    # -- inputs ---------------------------------------------------------------------------
    async def enqueue(self, items: Sequence[tuple[K, bytes | None]], also: StoreFn | None = None) -> list[K]:
        """Queue items, durably (with `also`, in the same database call) before any is attempted.
        Returns the keys newly queued (a key queued before is left as it is)."""
        now = self.clock()
        rows = [QueuedRow(self.queue, self.codec.encode(k), self.codec.ref(k), DeliveryState.PENDING, 0, _ms(now),
                          _ms(now), "", p) for k, p in items]

        def write(store: MetadataStore) -> list[str]:
            with store.atomic():  # `also` and the rows: one transaction
                if also is not None:
                    also(store)
                return store.queue_add(rows)

        stored = set(await self.db.run(write))
        added = []
        for key, payload in items:
            if self.codec.encode(key) in stored and self.outbox.add(key, now):
                self._payloads[key] = payload
                self._refs[key] = self.codec.ref(key)
                added.append(key)
        self.wake()
        return added

    async def adopt(self, key_prefix: str) -> list[K]:
        """Take on the pending items whose keys start with key_prefix that another write stored (say in the
        same database call as the event that queued them) and this driver does not hold yet."""
        rows = await self.db.run(lambda s: s.queue_rows(self.queue, states=(DeliveryState.PENDING,),
                                                        key_prefix=key_prefix))
        added = []
        for row in rows:
            try:
                key = self.codec.decode(row.key)
            except MeshError as exc:
                log.warning("%s: stored item %r skipped: %s", self.queue, row.key[:80], exc)
                continue
            if self.outbox.add(key, row.updated_ms / 1000, not_before=row.next_attempt_ms / 1000):
                self._payloads[key] = row.payload
                self._refs[key] = row.ref
                added.append(key)
        self.wake()
        return added

    async def reopen(self, keys: Sequence[K]) -> list[K]:
        """Take on again items the caller's own write has just made PENDING (a person let a held item go):
        one this driver holds as ended (FAILED or DELIVERED) is pending again with its attempts reset, one it
        does not hold is taken on (as `adopt`). Only the keys named, and only if their row is PENDING now:
        memory can be ahead of a stale row (an attempt that just ended is being written), so a row this
        driver merely has not written yet must never make it resend. An item being attempted is left to its
        attempt. Returns the keys now pending from an ended or unknown state."""
        wanted = {self.codec.encode(k) for k in keys}

        def pending(store: MetadataStore) -> list[QueuedRow]:
            rows: dict[str, QueuedRow] = {}
            for key in keys:
                for row in store.queue_rows(self.queue, ref=self.codec.ref(key), states=(DeliveryState.PENDING,)):
                    if row.key in wanted:
                        rows[row.key] = row
            return list(rows.values())

        reopened = []
        now = self.clock()
        for row in await self.db.run(pending):
            key = self.codec.decode(row.key)
            record = self.outbox.record(key)
            if record is not None and record.state not in (DeliveryState.DELIVERED, DeliveryState.FAILED):
                continue  # pending already, or being attempted
            if self.outbox.reopen(key, now, not_before=row.next_attempt_ms / 1000):
                self._payloads[key] = row.payload
                self._refs[key] = row.ref
                reopened.append(key)
        self.wake()
        return reopened

    def forget(self, keys: Sequence[K]) -> None:
        """Forget items removed from the database by a caller's write (an attempt in progress still ends)."""
        for key in keys:
            self._forget(key)

    async def remove(self, keys: Sequence[K]) -> None:
        """Forget items (an attempt in progress still ends; its report is ignored)."""
        for key in keys:
            self._forget(key)
        texts = [self.codec.encode(k) for k in keys]
        await self.db.run(lambda s: s.queue_remove(self.queue, texts))

    async def retry(self, keys: Sequence[K] | None = None) -> int:
        """Operator: try items that failed for good again (all of them by default). Returns how many."""
        now = self.clock()
        failed = [r.key for r in self.outbox.snapshot() if r.state is DeliveryState.FAILED
                  and (keys is None or r.key in keys)]
        for key in failed:
            self.outbox.retry(key, now)
        await self._flush()
        self.wake()
        return len(failed)

    def records(self) -> list[DeliveryRecord[K]]:
        """The items not yet delivered (delivered ones are only in the database: `stored`)."""
        return self.outbox.snapshot()

    async def stored(self, ref: str | None = None) -> list[DeliveryRecord[K]]:
        """Every item in the database (those with this ref), delivered ones included."""
        rows = await self.db.run(lambda s: s.queue_rows(self.queue, ref=ref))
        return [_record(self.codec.decode(r.key), r) for r in rows]

    async def drop_payloads(self, before: float) -> int:
        """Drop the payloads of items delivered before this time (their rows stay)."""
        return await self.db.run(lambda s: s.queue_drop_payloads(self.queue, _ms(before)))


def _record(key: K, row: QueuedRow) -> DeliveryRecord[K]:
    return DeliveryRecord(key, row.state, row.attempts, row.next_attempt_ms / 1000, row.updated_ms / 1000,
                          row.last_error)


def _ms(t: float) -> int:
    return int(round(t * 1000))
