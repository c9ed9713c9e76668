"""The HTTP listener's ASGI app: routing, authentication, roles, error mapping, request counters.

Access levels of a route:
    public   anyone (health, the UI's static files, login)
    status   anyone if [http] public_status, else a logged-in user (UI pages without patient identifiers)
    metrics  anyone if [http] public_metrics, else any user
    read / write / audit / reidentify / deid-release   a user with that role

Credentials: `Authorization: Bearer TOKEN` (or Basic with the token as the
password) on every route; or the portal's session cookie (HttpOnly,
SameSite=Strict), with which every state-changing request (not GET/HEAD) must
also carry the session's anti-CSRF token in `X-CSRF-Token`, so no other site
can make a browser change anything with it. A failed authentication is
audited (110114), coalesced per client.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route as StarletteRoute
from starlette.routing import Router
from starlette.types import Message, Receive, Scope, Send

from meshnode.asgi import AnyMethod
from meshnode.dicom.errors import DicomError
from meshnode.storage.audit import AuditEvent, EventCode, Outcome
from meshnode.web.auth import SESSION_COOKIE, Authenticator, Principal, bearer_or_basic
from meshnode.web.config import HttpConfig
from meshnode.web.http import (
    SECURITY_HEADERS,
    HttpError,
    client,
    drain,
    error_response,
    forwarded_client,
    principal,
    set_principal,
    set_route_name,
)
from protocol.errors import MeshError, NotFoundError, UnauthorisedError

log = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]
AuditFn = Callable[[AuditEvent], Awaitable[None]]
ACCESS = ("public", "status", "metrics", "read", "write", "audit", "reidentify", "deid-release", "send", "request",
          "queues", "admin")
#: methods that change nothing: no CSRF token needed with the session cookie
SAFE_METHODS = ("GET", "HEAD")
#: the one state-changing route a browser may call with a session cookie but no CSRF token (there is no
#: session yet, so nothing to forge)
CSRF_EXEMPT = ("/ui/login",)
#: the public patient pages: staff credentials are neither checked nor used there
PATIENT_PREFIX = "/p/"
#: sent (value "1") by the pages on their automatic refreshes: not counted as the session's activity
BACKGROUND_HEADER = "x-meshnode-background"
FAILURE_AUDIT_EVERY_S = 10.0
#: after refusing a request, read at most this much of the rest of its body before answering
DRAIN_MAX = 64 << 20


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    access: str
    name: str


def route(method: str, path: str, handler: Handler, access: str, name: str) -> Route:
    """`path` with {name} placeholders for one path segment each (Starlette's syntax)."""
    if access not in ACCESS:
        raise ValueError(f"unknown access {access!r}")
    return Route(method, path, handler, access, name)


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
    """Starlette's router with this node's access levels, error answers, security headers and counters."""

    def __init__(self, routes: list[Route], auth: Authenticator, config: HttpConfig, audit: AuditFn) -> None:
        self.auth = auth
        self.config = config
        self.audit = audit
        self.failures = FailureAuditor(audit)
        self.stats = HttpStats()
        self.proxies = config.proxy_networks
        by_path: dict[str, dict[str, Route]] = {}
        for r in routes:
            by_path.setdefault(r.path, {})[r.method] = r
        # one Starlette route per path: a wrong method gets a JSON 405 naming every method of the path
        # literal paths before parametrised ones, so /ui/login is never taken for /ui/{page}
        ordered = sorted(by_path.items(), key=lambda item: "{" in item[0])
        self.router = Router([StarletteRoute(path, AnyMethod(self._endpoint(methods)))
                              for path, methods in ordered],
                             default=AnyMethod(self._not_found), redirect_slashes=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            # no route speaks WebSocket: refuse the handshake (the server answers 403) before any route runs
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            await self.router(scope, receive, send)  # lifespan: Starlette answers it
            return
        if self.proxies and scope.get("client"):  # behind a trusted proxy: the client it reports ([http])
            peer, port = scope["client"]
            forwarded = [v.decode("latin-1") for k, v in scope.get("headers", []) if k.lower() == b"x-forwarded-for"]
            scope = {**scope, "client": (forwarded_client(peer, forwarded, self.proxies), port),
                     "meshnode.peer": peer}
        status = 0

        async def counting(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                present = {name.lower() for name, _ in message.get("headers", [])}
                message = {**message, "headers": [*message.get("headers", []),
                                                  *[(k, v) for k, v in SECURITY_HEADERS if k not in present]]}
            elif message["type"] == "http.response.body":
                name = str(scope.get("meshnode.route") or "none")
                self.stats.bytes_sent[name] = self.stats.bytes_sent.get(name, 0) + len(message.get("body", b""))
            await send(message)

        try:
            await self.router(scope, receive, counting)
        except ClientDisconnect:
            log.info("client %s went away during %s %s", _client(scope), scope["method"], scope.get("meshnode.route"))
        except (HttpError, MeshError) as exc:  # from a streamed body, after the status line
            log.warning("%s %s failed after the response started: %s", scope["method"], scope.get("meshnode.route"),
                        exc)
        except trio.Cancelled:
            raise
        except Exception:
            log.exception("%s %s failed", scope["method"], scope.get("meshnode.route"))
            if not status:
                await error_response(HttpError(500, "internal error; see the node's log"))(scope, receive, counting)
        key = (str(scope.get("meshnode.route") or "none"), status)
        self.stats.requests[key] = self.stats.requests.get(key, 0) + 1

    def _endpoint(self, methods: dict[str, Route]) -> Callable[[Request], Awaitable[Response]]:
        allow = ", ".join(sorted(methods))

        async def endpoint(request: Request) -> Response:
            r = methods.get(request.method)
            try:
                if r is None:
                    raise HttpError(405, f"{request.method} is not allowed here", headers={"allow": allow})
                set_route_name(request, r.name)
                await self._authorise(request, r)
                return await r.handler(request)
            except (HttpError, MeshError) as exc:
                return await self._refuse(request, exc)
        return endpoint

    async def _not_found(self, request: Request) -> Response:
        return await self._refuse(request, HttpError(404, f"no such resource: {request.url.path[:200]}"))

    async def _refuse(self, request: Request, exc: HttpError | MeshError) -> Response:
        """The error answer; what is left of the body is read first (an unauthenticated sender is not worth
        reading 64 MiB for), except after a size refusal: then the connection closes."""
        error = exc if isinstance(exc, HttpError) else mesh_http_error(exc)
        drained = error.status != 413 and await drain(request, DRAIN_MAX if principal(request) else 1 << 20)
        return error_response(error, close=not drained)

    async def _authorise(self, request: Request, r: Route) -> None:
        p = await self._principal(request)
        set_principal(request, p)
        if r.access == "public":
            return
        if r.access == "status" and (self.config.public_status or p is not None):
            return
        if r.access == "metrics" and (self.config.public_metrics or p is not None):
            return
        if p is None:
            raise HttpError(401, "authentication required: Authorization: Bearer <API token>",
                            headers={"www-authenticate": 'Bearer realm="meshnode"'})
        if not p.may(r.access):
            self.stats.auth_failures += 1
            await self.audit(AuditEvent(EventCode.USER_AUTHENTICATION, "http-forbidden", Outcome.MINOR_FAILURE,
                                        actor=f"user:{p.user}", detail=f"needs role {r.access} for {r.name}"))
            raise HttpError(403, f"user {p.user} lacks the {r.access!r} role")

    async def _principal(self, request: Request) -> Principal | None:
        if request.url.path.startswith(PATIENT_PREFIX):
            return None  # the patient pages have their own session (meshnode.web.patient_web): staff's count nothing
        header = request.headers.get("authorization", "")
        if header:
            token = bearer_or_basic(header)
            p = await self.auth.token(token) if token else None
            if p is None:
                self.stats.auth_failures += 1
                await self.failures.failed(client(request), request.url.path, "unknown, revoked or expired token")
                raise HttpError(401, "unknown, revoked or expired token",
                                headers={"www-authenticate": 'Bearer realm="meshnode", error="invalid_token"'})
            return p
        session = request.cookies.get(SESSION_COOKIE)
        if session:
            # a page's automatic refresh (X-Meshnode-Background: 1) is not activity: it must not keep an
            # unattended session alive past its idle limit
            p = await self.auth.session(session, touch=request.headers.get(BACKGROUND_HEADER) != "1")
            if (p is not None and request.method not in SAFE_METHODS and request.url.path not in CSRF_EXEMPT
                    and not self.auth.csrf_ok(session, request.headers.get("x-csrf-token", ""))):
                self.stats.auth_failures += 1
                await self.failures.failed(client(request), request.url.path, "missing or wrong CSRF token")
                raise HttpError(403, "missing or wrong CSRF token: send the session's token (GET /ui/api/session) "
                                     "in the X-CSRF-Token header", code="csrf")
            return p
        return None


def _client(scope: Scope) -> str:
    peer = scope.get("client")
    return str(peer[0]) if peer else "unknown"


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
