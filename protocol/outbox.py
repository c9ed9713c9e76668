"""Outbox: the sender's retry state machine for deliveries to organisations (sans-IO).

One record per delivery key (for the node: `DeliveryKey(kind, item, org)`,
e.g. announcing manifest M to org RXX, or delivering our receipt for M to
its sender org). The driver asks `due(now)` for the keys to attempt now,
attempts each (resolve the org's nodes, push the document) and reports
`succeeded(key, now)` or `failed(key, now, permanent=...)`. Transient
failures are retried with deterministic exponential backoff (a
protocol.backoff.Backoff; the caller may pass a jitter fraction it drew).
The numbers the node and the simulator run it with are a
protocol.delivery_policy.DeliveryPolicy (`policy.outbox()` builds one).

State survives a restart: `snapshot()` gives plain records to store (and
`changes()` only the records changed since the last call), `Outbox.restore`
rebuilds the outbox from them. An attempt in progress when the node stopped
is due again at once after a restore.

    add -> PENDING --due--> ATTEMPTING --succeeded--> DELIVERED
                ^               |--failed (transient)--> PENDING (after backoff)
                |               `--failed (permanent) or max_attempts--> FAILED
                `------ retry (operator) ------------------------------'

An ATTEMPTING record whose driver never reports back within
`attempt_timeout` counts as a transient failure.

Batch senders (one PACS association for many items) claim the due keys of
one destination (`due(now, where=...)`); when the destination could not be
reached at all, `postpone(key, now, until)` puts a claimed key back to
PENDING without counting the attempt (it never took place). `add(key, now,
not_before=t)` queues an item not due before t (a debounce); `postpone` on a
PENDING key pushes its due time later; `reopen(key, now, not_before=t)` queues
again a key that ended (DELIVERED or FAILED: something new to send, say a late
instance of an announced study), with its attempts reset.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, replace
from enum import Enum
from typing import Generic, Self, TypeVar

from protocol.backoff import Backoff
from protocol.cid import CID
from protocol.errors import LocalProtocolError
from protocol.schema import check_org_code


class DeliveryState(str, Enum):
    PENDING = "pending"
    ATTEMPTING = "attempting"
    DELIVERED = "delivered"
    FAILED = "failed"  # permanently: retried only by an explicit retry()


class DeliveryKind(str, Enum):
    ANNOUNCE = "announce"
    RECEIPT = "receipt"
    RECALL = "recall"
    FORWARD_REPORT = "forward-report"  # item: the report's own CID (each report its own delivery)
    #: a recipient's receipt passed on to the other nodes of the sender org (protocol.replication); item: the
    #: receipt's own CID, org: this node's own
    SIBLING_RECEIPT = "sibling-receipt"


@dataclass(frozen=True, order=True)
class DeliveryKey:
    """What is delivered (a manifest announce, a receipt or recall for a manifest) to which org."""

    kind: DeliveryKind
    item: CID
    org: str

    def __post_init__(self) -> None:
        check_org_code(self.org, "delivery org")


K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class DeliveryRecord(Generic[K]):
    """One delivery's persisted state.

    next_attempt_at: PENDING -- when it is due; ATTEMPTING -- when the attempt
    is given up as failed; DELIVERED / FAILED -- unused (the time it ended).
    attempts: attempts started so far.
    """

    key: K
    state: DeliveryState
    attempts: int
    next_attempt_at: float
    updated_at: float
    last_error: str = ""


class Outbox(Generic[K]):
    def __init__(
        self, *, backoff: Backoff | None = None, attempt_timeout: float = 300.0,
        max_attempts: int | None = None,
    ) -> None:
        if not attempt_timeout > 0 or (max_attempts is not None and max_attempts < 1):
            raise LocalProtocolError("attempt_timeout must be > 0 and max_attempts >= 1")
        self.backoff = backoff or Backoff()
        self.attempt_timeout = attempt_timeout
        self.max_attempts = max_attempts
        self._records: dict[K, DeliveryRecord[K]] = {}
        self._changed: dict[K, None] = {}

    @classmethod
    def restore(
        cls, records: Iterable[DeliveryRecord[K]], *, backoff: Backoff | None = None,
        attempt_timeout: float = 300.0, max_attempts: int | None = None,
    ) -> Self:
        """Rebuild from stored records; attempts cut short by a stop count (a delivery that crashes the node
        must not loop for ever) and are due again at once, or FAILED when that was the last of max_attempts."""
        outbox = cls(backoff=backoff, attempt_timeout=attempt_timeout, max_attempts=max_attempts)
        for record in records:
            if record.key in outbox._records:
                raise LocalProtocolError(f"two stored records for {record.key!r}")
            if record.state is DeliveryState.ATTEMPTING:
                if outbox.max_attempts is not None and record.attempts >= outbox.max_attempts:
                    record = replace(record, state=DeliveryState.FAILED, next_attempt_at=record.updated_at,
                                     last_error="the node stopped during the last allowed attempt")
                else:
                    record = replace(record, state=DeliveryState.PENDING, next_attempt_at=record.updated_at)
            outbox._records[record.key] = record
        return outbox

    # -- inputs -------------------------------------------------------------------

    def add(self, key: K, now: float, *, not_before: float | None = None) -> bool:
        """Queue a delivery, due now (or at not_before, if later). False (and no change) if the key is
        already known."""
        if key in self._records:
            return False
        due_at = now if not_before is None else max(now, not_before)
        self._set(DeliveryRecord(key, DeliveryState.PENDING, 0, due_at, now))
        return True

    def reopen(self, key: K, now: float, *, not_before: float | None = None) -> bool:
        """There is something new to send for this key: an unknown key is added, an ended one (DELIVERED or
        FAILED) becomes PENDING again with its attempts reset, due at not_before (or now); a PENDING one is
        pushed to not_before (never made earlier). An ATTEMPTING key is left as it is: the caller decides
        after the attempt. Returns whether the key is now pending from an ended or unknown state."""
        due_at = now if not_before is None else max(now, not_before)
        record = self._records.get(key)
        if record is None:
            return self.add(key, now, not_before=not_before)
        if record.state in (DeliveryState.DELIVERED, DeliveryState.FAILED):
            self._set(DeliveryRecord(key, DeliveryState.PENDING, 0, due_at, now))
            return True
        if record.state is DeliveryState.PENDING:
            self.postpone(key, now, due_at)
        return False

    def remove(self, key: K) -> None:
        """Forget a delivery (e.g. its manifest was recalled). The caller deletes its stored row."""
        self._records.pop(key, None)
        self._changed.pop(key, None)

    def due(self, now: float, limit: int | None = None, *, where: Callable[[K], bool] | None = None,
            rank: Callable[[K], int] | None = None) -> list[K]:
        """Claim the deliveries to attempt now (lowest rank first, if given, then oldest due first; only keys
        `where` accepts, if given); they become ATTEMPTING."""
        for record in list(self._records.values()):
            if record.state is DeliveryState.ATTEMPTING and now >= record.next_attempt_at:
                self._fail(record, now, "attempt timed out", permanent=False, jitter=0.0)
        ready = sorted(
            (rank(r.key) if rank is not None else 0, r.next_attempt_at, i, r)
            for i, r in enumerate(self._records.values())
            if r.state is DeliveryState.PENDING and r.next_attempt_at <= now and (where is None or where(r.key))
        )
        if limit is not None:
            ready = ready[: max(0, limit)]
        for _, _, _, record in ready:
            self._set(replace(
                record, state=DeliveryState.ATTEMPTING, attempts=record.attempts + 1,
                next_attempt_at=now + self.attempt_timeout, updated_at=now,
            ))
        return [r.key for _, _, _, r in ready]

    def succeeded(self, key: K, now: float) -> None:
        record = self._attempting(key)
        if record is not None:
            self._set(replace(record, state=DeliveryState.DELIVERED, next_attempt_at=now, updated_at=now, last_error=""))

    def failed(self, key: K, now: float, *, permanent: bool = False, error: str = "", jitter: float = 0.0) -> None:
        """The attempt failed; retried after backoff unless permanent (or max_attempts reached)."""
        record = self._attempting(key)
        if record is not None:
            self._fail(record, now, error, permanent=permanent, jitter=jitter)

    def postpone(self, key: K, now: float, until: float, error: str = "") -> None:
        """Not before `until`. A claimed (ATTEMPTING) key whose attempt never took place (its destination
        could not be reached) goes back to PENDING with the claim not counted; a PENDING key is deferred
        (never made earlier). Ended keys are left as they are."""
        record = self._records.get(key)
        if record is None:
            return
        if record.state is DeliveryState.ATTEMPTING:
            self._set(replace(record, state=DeliveryState.PENDING, attempts=max(0, record.attempts - 1),
                              next_attempt_at=max(now, until), updated_at=now, last_error=error))
        elif record.state is DeliveryState.PENDING and until > record.next_attempt_at:
            self._set(replace(record, next_attempt_at=until, updated_at=now, last_error=error or record.last_error))

    def wake(self, keys: Iterable[K], now: float) -> None:
        """Make these PENDING deliveries due now (say a peer of the org just came online)."""
        for key in keys:
            record = self._records.get(key)
            if record is not None and record.state is DeliveryState.PENDING and record.next_attempt_at > now:
                self._set(replace(record, next_attempt_at=now, updated_at=now))

    def retry(self, key: K, now: float) -> None:
        """Operator asked to try a permanently failed delivery again: due now, attempts reset."""
        record = self._records.get(key)
        if record is not None and record.state is DeliveryState.FAILED:
            self._set(replace(record, state=DeliveryState.PENDING, attempts=0, next_attempt_at=now, updated_at=now))

    # -- queries ------------------------------------------------------------------

    def record(self, key: K) -> DeliveryRecord[K] | None:
        return self._records.get(key)

    def next_due(self) -> float | None:
        """When due() next has something to do (a pending due time or an attempt deadline)."""
        times = [
            r.next_attempt_at for r in self._records.values()
            if r.state in (DeliveryState.PENDING, DeliveryState.ATTEMPTING)
        ]
        return min(times) if times else None

    def snapshot(self) -> list[DeliveryRecord[K]]:
        return list(self._records.values())

    def changes(self) -> list[DeliveryRecord[K]]:
        """Records added or changed since the last call (removals are the caller's own)."""
        changed = [self._records[k] for k in self._changed]
        self._changed.clear()
        return changed

    # -- internals ----------------------------------------------------------------

    def _attempting(self, key: K) -> DeliveryRecord[K] | None:
        """The record if an attempt is in progress; late reports of timed-out attempts are ignored."""
        record = self._records.get(key)
        if record is None or record.state is not DeliveryState.ATTEMPTING:
            return None
        return record

    def _fail(self, record: DeliveryRecord[K], now: float, error: str, *, permanent: bool, jitter: float) -> None:
        delay = self.backoff.delay(record.attempts, jitter)
        if permanent or (self.max_attempts is not None and record.attempts >= self.max_attempts):
            self._set(replace(record, state=DeliveryState.FAILED, next_attempt_at=now, updated_at=now, last_error=error))
        else:
            self._set(replace(
                record, state=DeliveryState.PENDING, next_attempt_at=now + delay, updated_at=now, last_error=error,
            ))

    def _set(self, record: DeliveryRecord[K]) -> None:
        self._records[record.key] = record
        self._changed[record.key] = None


class AnnounceOutbox(Outbox[DeliveryKey]):
    """The node's outbox: announces, receipts and recalls, keyed by DeliveryKey."""
