"""Retries through protocol.outbox.Outbox, driven the way the node's retry driver drives it.

An `OutboxDriver` owns one Outbox (a sender's announces, a sender's hub
uploads, the hub's forwards), keeps one timer armed at its next due time,
and hands each due key to an attempt function. The attempt reports back
(now or later) through `succeeded` / `failed`. The decisions are the node's
(meshnode/node/retry_driver.py), made by the same protocol/ objects: the
Outbox built by `DeliveryPolicy.outbox()`, an attempt that has not reported
within `policy.attempt_timeout` ended as a transient failure ("no answer
within ..."), and every failure's jitter from `jitter_fraction` of a
uniform draw (the simulator's seeded stream where the node draws from
`random`). While its owner is down the driver does nothing; when the owner
comes back, attempts cut short are due at once (as `Outbox.restore` does
after a restart).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from protocol.cid import CID
from protocol.delivery_policy import DeliveryPolicy, jitter_fraction
from protocol.outbox import DeliveryKey, DeliveryKind, DeliveryState, Outbox
from simulations.engine.clock import EventQueue

Attempt = Callable[[DeliveryKey, float], None]
GaveUp = Callable[[DeliveryKey, float, str], None]
#: a uniform draw in [0, 1) from a seeded stream (simulations.rng)
Uniform = Callable[[], float]


class OutboxDriver:
    def __init__(self, queue: EventQueue, attempt: Attempt, gave_up: GaveUp, *, policy: DeliveryPolicy,
                 uniform: Uniform) -> None:
        self.queue = queue
        self.policy = policy
        self.outbox: Outbox[DeliveryKey] = policy.outbox()
        self.attempt = attempt
        self.gave_up = gave_up
        self._draw = uniform
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
        record = self.outbox.record(key)
        if record is None or record.state is not DeliveryState.ATTEMPTING:
            return  # a late report of an attempt already ended (timed out): the node ignores it too
        jitter = jitter_fraction(self.policy, self._draw())
        self.outbox.failed(key, now, permanent=permanent, error=error, jitter=jitter)
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
            attempts = self.attempts(key)
            self.attempt(key, now)
            record = self.outbox.record(key)
            if record is not None and record.state is DeliveryState.ATTEMPTING and record.attempts == attempts:
                # still running (it reports later, or never): ended at its timeout as the node's driver does
                self.queue.at(now + self.policy.attempt_timeout, self._deadline, (key, attempts))
        self._arm()

    def go_down(self) -> None:
        self.online = False

    def come_up(self, now: float) -> None:
        """The owner restarted: attempts it was making are due again at once."""
        self.online = True
        self.outbox = self.policy.outbox(self.outbox.snapshot())
        self.armed = math.inf
        self.run_due(now)

    def _deadline(self, claim: tuple[DeliveryKey, int], now: float) -> None:
        """The node's driver ends an attempt at its timeout (trio.fail_after): a transient failure. A deadline
        of an attempt that ended, or that a restart cut short (a new attempt has a higher count), does nothing."""
        key, attempts = claim
        record = self.outbox.record(key)
        if not self.online or record is None or record.state is not DeliveryState.ATTEMPTING \
                or record.attempts != attempts:
            return
        self.failed(key, now, f"no answer within {self.policy.attempt_timeout:g} s")

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
