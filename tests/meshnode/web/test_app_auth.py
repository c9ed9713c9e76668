"""Routing, credentials and roles of the HTTP app, and the token/session authenticator."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import trio
from starlette.requests import Request
from starlette.responses import Response

from meshnode.storage.audit import AuditEvent, EventCode
from meshnode.storage.sqlite_users import SqliteUserStore
from meshnode.storage.users import MemoryUserStore, UserStore
from meshnode.web.app import FAILURE_AUDIT_EVERY_S, FailureAuditor, WebApp, route
from meshnode.web.auth import SESSION_COOKIE, Authenticator, add_user, bearer_or_basic, issue_token
from meshnode.web.config import HttpConfig
from meshnode.web.http import json_response, principal
from protocol.errors import LocalProtocolError, NotFoundError
from tests.meshnode.web.asgi import call

NOW = 1_767_225_600.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def make_app(store: UserStore, clock: Clock, **config: object) -> tuple[WebApp, list[AuditEvent]]:
    events: list[AuditEvent] = []

    async def audit(e: AuditEvent) -> None:
        events.append(e)

    async def hello(request: Request) -> Response:
        p = principal(request)
        return json_response(200, {"user": p.user if p else None, "params": request.path_params})

    routes = [route("GET", "/read/{x}", hello, "read", "read"), route("POST", "/write", hello, "write", "write"),
              route("GET", "/status", hello, "status", "status"), route("GET", "/open", hello, "public", "open"),
              route("POST", "/ui/thing", hello, "read", "ui-thing")]
    return WebApp(routes, Authenticator(store, clock), HttpConfig(listen="127.0.0.1:0", **config), audit), events  # type: ignore[arg-type]


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> UserStore:
    return MemoryUserStore() if request.param == "memory" else SqliteUserStore(tmp_path / "node.db")


async def test_roles_and_credentials(store: UserStore) -> None:
    clock = Clock()
    app, events = make_app(store, clock)
    add_user(store, "reader", ("read",), int(NOW * 1000))
    add_user(store, "writer", ("write",), int(NOW * 1000))
    reader, _ = issue_token(store, "reader", "", int(NOW * 1000))
    writer, _ = issue_token(store, "writer", "", int(NOW * 1000))
    ok = await call(app, "GET", "/read/abc", headers={"Authorization": f"Bearer {reader}"})
    assert ok.status == 200 and ok.json() == {"user": "reader", "params": {"x": "abc"}}
    basic = base64.b64encode(f"reader:{reader}".encode()).decode()
    assert (await call(app, "GET", "/read/1", headers={"Authorization": f"Basic {basic}"})).status == 200
    none = await call(app, "GET", "/read/abc")
    assert none.status == 401 and none.headers["www-authenticate"].startswith("Bearer")
    assert (await call(app, "GET", "/read/abc", headers={"Authorization": "Bearer mnt_nope"})).status == 401
    assert (await call(app, "GET", "/read/abc", headers={"Authorization": "Token x"})).status == 401
    assert (await call(app, "GET", "/read/abc", headers={"Authorization": f"Bearer {writer}"})).status == 403
    assert (await call(app, "POST", "/write", headers={"Authorization": f"Bearer {writer}"})).status == 200
    assert (await call(app, "GET", "/status")).status == 200  # public_status by default
    assert (await call(app, "GET", "/open")).json()["user"] is None
    assert (await call(app, "DELETE", "/open")).status == 405
    assert (await call(app, "GET", "/nowhere")).status == 404
    assert [e.action for e in events] == ["http-auth-failed", "http-forbidden"]  # coalesced per client
    assert events[0].code is EventCode.USER_AUTHENTICATION


async def test_status_pages_can_require_login(store: UserStore) -> None:
    app, _ = make_app(store, Clock(), public_status=False)
    assert (await call(app, "GET", "/status")).status == 401


async def test_revoked_expired_disabled_tokens(store: UserStore) -> None:
    clock = Clock()
    app, _ = make_app(store, clock)
    add_user(store, "u", ("read",), int(NOW * 1000))
    token, record = issue_token(store, "u", "", int(NOW * 1000), expires_days=1)
    other, _ = issue_token(store, "u", "", int(NOW * 1000))
    auth = {"Authorization": f"Bearer {token}"}
    assert (await call(app, "GET", "/read/1", headers=auth)).status == 200
    clock.now += 86_400 + 10  # past expiry (and past the cache)
    assert (await call(app, "GET", "/read/1", headers=auth)).status == 401
    assert (await call(app, "GET", "/read/1", headers={"Authorization": f"Bearer {other}"})).status == 200
    store.revoke_token(record.token_id[:8])
    store.disable_user("u")
    clock.now += 10
    assert (await call(app, "GET", "/read/1", headers={"Authorization": f"Bearer {other}"})).status == 401
    with pytest.raises(LocalProtocolError):
        issue_token(store, "u", "", int(NOW * 1000))
    with pytest.raises(NotFoundError):
        store.revoke_token("ffffffffffff")


async def test_sessions_change_nothing_without_their_csrf_token(store: UserStore) -> None:
    clock = Clock()
    app, _ = make_app(store, clock)
    add_user(store, "u", ("read", "write"), int(NOW * 1000))
    token, record = issue_token(store, "u", "", int(NOW * 1000))
    principal = await app.auth.token(token)
    assert principal is not None
    session = app.auth.open_session(principal, hours=1)
    cookie = {"Cookie": f"other=1; {SESSION_COOKIE}={session}"}
    assert (await call(app, "GET", "/read/1", headers=cookie)).json()["user"] == "u"
    # a state-changing request with the cookie alone (what a forged cross-site form sends) is refused,
    # as is one with another session's token or a made-up one; with its own token it goes through
    assert (await call(app, "POST", "/ui/thing", headers=cookie)).status == 403
    assert (await call(app, "POST", "/write", headers=cookie)).status == 403  # no upload by cookie alone
    other_session = app.auth.open_session(principal, hours=1)
    for wrong in (app.auth.csrf(other_session) or "", "made-up", ""):
        assert (await call(app, "POST", "/write", headers={**cookie, "X-CSRF-Token": wrong})).status == 403
    csrf = app.auth.csrf(session)
    assert csrf
    assert (await call(app, "POST", "/ui/thing", headers={**cookie, "X-CSRF-Token": csrf})).status == 200
    assert (await call(app, "POST", "/write", headers={**cookie, "X-CSRF-Token": csrf})).status == 200
    app.auth.close_session(session)
    assert app.auth.csrf(session) is None
    session = app.auth.open_session(principal, hours=1)
    cookie = {"Cookie": f"other=1; {SESSION_COOKIE}={session}"}
    store.revoke_token(record.token_id)
    clock.now += 10
    assert (await call(app, "GET", "/read/1", headers=cookie)).status == 401
    later = app.auth.open_session(principal, hours=1)
    clock.now += 3601
    assert await app.auth.session(later) is None
    assert await app.auth.session("made-up") is None


def test_user_and_token_input_checked() -> None:
    store = MemoryUserStore()
    for bad in ("", "UPPER", "with space", "x" * 65, "-leading"):
        with pytest.raises(LocalProtocolError):
            add_user(store, bad, ("read",), 0)
    with pytest.raises(LocalProtocolError):
        add_user(store, "ok", ("root",), 0)
    with pytest.raises(LocalProtocolError):
        add_user(store, "ok", (), 0)
    add_user(store, "ok", ("write", "read"), 0)
    assert store.user("ok") is not None and store.user("ok").roles == ("read", "write")  # type: ignore[union-attr]
    with pytest.raises(LocalProtocolError):
        add_user(store, "ok", ("read",), 0)
    assert bearer_or_basic("Bearer  abc ") == "abc"
    assert bearer_or_basic("Basic !!!") is None
    assert bearer_or_basic("Basic " + base64.b64encode(b"nocolon").decode()) is None


async def test_failure_audit_is_coalesced() -> None:
    events: list[AuditEvent] = []
    now = [0.0]

    async def audit(e: AuditEvent) -> None:
        events.append(e)

    auditor = FailureAuditor(audit, clock=lambda: now[0])
    for _ in range(50):
        await auditor.failed("10.0.0.1", "/x", "bad token")
    await auditor.failed("10.0.0.2", "/x", "bad token")
    assert len(events) == 2
    now[0] += FAILURE_AUDIT_EVERY_S
    await auditor.failed("10.0.0.1", "/x", "bad token")
    assert len(events) == 3 and "(50 attempt(s)" in events[2].detail
    await trio.lowlevel.checkpoint()


async def test_portal_roles_grant_their_permissions_and_nothing_else(store: UserStore) -> None:
    """clinician: view, send, request; pacs: those plus the queues and STOW; admin: users and policies only;
    auditor: the audit log only."""
    from meshnode.storage.users import permissions
    assert permissions(("clinician",)) == {"read", "send", "request"}
    assert permissions(("pacs",)) >= permissions(("clinician",)) | {"queues", "write"}
    assert permissions(("admin",)) == {"admin"}
    assert permissions(("auditor",)) == {"audit"}
    assert permissions(("clinician", "auditor")) == {"read", "send", "request", "audit"}
    clock = Clock()
    app, _ = make_app(store, clock)
    for name, roles in (("doc", ("clinician",)), ("boss", ("admin",)), ("aud", ("auditor",))):
        add_user(store, name, roles, int(NOW * 1000))
    tokens = {name: issue_token(store, name, "", int(NOW * 1000))[0] for name in ("doc", "boss", "aud")}
    assert (await call(app, "GET", "/read/1", headers={"Authorization": f"Bearer {tokens['doc']}"})).status == 200
    for name in ("boss", "aud"):
        assert (await call(app, "GET", "/read/1",
                           headers={"Authorization": f"Bearer {tokens[name]}"})).status == 403
    assert (await call(app, "POST", "/write", headers={"Authorization": f"Bearer {tokens['doc']}"})).status == 403
