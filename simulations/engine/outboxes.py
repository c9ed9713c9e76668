"""Retries through protocol.outbox.Outbox: the same backoff state machine the node's deliveries follow.

An `OutboxDriver` owns one Outbox (a sender's announces, a sender's hub
uploads, the hub's forwards), keeps one timer armed at its next due time,
and hands each due key to an attempt function. The attempt reports back
(now or later) through `succeeded` / `failed`. While its owner is down the
driver does nothing; when the owner comes back, attempts cut short are due
at once (as `Outbox.restore` does after a restart).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from protocol.cid import CID
from protocol.outbox import DeliveryKey, DeliveryKind, DeliveryState, Outbox
from simulations.engine.clock import EventQueue

Attempt = Callable[[DeliveryKey, float], None]
GaveUp = Callable[[DeliveryKey, float, str], None]


class OutboxDriver:
    def __init__(self, queue: EventQueue, attempt: Attempt, gave_up: GaveUp, *, attempt_timeout: float = 300.0,
                 max_attempts: int | None = None) -> None:
        self.queue = queue
        self.outbox: Outbox[DeliveryKey] = Outbox(attempt_timeout=attempt_timeout, max_attempts=max_attempts)
        self.attempt = attempt
        self.gave_up = gave_up
        self.armed = math.inf
        self.online = True

    def add(self, kind: DeliveryKind, item: CID, org: str, now: float) -> DeliveryKey:
        key = DeliveryKey(kind, item, org)
        self.outbox.add(key, now)
        self.run_due(now)
        return key

    def succeeded(self, key: DeliveryKey, now: float) -> None:
        self.outbox.succeeded(key, now)
        self.outbox.remove(key)

    def failed(self, key: DeliveryKey, now: float, error: str, permanent: bool = False) -> None:
        self.outbox.failed(key, now, permanent=permanent, error=error)
        record = self.outbox.record(key)
        if record is not None and record.state is DeliveryState.FAILED:
            self.outbox.remove(key)
            self.gave_up(key, now, record.last_error or error)
        else:
            self._arm()

    def forget(self, key: DeliveryKey) -> None:
        self.outbox.remove(key)

    def attempts(self, key: DeliveryKey) -> int:
        record = self.outbox.record(key)
        return 0 if record is None else record.attempts

    def run_due(self, now: float) -> None:
        if not self.online:
            return
        for key in self.outbox.due(now):
            self.attempt(key, now)
        self._arm()

    def go_down(self) -> None:
        self.online = False

    def come_up(self, now: float) -> None:
        """The owner restarted: attempts it was making are due again at once."""
        self.online = True
        restored: Outbox[DeliveryKey] = Outbox.restore(self.outbox.snapshot(), attempt_timeout=self.outbox.attempt_timeout,
                                                        max_attempts=self.outbox.max_attempts)
        self.outbox = restored
        self.armed = math.inf
        self.run_due(now)

    def _arm(self) -> None:
        t = self.outbox.next_due()
        if t is not None and t < self.armed:
            self.armed = t
            self.queue.at(t, self._wake)

    def _wake(self, _: object, now: float) -> None:
        if now < self.armed:
            return  # a newer, earlier timer already ran; the current one is still pending
        self.armed = math.inf
        self.run_due(now)
