"""The web UI: static pages from the package, a JSON API, live updates by Server-Sent Events.

    GET  /ui/                 the single page (inbox, outbox, peers, audit)
    GET  /ui/static/{file}    its CSS and JavaScript (no CDN: works without internet)
    (sign-in and sign-out: meshnode.web.signin_web)
    GET  /ui/api/session      who is logged in
    GET  /ui/api/{page}       inbox | outbox | peers | audit (audit needs the audit role)
    GET  /ui/api/events?page= the same data, pushed whenever it changes

Patient identifiers appear only for a logged-in user with the read role.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from importlib import resources
from typing import Any

import trio
from starlette.requests import Request
from starlette.responses import Response

from common.describe import iso
from meshnode.storage.audit import AuditEvent, EventCode
from meshnode.storage.search import AuditQuery
from meshnode.storage.users import permissions
from meshnode.web.app import Handler, Route, route
from meshnode.web.auth import SESSION_COOKIE, Authenticator, bearer_or_basic
from meshnode.web.chain import ChainVerifier
from meshnode.web.http import (
    HttpError,
    ProducedResponse,
    Write,
    bytes_response,
    is_number,
    json_response,
    principal,
    query,
)
from meshnode.web.node_view import NodeView
from meshnode.web.services import WebServices, actor

log = logging.getLogger(__name__)

#: what the UI serves from the package's static/ folder (and its sub-folders), by file extension; any other
#: file there is not served
CONTENT_TYPES = {".js": "text/javascript; charset=utf-8", ".mjs": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".html": "text/html; charset=utf-8", ".png": "image/png",
                 ".svg": "image/svg+xml", ".wasm": "application/wasm", ".json": "application/json",
                 ".woff2": "font/woff2", ".txt": "text/plain; charset=utf-8"}
_STATIC_PATH = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,120}(/[A-Za-z0-9_][A-Za-z0-9_.-]{0,120}){0,4}$")
_PAGE = re.compile(r"^[a-z][a-z0-9-]{0,40}$")
PAGES = ("inbox", "outbox", "peers", "audit")
PUSH_EVERY_S = 1.0
MIN_PUSH_S = 0.25
MAX_ROWS = 500  # newest first; older studies are in `meshnode inbox|outbox --json`
KEEPALIVE_S = 15.0
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self';"
       " frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
#: a page that needs more than CSP (the viewer's WebAssembly codecs need 'wasm-unsafe-eval', its workers
#: worker-src 'self' blob:), by file name
PAGE_CSP: dict[str, str] = {
    # Cornerstone3D: its WebAssembly codecs (JPEG-LS, JPEG 2000, HTJ2K, JPEG baseline, JPEG XL) are compiled in a
    # module worker started from /ui/static/viewer/; its tools draw their mouse cursors as blob: images. No eval,
    # no CDN, nothing from another origin
    "viewer.html": CSP.replace("script-src 'self';", "script-src 'self' 'wasm-unsafe-eval'; worker-src 'self';")
                      .replace("img-src 'self' data:;", "img-src 'self' data: blob:;"),
}
#: a script served as a file: a worker started from it runs under this (a worker's policy is its own
#: response's, not the page's); a script a page loads ignores it. Nothing but this origin's scripts, its
#: WebAssembly codecs and fetches to this origin
SCRIPT_CSP = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; connect-src 'self'"


def _static(name: str) -> bytes | None:
    """A file of the package's static/ folder, or None (a name outside the allowed shapes never reaches the
    file system: no `..`, no leading dot, at most five levels)."""
    if not _STATIC_PATH.match(name) or ".." in name:
        return None
    node = resources.files("meshnode.web").joinpath("static")
    for part in name.split("/"):
        node = node.joinpath(part)
    try:
        return node.read_bytes() if node.is_file() else None
    except OSError:
        return None


def _int(request: Request, name: str) -> int | None:
    values = query(request).get(name)
    if not values or values[-1] == "":
        return None
    if not is_number(values[-1].removeprefix("-")):
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
        self._files: dict[str, bytes | None] = {}

    def routes(self) -> list[Route]:
        return [
            route("GET", "/", self._redirect, "public", "ui-root"),
            route("GET", "/ui", self._redirect, "public", "ui-root"),
            route("GET", "/ui/", self._index, "public", "ui-index"),
            route("GET", "/ui/static/{name:path}", self._asset, "public", "ui-static"),
            route("GET", "/ui/{page}", self._page_file, "public", "ui-page"),
            route("GET", "/ui/api/session", self._session, "public", "ui-session"),
            route("GET", "/ui/api/events", self._events, "status", "ui-events"),
            *[route("GET", f"/ui/api/{page}", self._page_handler(page), "audit" if page == "audit" else "status",
                    f"ui-{page}") for page in PAGES],
        ]

    # -- pages and assets ---------------------------------------------------------------
    async def _redirect(self, request: Request) -> Response:
        return bytes_response(302, b"", "text/plain", {"location": "/ui/"})

    def _file(self, name: str) -> bytes | None:
        if name not in self._files:
            if len(self._files) > 1000:
                self._files.clear()
            self._files[name] = _static(name)
        return self._files[name]

    def html(self, name: str) -> Response:
        return self._html(name)

    def _html(self, name: str) -> Response:
        data = self._file(name)
        if data is None:
            raise HttpError(404, "no such page")
        return bytes_response(200, data, "text/html; charset=utf-8",
                              {"content-security-policy": PAGE_CSP.get(name, CSP), "x-frame-options": "DENY"})

    async def _index(self, request: Request) -> Response:
        return self._html("index.html")

    async def _page_file(self, request: Request) -> Response:
        """/ui/NAME serves the page static/NAME.html (the portal's pages: send, requests, viewer, ...)."""
        page = request.path_params["page"]
        if not _PAGE.match(page):
            raise HttpError(404, "no such page")
        return self._html(page + ".html")

    async def _asset(self, request: Request) -> Response:
        name = request.path_params["name"]
        kind = CONTENT_TYPES.get("." + name.rsplit(".", 1)[-1] if "." in name else "")
        data = self._file(name) if kind else None
        if data is None or kind is None:
            raise HttpError(404, "no such file")
        if kind.startswith("text/html"):
            return self._html(name)
        # the viewer's bundle is megabytes: the browser keeps it and asks again with If-None-Match (a
        # 304 costs nothing); every other response of the listener stays no-store
        etag = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
        headers = {"etag": etag, "cache-control": "private, no-cache"}
        if kind.startswith("text/javascript"):
            headers["content-security-policy"] = SCRIPT_CSP
        if etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
            return Response(b"", 304, headers=headers)
        return bytes_response(200, data, kind, headers)

    async def _session(self, request: Request) -> Response:
        p = principal(request)
        session = request.cookies.get(SESSION_COOKIE, "")
        csrf = self.auth.csrf(session) if p is not None and p.via == "session" else None
        return json_response(200, {"user": p.user if p else None, "roles": list(p.roles) if p else [],
                                    "permissions": sorted(permissions(p.roles)) if p else [],
                                    "csrf": csrf, "org": self.s.org, "method": p.method if p else None,
                                    "public_status": self.s.config.public_status})

    # -- data -------------------------------------------------------------------------------
    def _page_handler(self, page: str) -> Handler:
        async def handle(request: Request) -> Response:
            await self._audit_view(request, page)
            return json_response(200, await self.page(page, request))
        return handle

    def _identifiers(self, request: Request) -> bool:
        p = principal(request)
        return p is not None and p.may("read")

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
        text = (query(request).get("q") or [""])[-1][:100]
        wanted = AuditQuery(code, outcome, text, before, limit)
        entries = await self.s.db.run(lambda store: store.search_audit(wanted))
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

    async def _events(self, request: Request) -> Response:
        """Pushed until the client goes away (Starlette watches for the disconnect and cancels the push)."""
        page = (query(request).get("page") or ["inbox"])[-1]
        if page not in PAGES:
            raise HttpError(400, f"page must be one of {', '.join(PAGES)}")
        p = principal(request)
        if page == "audit" and (p is None or not p.may("audit")):
            raise HttpError(403 if p else 401, "the audit page needs a user with the audit role")
        await self._audit_view(request, page)

        async def push(write: Write) -> None:
            await self._push(page, request, write)

        return ProducedResponse(push, 200, {"x-accel-buffering": "no"}, "text/event-stream; charset=utf-8")

    async def _still_valid(self, request: Request) -> bool:
        p = principal(request)
        if p is None:
            return True
        if p.via == "session":
            session = request.cookies.get(SESSION_COOKIE)
            return session is not None and await self.auth.session(session, touch=False) is not None
        token = bearer_or_basic(request.headers.get("authorization", ""))
        return token is not None and await self.auth.token(token) is not None

    async def _push(self, page: str, request: Request, write: Write) -> None:
        last = b""
        quiet = 0.0
        while True:
            changed = self.changed()
            if not await self._still_valid(request):
                return  # logged out, revoked or expired: the page reconnects and is told
            data = json.dumps(await self.page(page, request), sort_keys=True).encode()
            if data != last:
                await write(b"event: update\ndata: " + data + b"\n\n")
                last, quiet = data, 0.0
            elif quiet >= KEEPALIVE_S:
                await write(b": keepalive\n\n")
                quiet = 0.0
            # at most one recomputation per MIN_PUSH_S however busy the node is, at least one per PUSH_EVERY_S
            await trio.sleep(MIN_PUSH_S)
            with trio.move_on_after(PUSH_EVERY_S - MIN_PUSH_S):
                await changed.wait()
            quiet += PUSH_EVERY_S

