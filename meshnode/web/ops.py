"""/health (load balancers, systemd watchdog) and /metrics (Prometheus)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from meshnode.web.app import Route, WebApp, route
from meshnode.web.http import Request, Send, send_bytes, send_json
from meshnode.web.metrics import CONTENT_TYPE, EventMetrics, MetricsSnapshot, render

Health = Callable[[], Awaitable[tuple[bool, dict[str, object]]]]
Snapshot = Callable[[], Awaitable[MetricsSnapshot]]


class Ops:
    def __init__(self, health: Health, snapshot: Snapshot, events: EventMetrics, app: Callable[[], WebApp]) -> None:
        self.health = health
        self.snapshot = snapshot
        self.events = events
        self.app = app

    def routes(self) -> list[Route]:
        return [
            route("GET", "/health", self._ready, "public", "health"),
            route("GET", "/health/ready", self._ready, "public", "health"),
            route("GET", "/health/live", self._live, "public", "health-live"),
            route("GET", "/metrics", self._metrics, "metrics", "metrics"),
        ]

    async def _live(self, request: Request, send: Send) -> None:
        await send_json(send, 200, {"status": "alive"})

    async def _ready(self, request: Request, send: Send) -> None:
        ok, checks = await self.health()
        await send_json(send, 200 if ok else 503, {"status": "ok" if ok else "unavailable", "checks": checks})

    async def _metrics(self, request: Request, send: Send) -> None:
        app = self.app()
        text = render(await self.snapshot(), self.events, app.stats.requests, app.stats.bytes_sent,
                      app.stats.auth_failures)
        await send_bytes(send, 200, text.encode(), CONTENT_TYPE)
