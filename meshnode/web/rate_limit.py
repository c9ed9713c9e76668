"""Requests per minute per client address, in front of a whole ASGI app ([patient_access] requests_per_minute).

A token bucket per client: it holds at most `per_minute` tokens (the burst) and refills at per_minute / 60 a
second; a request takes `cost` tokens, or is answered 429 with Retry-After (whole seconds until it could
pass). `RateLimited` wraps an app so every request under `prefix` passes the limiter before any route sees it:
no route can forget it.

Memory is bounded: at most MAX_CLIENTS buckets; a new client beyond that evicts the one seen least recently
(an attacker with many addresses can only make the limiter forget clients, each of which then starts with a
full bucket again: never more than the burst per address, and no growth).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

from meshnode.web.http import HttpError, Network, error_response, forwarded_client

#: clients remembered at once (about 100 bytes each)
MAX_CLIENTS = 50_000


class RateLimiter:
    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic,
                 max_clients: int = MAX_CLIENTS) -> None:
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.clock = clock
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, at)
        self.refused = 0

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, client: str, cost: float = 1.0) -> float:
        """0 if the request may pass (its cost taken); else the seconds until it could."""
        now = self.clock()
        tokens, at = self._buckets.pop(client, (self.capacity, now))
        tokens = min(self.capacity, tokens + max(0.0, now - at) * self.rate)
        wait = 0.0
        if tokens >= cost:
            tokens -= cost
        else:
            wait = (cost - tokens) / self.rate
            self.refused += 1
        self._buckets[client] = (tokens, now)  # most recently seen last
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait


class RateLimited:
    """`app` with every request whose path starts with `prefix` counted against `limiter` by client address
    (the TCP peer's, or behind one of `proxies` the address it reports: meshnode.web.http.forwarded_client).
    `costs`: path prefixes that cost other than 1 (the viewer's many image requests)."""

    def __init__(self, app: ASGIApp, limiter: RateLimiter, prefix: str = "/",
                 proxies: Sequence[Network] = (), costs: Sequence[tuple[str, float]] = ()) -> None:
        self.app = app
        self.limiter = limiter
        self.prefix = prefix
        self.proxies = tuple(proxies)
        self.costs = tuple(costs)

    def __getattr__(self, name: str) -> object:  # the wrapped WebApp's stats, config, ... for whoever asks
        return getattr(self.app, name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        peer = scope.get("client")
        address = str(peer[0]) if peer else "unknown"
        if self.proxies and peer:
            forwarded = [v.decode("latin-1") for k, v in scope.get("headers", []) if k.lower() == b"x-forwarded-for"]
            address = forwarded_client(address, forwarded, self.proxies)
        path = str(scope["path"])
        cost = next((c for p, c in self.costs if path.startswith(p)), 1.0)
        wait = self.limiter.take(address, cost)
        if wait > 0:
            retry = str(max(1, math.ceil(wait)))
            error = HttpError(429, f"too many requests from your address: try again in {retry} s",
                              headers={"retry-after": retry, "referrer-policy": "no-referrer",
                                       "cache-control": "no-store", "x-content-type-options": "nosniff"},
                              code="rate-limited")
            # the body is not read: close the connection after answering
            await error_response(error, close=True)(scope, receive, send)
            return
        await self.app(scope, receive, send)
