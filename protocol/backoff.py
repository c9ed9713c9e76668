"""Backoff: how long to wait after the n-th consecutive failure (pure; the one copy every retry loop uses).

Exponential: `base * factor ** (failures - 1)`, at most `cap` seconds, times
`(1 + jitter)` where `jitter` is a fraction in -0.5..0.5 the caller drew (this
module has no randomness, so the same inputs always give the same delay).

    >>> Backoff(base=2.0, cap=900.0).delay(3)
    8.0
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.errors import LocalProtocolError

MAX_JITTER = 0.5


@dataclass(frozen=True)
class Backoff:
    base: float = 2.0
    factor: float = 2.0
    cap: float = 15 * 60.0

    def __post_init__(self) -> None:
        if not (self.base > 0 and self.factor >= 1 and self.cap > 0):
            raise LocalProtocolError("backoff needs base > 0, factor >= 1 and cap > 0")

    def delay(self, failures: int, jitter: float = 0.0) -> float:
        """Seconds to wait after the n-th consecutive failure (n <= 1 counts as the first), times (1 + jitter)."""
        if not -MAX_JITTER <= jitter <= MAX_JITTER:
            raise LocalProtocolError(f"jitter must be a fraction in -{MAX_JITTER}..{MAX_JITTER}")
        exponent = max(0, failures - 1)
        try:
            raw = min(self.cap, self.base * self.factor**exponent)
        except OverflowError:
            raw = self.cap
        return float(raw * (1.0 + jitter))
