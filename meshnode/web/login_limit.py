"""Login rate limiting: failed sign-ins counted per user name and per client address in a sliding window.

Pure bookkeeping (time is a parameter), held in memory by the web app. After
`per_user` failures for one user name, or `per_client` from one address,
within `window_s`, further attempts are refused (HTTP 429 with Retry-After)
until the oldest failure leaves the window; a successful sign-in clears the
user name's count (not the address's). Someone who knows a user name can
keep that account refused by failing on purpose: the price of stopping
password guessing; the per-address limit and the audit trail (110114, with
the attempted name and address) show who.

Attempts in flight count as failures until they end: `reserve` checks and
takes a place in one step (the web app is single-threaded under trio, so no
other attempt can come between), `release` gives it back once the attempt is
decided (after `failed` for a failure). Without this, concurrent attempts all
pass the check before the first slow password check records its failure, and
a thousand parallel TOTP guesses get a thousand checks. At most `max_in_flight`
attempts are in flight overall, whatever their names and addresses.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

PER_USER = 5
PER_CLIENT = 20
WINDOW_S = 15 * 60.0
#: most keys remembered (names and addresses); beyond, the stalest are forgotten
MAX_KEYS = 50_000
#: sign-in attempts being checked at once, over all names and addresses
MAX_IN_FLIGHT = 32


class Busy(Exception):
    """Too many sign-ins in flight overall: refuse this one (try again in a moment)."""


@dataclass
class LoginLimiter:
    per_user: int = PER_USER
    per_client: int = PER_CLIENT
    window_s: float = WINDOW_S
    max_in_flight: int = MAX_IN_FLIGHT
    _failures: dict[str, deque[float]] = field(default_factory=dict)
    _pending: dict[str, int] = field(default_factory=dict)

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.get(key)
        if times is None:
            return deque()
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._failures[key]
        return times

    def _keys(self, user: str, client: str) -> list[tuple[str, int]]:
        """`user` '' (a token or single sign-on attempt): counted per address only."""
        keys = [(f"client:{client}", self.per_client)]
        return [(f"user:{user}", self.per_user), *keys] if user else keys

    def retry_after(self, user: str, client: str, now: float) -> float:
        """Seconds until an attempt for `user` from `client` may be made (0: now)."""
        wait = 0.0
        for key, most in self._keys(user, client):
            times = self._recent(key, now)
            allowed = most - self._pending.get(key, 0)  # in-flight attempts count as failures
            if allowed <= 0:
                wait = max(wait, 1.0)  # until the attempts in flight are decided
            elif len(times) >= allowed:
                wait = max(wait, times[len(times) - allowed] + self.window_s - now)
        return wait

    def in_flight(self) -> int:
        return sum(n for key, n in self._pending.items() if key.startswith("client:"))

    def reserve(self, user: str, client: str, now: float) -> float:
        """Take a place for an attempt if one is free: 0.0 (then `release` it when the attempt is decided),
        else the seconds to wait (nothing taken). Raises Busy when too many attempts are in flight."""
        wait = self.retry_after(user, client, now)
        if wait > 0:
            return wait
        if self.in_flight() >= self.max_in_flight:
            raise Busy()
        for key, _ in self._keys(user, client):
            self._pending[key] = self._pending.get(key, 0) + 1
        return 0.0

    def release(self, user: str, client: str) -> None:
        for key, _ in self._keys(user, client):
            left = self._pending.get(key, 0) - 1
            if left > 0:
                self._pending[key] = left
            else:
                self._pending.pop(key, None)

    def failed(self, user: str, client: str, now: float) -> None:
        if len(self._failures) >= MAX_KEYS:
            stalest = sorted(self._failures, key=lambda k: self._failures[k][-1])[:MAX_KEYS // 10]
            for key in stalest:
                del self._failures[key]
        for key, most in self._keys(user, client):
            times = self._failures.setdefault(key, deque())
            times.append(now)
            while len(times) > most:
                times.popleft()

    def succeeded(self, user: str) -> None:
        self._failures.pop(f"user:{user}", None)
