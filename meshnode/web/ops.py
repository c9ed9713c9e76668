"""/health (load balancers, systemd watchdog) and /metrics (Prometheus)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from meshnode.web.app import Route, WebApp, route
from meshnode.web.http import bytes_response, json_response
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

    async def _live(self, request: Request) -> Response:
        return json_response(200, {"status": "alive"})

    async def _ready(self, request: Request) -> Response:
        ok, checks = await self.health()
        return json_response(200 if ok else 503, {"status": "ok" if ok else "unavailable", "checks": checks})

    async def _metrics(self, request: Request) -> Response:
        app = self.app()
        text = render(await self.snapshot(), self.events, app.stats.requests, app.stats.bytes_sent,
                      app.stats.auth_failures)
        return bytes_response(200, text.encode(), CONTENT_TYPE)
