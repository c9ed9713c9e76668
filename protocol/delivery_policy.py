"""DeliveryPolicy: how a delivery is retried (backoff, attempt timeout, attempt limit, jitter), stated once.

The node's deliveries (announcements, recalls, receipts: meshnode/node/delivery.py through
meshnode/node/retry_driver.py) run with `DeliveryPolicy()`; the simulator's nodes do too
(simulations/engine/outboxes.py), unless a scenario's `[design.delivery]` changes a field. Both drivers
build their Outbox with `policy.outbox()` and turn a uniform draw into the jitter of a retry with
`jitter_fraction`, the one place that decision is made (protocol/ has no randomness: the node draws
from `random`, the simulator from its seeded stream).

    >>> p = DeliveryPolicy()
    >>> p.backoff.delay(3, jitter_fraction(p, 0.5))  # the third failure, a draw in the middle: no jitter
    8.0

A driver ends an attempt that takes longer than `attempt_timeout` and reports it as a transient
failure (with a drawn jitter, like any other); the Outbox's own deadline is ATTEMPT_BACKSTOP later, a
backstop for an attempt the driver lost (say its task was restarted), so it never races the driver's.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from protocol.backoff import MAX_JITTER, Backoff
from protocol.errors import LocalProtocolError
from protocol.outbox import DeliveryRecord, Outbox

K = TypeVar("K", bound=Hashable)

#: seconds after a driver's attempt timeout at which the Outbox gives the attempt up itself
ATTEMPT_BACKSTOP = 30.0


@dataclass(frozen=True)
class DeliveryPolicy:
    #: wait after the n-th consecutive failure: 2 s doubling to 15 min
    backoff: Backoff = field(default_factory=lambda: Backoff(base=2.0, factor=2.0, cap=15 * 60.0))
    #: seconds an attempt may take before it counts as a (transient) failure
    attempt_timeout: float = 120.0
    #: attempts before a delivery fails for good (about ten days at the cap); None: never
    max_attempts: int | None = 1000
    #: each retry waits the backoff times (1 + f), f uniform in -jitter..+jitter
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if not isinstance(self.backoff, Backoff):
            raise LocalProtocolError("backoff must be a protocol.backoff.Backoff")
        if not 0 < self.attempt_timeout < float("inf"):
            raise LocalProtocolError("attempt_timeout must be a finite number of seconds > 0")
        if self.max_attempts is not None and (isinstance(self.max_attempts, bool) or self.max_attempts < 1):
            raise LocalProtocolError("max_attempts must be >= 1 (or None: no limit)")
        if not 0.0 <= self.jitter <= MAX_JITTER:
            raise LocalProtocolError(f"jitter must be a fraction in 0..{MAX_JITTER}")

    def outbox(self, records: Iterable[DeliveryRecord[K]] = ()) -> Outbox[K]:
        """The Outbox a driver of this policy runs (restored from stored records, if any)."""
        return Outbox.restore(records, backoff=self.backoff, attempt_timeout=self.attempt_timeout + ATTEMPT_BACKSTOP,
                              max_attempts=self.max_attempts)


def jitter_fraction(policy: DeliveryPolicy, u: float) -> float:
    """The jitter of a retry for a uniform draw u in [0, 1]: -policy.jitter at 0, +policy.jitter at 1."""
    if not 0.0 <= u <= 1.0:
        raise LocalProtocolError(f"a uniform draw is in 0..1, not {u!r}")
    return policy.jitter * (2.0 * u - 1.0)
