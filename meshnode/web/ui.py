"""The web UI: static pages from the package, a JSON API, live updates by Server-Sent Events.

    GET  /ui/                 the single page (inbox, outbox, peers, audit)
    GET  /ui/static/{file}    its CSS and JavaScript (no CDN: works without internet)
    POST /ui/login            {token} -> HttpOnly, SameSite=Strict session cookie (audited, 110114)
    POST /ui/logout
    GET  /ui/api/session      who is logged in
    GET  /ui/api/{page}       inbox | outbox | peers | audit (audit needs the audit role)
    GET  /ui/api/events?page= the same data, pushed whenever it changes

Patient identifiers appear only for a logged-in user with the read role.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from importlib import resources
from typing import Any

import trio

from common.describe import iso
from meshnode.storage.audit import AuditEvent, EventCode, Outcome
from meshnode.storage.search import AuditQuery
from meshnode.web.app import Handler, Route, route
from meshnode.web.auth import SESSION_COOKIE, Authenticator, bearer_or_basic
from meshnode.web.chain import ChainVerifier
from meshnode.web.http import HttpError, Request, Send, send_body, send_bytes, send_json, start_response
from meshnode.web.node_view import NodeView
from meshnode.web.services import WebServices, actor

log = logging.getLogger(__name__)

STATIC = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
PAGES = ("inbox", "outbox", "peers", "audit")
PUSH_EVERY_S = 1.0
MIN_PUSH_S = 0.25
MAX_ROWS = 500  # newest first; older studies are in `meshnode inbox|outbox --json`
KEEPALIVE_S = 15.0
CSP = (b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self';"
       b" frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


def _static(name: str) -> bytes:
    return resources.files("meshnode.web").joinpath("static", name).read_bytes()


def _int(request: Request, name: str) -> int | None:
    values = request.query.get(name)
    if not values or values[-1] == "":
        return None
    if not values[-1].lstrip("-").isdigit():
        raise HttpError(400, f"{name} must be an integer")
    return int(values[-1])


class Ui:
    def __init__(self, services: WebServices, auth: Authenticator, view: NodeView, chain: ChainVerifier,
                 changed: Callable[[], trio.Event]) -> None:
        self.s = services
        self.auth = auth
        self.view = view
        self.chain = chain
        self.changed = changed
        self._files = {name: _static(name) for name in (*STATIC, "index.html")}

    def routes(self) -> list[Route]:
        return [
            route("GET", "/", self._redirect, "public", "ui-root"),
            route("GET", "/ui", self._redirect, "public", "ui-root"),
            route("GET", "/ui/", self._index, "public", "ui-index"),
            route("GET", "/ui/static/{name}", self._asset, "public", "ui-static"),
            route("POST", "/ui/login", self._login, "public", "ui-login"),
            route("POST", "/ui/logout", self._logout, "public", "ui-logout"),
            route("GET", "/ui/api/session", self._session, "public", "ui-session"),
            route("GET", "/ui/api/events", self._events, "status", "ui-events"),
            *[route("GET", f"/ui/api/{page}", self._page_handler(page), "audit" if page == "audit" else "status",
                    f"ui-{page}") for page in PAGES],
        ]

    # -- pages and assets ---------------------------------------------------------------
    async def _redirect(self, request: Request, send: Send) -> None:
        await send_bytes(send, 302, b"", "text/plain", [(b"location", b"/ui/")])

    async def _index(self, request: Request, send: Send) -> None:
        await send_bytes(send, 200, self._files["index.html"], "text/html; charset=utf-8",
                         [(b"content-security-policy", CSP), (b"x-frame-options", b"DENY")])

    async def _asset(self, request: Request, send: Send) -> None:
        name = request.path_params["name"]
        if name not in STATIC:
            raise HttpError(404, "no such file")
        await send_bytes(send, 200, self._files[name], STATIC[name])

    # -- login ------------------------------------------------------------------------------
    async def _login(self, request: Request, send: Send) -> None:
        form = await request.form()
        token = form.get("token", "").strip()
        principal = await self.auth.token(token) if token else None
        if principal is None:
            await self.s.audit(AuditEvent(EventCode.USER_AUTHENTICATION, "ui-login", Outcome.MINOR_FAILURE,
                                          actor=f"http:{request.client}", detail="unknown, revoked or expired token"))
            raise HttpError(401, "unknown, revoked or expired token")
        session = self.auth.open_session(principal, self.s.config.session_hours)
        await self.s.audit(AuditEvent(EventCode.USER_AUTHENTICATION, "ui-login", actor=f"user:{principal.user}",
                                      detail=f"token {principal.token_id} from {request.client}"))
        secure = "; Secure" if request.scheme == "https" else ""
        cookie = (f"{SESSION_COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict; "
                  f"Max-Age={self.s.config.session_hours * 3600}{secure}")
        await send_json(send, 200, {"user": principal.user, "roles": list(principal.roles)},
                        headers=[(b"set-cookie", cookie.encode())])

    async def _logout(self, request: Request, send: Send) -> None:
        session = request.cookie(SESSION_COOKIE)
        if session:
            self.auth.close_session(session)
        if request.principal is not None:
            await self.s.audit(AuditEvent(EventCode.USER_AUTHENTICATION, "ui-logout", actor=actor(request)))
        await send_json(send, 200, {"user": None}, headers=[
            (b"set-cookie", f"{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0".encode())])

    async def _session(self, request: Request, send: Send) -> None:
        p = request.principal
        await send_json(send, 200, {"user": p.user if p else None, "roles": list(p.roles) if p else [],
                                    "org": self.s.org, "public_status": self.s.config.public_status})

    # -- data -------------------------------------------------------------------------------
    def _page_handler(self, page: str) -> Handler:
        async def handle(request: Request, send: Send) -> None:
            await self._audit_view(request, page)
            await send_json(send, 200, await self.page(page, request))
        return handle

    def _identifiers(self, request: Request) -> bool:
        return request.principal is not None and request.principal.may("read")

    async def _audit_view(self, request: Request, page: str) -> None:
        if page == "audit":
            await self.s.audit(AuditEvent(EventCode.AUDIT_LOG_USED, "ui-audit-view", actor=actor(request)))
        elif page in ("inbox", "outbox") and self._identifiers(request):
            await self.s.audit(AuditEvent(EventCode.INSTANCES_ACCESSED, f"ui-{page}-view", actor=actor(request),
                                          detail="study list with patient identifiers"))

    async def page(self, page: str, request: Request) -> Any:
        if page == "inbox":
            return {"rows": (await self.view.inbox(self._identifiers(request)))[:MAX_ROWS],
                    "identifiers": self._identifiers(request)}
        if page == "outbox":
            return {"rows": (await self.view.outbox(self._identifiers(request)))[:MAX_ROWS],
                    "identifiers": self._identifiers(request)}
        if page == "peers":
            return await self.view.peers()
        if page == "audit":
            return await self._audit_page(request)
        raise HttpError(404, f"no page {page!r}")

    async def _audit_page(self, request: Request) -> Any:
        code, outcome, before = _int(request, "code"), _int(request, "outcome"), _int(request, "before")
        limit = min(max(_int(request, "limit") or 200, 1), 1000)
        text = (request.query.get("q") or [""])[-1][:100]
        query = AuditQuery(code, outcome, text, before, limit)
        entries = await self.s.db.run(lambda store: store.search_audit(query))
        status = await self.chain.check()
        return {
            "entries": [{"seq": e.seq, "time": iso(e.at_ms // 1000), "code": int(e.event.code),
                         "event": e.event.code.name, "action": e.event.action, "outcome": int(e.event.outcome),
                         "actor": e.event.actor, "actor_org": e.event.actor_org, "study": e.event.study,
                         "manifest_id": e.event.manifest_id, "detail": e.event.detail} for e in entries],
            "chain": {"intact": status.intact, "verified_through": status.verified_through,
                      "problems": [{"seq": p.seq, "problem": p.problem} for p in status.problems],
                      "last_full_verification": iso(int(status.last_full_at)) if status.last_full_at else None,
                      "checked_at": iso(int(status.checked_at))},
        }

    async def _events(self, request: Request, send: Send) -> None:
        page = (request.query.get("page") or ["inbox"])[-1]
        if page not in PAGES:
            raise HttpError(400, f"page must be one of {', '.join(PAGES)}")
        if page == "audit" and (request.principal is None or not request.principal.may("audit")):
            raise HttpError(403 if request.principal else 401, "the audit page needs a user with the audit role")
        await self._audit_view(request, page)
        await start_response(send, 200, "text/event-stream; charset=utf-8", [(b"x-accel-buffering", b"no")])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._until_disconnect, request, nursery.cancel_scope)
            await self._push(page, request, send)

    async def _until_disconnect(self, request: Request, scope: trio.CancelScope) -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                scope.cancel()
                return

    async def _still_valid(self, request: Request) -> bool:
        p = request.principal
        if p is None:
            return True
        if p.via == "session":
            session = request.cookie(SESSION_COOKIE)
            return session is not None and await self.auth.session(session) is not None
        token = bearer_or_basic(request.header("authorization"))
        return token is not None and await self.auth.token(token) is not None

    async def _push(self, page: str, request: Request, send: Send) -> None:
        last = b""
        quiet = 0.0
        while True:
            changed = self.changed()
            if not await self._still_valid(request):
                return  # logged out, revoked or expired: the page reconnects and is told
            data = json.dumps(await self.page(page, request), sort_keys=True).encode()
            if data != last:
                await send_body(send, b"event: update\ndata: " + data + b"\n\n")
                last, quiet = data, 0.0
            elif quiet >= KEEPALIVE_S:
                await send_body(send, b": keepalive\n\n")
                quiet = 0.0
            # at most one recomputation per MIN_PUSH_S however busy the node is, at least one per PUSH_EVERY_S
            await trio.sleep(MIN_PUSH_S)
            with trio.move_on_after(PUSH_EVERY_S - MIN_PUSH_S):
                await changed.wait()
            quiet += PUSH_EVERY_S

