"""The trio driver of a protocol.outbox.Outbox whose records live in the node's database.

One driver per durable retry queue (meshnode.storage.retry_queue). It restores
the outbox from the stored rows not yet delivered, then loops: sleep until the outbox's next due
time (woken early when an item is added or retried), claim the due keys
(`Outbox.due`, at most as many as there is room for: `concurrency` at once),
write the claim, attempt each key (bounded by `attempt_timeout`), report `succeeded` or
`failed(permanent=...)` with a jitter fraction drawn here (protocol/ has no
randomness), and write what changed (`Outbox.changes`). A delivered item is
then dropped from memory (its row stays, so its key is never queued twice):
memory holds what is still to do, however long the node's history.

Data safety: an item is written to the database before it is added to the
outbox (`enqueue`), so nothing is attempted that a restart would forget; an
attempt cut short by a stop is due again at once after the restart
(`Outbox.restore`). A success hook runs in the same database call that
records the success.

Expected failures (the caller's `expected` exception types: the network, a
refusal) are logged as one line; anything else is a bug and is logged with its
traceback, then counted as a transient failure so the queue keeps moving.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

import trio

from meshnode.storage.metadata import MetadataStore
from meshnode.storage.retry_queue import QueuedRow
from protocol.backoff import Backoff
from protocol.errors import MeshError
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
class RetryPolicy:
    backoff: Backoff = Backoff()
    attempt_timeout: float = 120.0
    max_attempts: int | None = None
    #: each retry waits the backoff times (1 + u), u uniform in -jitter..+jitter
    jitter: float = 0.2
    concurrency: int = 32


@dataclass(frozen=True)
class Failure:
    """An attempt's failure as the attempt function classifies it."""

    error: str
    permanent: bool


#: Attempt one key (its payload given); raise to fail. The classify function says whether an error is
#: expected (a Failure) or a bug (None).
AttemptFn = Callable[[K, "bytes | None"], Awaitable[None]]
ClassifyFn = Callable[[BaseException], "Failure | None"]
#: After an item ended (DELIVERED, or FAILED for good): a write in the same database call, then an action.
EndedFn = Callable[[DeliveryRecord[K], "bytes | None"], "tuple[StoreFn | None, Callable[[], Awaitable[None]] | None]"]

# Outbox's own attempt deadline is a backstop for attempts the driver lost (its task restarted): it is
# later than the driver's, so a running attempt is always ended by the driver first.
_BACKSTOP = 30.0


class RetryDriver(Generic[K]):
    def __init__(
        self, queue: str, codec: KeyCodec[K], db: Database, clock: Callable[[], float], attempt: AttemptFn[K],
        classify: ClassifyFn, *, policy: RetryPolicy = RetryPolicy(), on_ended: EndedFn[K] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.queue = queue
        self.codec = codec
        self.db = db
        self.clock = clock
        self.policy = policy
        self._attempt_fn = attempt
        self._classify = classify
        self._on_ended = on_ended
        self._rng = rng or random.Random()
        self.outbox: Outbox[K] = Outbox(backoff=policy.backoff, attempt_timeout=policy.attempt_timeout + _BACKSTOP,
                                        max_attempts=policy.max_attempts)
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
                await self._start_due(nursery)
                next_due = self.outbox.next_due()
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
        self.outbox = Outbox.restore(records, backoff=self.policy.backoff,
                                     attempt_timeout=self.policy.attempt_timeout + _BACKSTOP,
                                     max_attempts=self.policy.max_attempts)
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

    async def _attempt_one(self, key: K) -> None:
        try:
            failure = await self._try(key)
            now = self.clock()
            if failure is None:
                self.outbox.succeeded(key, now)
            else:
                jitter = self._rng.uniform(-self.policy.jitter, self.policy.jitter)
                self.outbox.failed(key, now, permanent=failure.permanent, error=failure.error[:500], jitter=jitter)
            await self._flush(key)
        finally:
            self._in_flight.discard(key)
            self.wake()

    async def _try(self, key: K) -> Failure | None:
        record = self.outbox.record(key)
        attempts = record.attempts if record is not None else 0
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

    async def _flush(self, ended: K | None = None) -> None:
        """Write what changed; on return, every change made before the call is durable (flushes are
        serialised: one that finds its changes taken by another still waits for that one's write)."""
        async with self._flush_lock:
            await self._flush_locked(ended)

    async def _flush_locked(self, ended: K | None) -> None:
        unwritten = self._unwritten
        for r in self.outbox.changes():
            row = self._row(r)
            unwritten[row.key] = row
        if ended is not None:
            self._unended[ended] = None
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
