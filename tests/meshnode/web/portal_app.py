"""An in-process portal app for the sign-in tests: the real WebApp with the sign-in, users and session routes,
a user store (memory or SQLite), a settable clock and the audit events it wrote."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyotp
import pytest
from argon2 import PasswordHasher
from starlette.requests import Request
from starlette.responses import Response

from meshnode.storage.audit import AuditEvent
from meshnode.storage.users import User, UserStore, permissions
from meshnode.web import signin
from meshnode.web.app import WebApp, route
from meshnode.web.auth import SESSION_COOKIE, Authenticator
from meshnode.web.config import HttpConfig
from meshnode.web.http import json_response, principal
from meshnode.web.oidc import OidcClient
from meshnode.web.services import WebServices
from meshnode.web.signin_web import SignInWeb
from meshnode.web.users_web import UsersWeb
from tests.meshnode.web.asgi import Reply, call

NOW = 1_767_225_600.0
PASSWORD = "correct horse battery staple"


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@dataclass
class Portal:
    app: WebApp
    store: UserStore
    clock: Clock
    events: list[AuditEvent] = field(default_factory=list)
    secrets: dict[str, str] = field(default_factory=dict)

    async def call(self, method: str, path: str, *, session: str = "", csrf: str = "", json: Any = None,
                   raw: bytes = b"", client: str = "127.0.0.1", query: str = "", content_type: str = "",
                   headers: dict[str, str] | None = None) -> Reply:
        import json as _json
        headers = dict(headers or {})
        if session:
            headers["Cookie"] = f"{SESSION_COOKIE}={session}"
        if csrf:
            headers["X-CSRF-Token"] = csrf
        data = raw
        if content_type:
            headers["Content-Type"] = content_type
        if json is not None:
            headers["Content-Type"] = "application/json"
            data = _json.dumps(json).encode()
        return await call(self.app, method, path, headers=headers, body=data, client=client, query=query)

    def user(self, name: str, *roles: str) -> str:
        """A local user with a password and TOTP; returns their TOTP secret."""
        self.store.add_user(User(name, roles, int(NOW * 1000)))
        enrolment = signin.enrol(self.store, name, PASSWORD, int(NOW * 1000))
        self.secrets[name] = enrolment.totp_secret
        return enrolment.totp_secret

    def code(self, name: str) -> str:
        return pyotp.TOTP(self.secrets[name]).at(self.clock.now)

    async def login(self, name: str, *, password: str = PASSWORD, code: str | None = None,
                    client: str = "127.0.0.1") -> Reply:
        return await self.call("POST", "/ui/login", json={"user": name, "password": password,
                                                          "code": self.code(name) if code is None else code},
                               client=client)

    async def signed_in(self, name: str) -> tuple[str, str]:
        """(session cookie value, CSRF token) of a fresh sign-in (the clock moves to the next TOTP step)."""
        self.clock.now += 30
        reply = await self.login(name)
        assert reply.status == 200, reply.body
        return session_of(reply), str(reply.json()["csrf"])


@pytest.fixture
def cheap_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Argon2 with the smallest cost, so the sign-in tests stay fast (what is tested is the logic around it;
    the node uses argon2-cffi's defaults)."""
    hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    monkeypatch.setattr(signin, "_HASHER", hasher)
    monkeypatch.setattr(signin, "_DUMMY_HASH", hasher.hash("dummy"))


def session_of(reply: Reply) -> str:
    cookie = reply.headers["set-cookie"]
    return cookie.split(";", 1)[0].split("=", 1)[1]


def make_portal(store: UserStore, oidc: OidcClient | None = None, **config: Any) -> Portal:
    clock = Clock()
    http = HttpConfig(listen="127.0.0.1:0", **config)
    portal_events: list[AuditEvent] = []

    async def audit(e: AuditEvent) -> None:
        portal_events.append(e)

    async def whoami(request: Request) -> Response:
        p = principal(request)
        return json_response(200, {"user": p.user if p else None, "method": p.method if p else None,
                                    "permissions": sorted(permissions(p.roles)) if p else []})

    services = WebServices(http, "RGT", None, None, audit, clock)  # type: ignore[arg-type]
    auth = Authenticator(store, clock, http.session_idle_seconds)
    routes = [*SignInWeb(services, auth, oidc).routes(), *UsersWeb(services, auth, "dicom-mesh RGT").routes(),
              route("GET", "/ui/api/whoami", whoami, "public", "whoami"),
              route("POST", "/ui/api/thing", whoami, "read", "thing")]
    return Portal(WebApp(routes, auth, http, audit), store, clock, portal_events)
