"""Requests per minute per client address, in front of a whole ASGI app ([patient_access] requests_per_minute).

A token bucket per client: it holds at most `per_minute` tokens (the burst) and refills at per_minute / 60 a
second; a request takes `cost` tokens, or is answered 429 with Retry-After (whole seconds until it could
pass). `RateLimited` wraps an app so every request under `prefix` passes the limiter before any route sees it:
no route can forget it.

Memory is bounded: at most MAX_CLIENTS buckets; a new client beyond that evicts the one seen least recently
(an attacker with many addresses can only make the limiter forget clients, each of which then starts with a
full bucket again: never more than the burst per address, and no growth).

A client is an IPv4 address, or an IPv6 /64 (client_key): one host or home usually holds a whole /64, so
counting each IPv6 address would give it 2^64 buckets.

`headers`: set on every answer under the prefix unless the route set its own (the patient pages' framing and
opener policy: meshnode.web.patient_listener), the 429 included.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from meshnode.web.http import HttpError, Network, error_response, forwarded_client

#: clients remembered at once (about 320 bytes each: at most ~16 MiB, measured with tracemalloc)
MAX_CLIENTS = 50_000


def client_key(address: str) -> str:
    """The bucket of a client address: an IPv4 address itself, an IPv6 address its /64 (an IPv4-mapped IPv6
    address its IPv4 address); anything else (no address known) as given."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


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
    `cost`: what a request to this path costs (1 when not given; the viewer's many image requests less)."""

    def __init__(self, app: ASGIApp, limiter: RateLimiter, prefix: str = "/",
                 proxies: Sequence[Network] = (), cost: Callable[[str], float] | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        self.app = app
        self.limiter = limiter
        self.prefix = prefix
        self.proxies = tuple(proxies)
        self.cost = cost
        self.headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]

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
        cost = self.cost(path) if self.cost is not None else 1.0
        wait = self.limiter.take(client_key(address), cost)
        if self.headers:
            send = self._with_headers(send)
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

    def _with_headers(self, send: Send) -> Send:
        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in self.headers if k not in present]
                if extra:
                    message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)
        return sending
