"""Login rate limiting: failed sign-ins counted per user name and per client address in a sliding window.

Pure bookkeeping (time is a parameter), held in memory by the web app. After
`per_user` failures for one user name, or `per_client` from one address,
within `window_s`, further attempts are refused (HTTP 429 with Retry-After)
until the oldest failure leaves the window; a successful sign-in clears the
user name's count (not the address's). Someone who knows a user name can
keep that account refused by failing on purpose: the price of stopping
password guessing; the per-address limit and the audit trail (110114, with
the attempted name and address) show who.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

PER_USER = 5
PER_CLIENT = 20
WINDOW_S = 15 * 60.0
#: most keys remembered (names and addresses); beyond, the stalest are forgotten
MAX_KEYS = 50_000


@dataclass
class LoginLimiter:
    per_user: int = PER_USER
    per_client: int = PER_CLIENT
    window_s: float = WINDOW_S
    _failures: dict[str, deque[float]] = field(default_factory=dict)

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
            if len(times) >= most:
                wait = max(wait, times[len(times) - most] + self.window_s - now)
        return wait

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
