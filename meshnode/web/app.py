"""The HTTP listener's ASGI app: routing, authentication, roles, error mapping, request counters.

Access levels of a route:
    public   anyone (health, the UI's static files, login)
    status   anyone if [http] public_status, else a logged-in user (UI pages without patient identifiers)
    metrics  anyone if [http] public_metrics, else any user
    read / write / audit   a user with that role

Credentials: `Authorization: Bearer TOKEN` (or Basic with the token as the
password) on every route; the UI's session cookie on GET routes and the UI's
own POSTs (login/logout) only, so no other site can make a browser upload
with it. A failed authentication is audited (110114), coalesced per client.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from meshnode.asgi import answer_lifespan
from meshnode.dicom.errors import DicomError
from meshnode.storage.audit import AuditEvent, EventCode, Outcome
from meshnode.web.auth import SESSION_COOKIE, Authenticator, Principal, bearer_or_basic
from meshnode.web.config import HttpConfig
from meshnode.web.http import (
    ClientDisconnected,
    HttpError,
    Message,
    Receive,
    Request,
    Scope,
    Send,
    send_error,
)
from protocol.errors import MeshError, NotFoundError, UnauthorisedError

log = logging.getLogger(__name__)

Handler = Callable[[Request, Send], Awaitable[None]]
AuditFn = Callable[[AuditEvent], Awaitable[None]]
ACCESS = ("public", "status", "metrics", "read", "write", "audit")
FAILURE_AUDIT_EVERY_S = 10.0
#: after refusing a request, read at most this much of the rest of its body before answering
DRAIN_MAX = 64 << 20


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    access: str
    name: str


def route(method: str, path: str, handler: Handler, access: str, name: str) -> Route:
    """`path` with {name} placeholders for one path segment each."""
    if access not in ACCESS:
        raise ValueError(f"unknown access {access!r}")
    regex = "^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path) + "$"
    return Route(method, re.compile(regex), handler, access, name)


@dataclass
class HttpStats:
    """Counters for /metrics."""

    requests: dict[tuple[str, int], int] = field(default_factory=dict)
    bytes_sent: dict[str, int] = field(default_factory=dict)
    auth_failures: int = 0


class FailureAuditor:
    """Audits failed authentications without letting a flood of them flood the audit log."""

    def __init__(self, audit: AuditFn, clock: Callable[[], float] = time.monotonic) -> None:
        self.audit = audit
        self.clock = clock
        self._last: dict[str, float] = {}
        self._pending: dict[str, int] = {}

    async def failed(self, client: str, path: str, why: str) -> None:
        now = self.clock()
        self._pending[client] = self._pending.get(client, 0) + 1
        if now - self._last.get(client, -FAILURE_AUDIT_EVERY_S) < FAILURE_AUDIT_EVERY_S:
            return
        count = self._pending.pop(client)
        self._last[client] = now
        if len(self._last) > 10_000:
            self._last = {k: v for k, v in self._last.items() if now - v < FAILURE_AUDIT_EVERY_S}
        await self.audit(AuditEvent(EventCode.USER_AUTHENTICATION, "http-auth-failed", Outcome.MINOR_FAILURE,
                                    actor=f"http:{client}",
                                    detail=f"{why} on {path[:120]} ({count} attempt(s) from this client)"))


class WebApp:
    def __init__(self, routes: list[Route], auth: Authenticator, config: HttpConfig, audit: AuditFn) -> None:
        self.routes = routes
        self.auth = auth
        self.config = config
        self.audit = audit
        self.failures = FailureAuditor(audit)
        self.stats = HttpStats()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        status = [0]
        counted = send

        async def counting(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            elif message["type"] == "http.response.body":
                name = request.route_name or "none"
                self.stats.bytes_sent[name] = self.stats.bytes_sent.get(name, 0) + len(message.get("body", b""))
            await counted(message)

        try:
            await self._dispatch(request, counting)
        except ClientDisconnected:
            log.info("client %s went away during %s %s", request.client, request.method, request.route_name)
        except (HttpError, MeshError) as exc:
            error = exc if isinstance(exc, HttpError) else mesh_http_error(exc)
            if status[0]:
                log.warning("%s %s failed after the response started: %s", request.method, request.route_name, exc)
            else:
                # an unauthenticated sender is not worth reading 64 MiB for: its connection closes
                drained = await request.drain(DRAIN_MAX if request.principal else 1 << 20)
                await send_error(counting, error, close=not drained)
        except trio.Cancelled:
            raise
        except Exception:
            log.exception("%s %s failed", request.method, request.route_name)
            if not status[0]:
                await send_error(counting, HttpError(500, "internal error; see the node's log"))
        key = (request.route_name or "none", status[0])
        self.stats.requests[key] = self.stats.requests.get(key, 0) + 1

    async def _dispatch(self, request: Request, send: Send) -> None:
        allowed: list[str] = []
        for r in self.routes:
            m = r.pattern.match(request.path)
            if m is None:
                continue
            if r.method != request.method:
                allowed.append(r.method)
                continue
            request.path_params = m.groupdict()
            request.route_name = r.name
            await self._authorise(request, r)
            await r.handler(request, send)
            return
        if allowed:
            raise HttpError(405, f"{request.method} is not allowed here",
                            headers=[(b"allow", ", ".join(sorted(set(allowed))).encode())])
        raise HttpError(404, f"no such resource: {request.path[:200]}")

    async def _authorise(self, request: Request, r: Route) -> None:
        request.principal = await self._principal(request, r)
        if r.access == "public":
            return
        if r.access == "status" and (self.config.public_status or request.principal is not None):
            return
        if r.access == "metrics" and (self.config.public_metrics or request.principal is not None):
            return
        if request.principal is None:
            raise HttpError(401, "authentication required: Authorization: Bearer <API token>",
                            headers=[(b"www-authenticate", b'Bearer realm="meshnode"')])
        if r.access in ("read", "write", "audit") and not request.principal.may(r.access):
            self.stats.auth_failures += 1
            await self.audit(AuditEvent(EventCode.USER_AUTHENTICATION, "http-forbidden", Outcome.MINOR_FAILURE,
                                        actor=f"user:{request.principal.user}",
                                        detail=f"needs role {r.access} for {r.name}"))
            raise HttpError(403, f"user {request.principal.user} lacks the {r.access!r} role")

    async def _principal(self, request: Request, r: Route) -> Principal | None:
        header = request.header("authorization")
        if header:
            token = bearer_or_basic(header)
            principal = await self.auth.token(token) if token else None
            if principal is None:
                self.stats.auth_failures += 1
                await self.failures.failed(request.client, request.path, "unknown, revoked or expired token")
                raise HttpError(401, "unknown, revoked or expired token",
                                headers=[(b"www-authenticate", b'Bearer realm="meshnode", error="invalid_token"')])
            return principal
        session = request.cookie(SESSION_COOKIE)
        if session and (request.method == "GET" or request.path.startswith("/ui/")):
            return await self.auth.session(session)
        return None


def mesh_http_error(exc: MeshError) -> HttpError:
    if isinstance(exc, DicomError):
        return HttpError(400, f"{exc.name}: {exc}", code=exc.name)
    if isinstance(exc, UnauthorisedError):
        return HttpError(403, str(exc), code=exc.name)
    if isinstance(exc, NotFoundError):
        return HttpError(404, str(exc), code=exc.name)
    if exc.code >= 700 and exc.code < 900:
        return HttpError(503, f"{exc.name}: {exc}", code=exc.name)
    return HttpError(400, f"{exc.name}: {exc}", code=exc.name)
