"""The users page's JSON API (permission `admin`): the same store functions as `meshnode users`.

    GET  /ui/api/users?q=TEXT&limit=N       search (type-ahead): name, display name or email contains TEXT
    POST /ui/api/users                      {name, roles, display_name, email} -> the user, a generated
                                            password and TOTP secret/URI (shown once)
    POST /ui/api/users/{name}/roles         {roles}
    POST /ui/api/users/{name}/profile       {display_name, email}
    POST /ui/api/users/{name}/disable       disables and revokes every token
    POST /ui/api/users/{name}/enable
    POST /ui/api/users/{name}/reset         a new generated password and TOTP secret (shown once)

Every change is audited (110113, actor user:<admin>) and ends the user's open sessions at once (they end
within seconds on their own as well: meshnode.web.auth re-reads the user).
"""

from __future__ import annotations

import unicodedata
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from common.describe import iso
from meshnode.storage.audit import AuditEvent, EventCode, Outcome
from meshnode.storage.users import (
    ROLES,
    SEARCH_LIMIT,
    User,
    check_display_name,
    check_email,
    check_roles,
    check_user_name,
)
from meshnode.web import signin
from meshnode.web.app import Route, route
from meshnode.web.auth import Authenticator
from meshnode.web.http import (
    HttpError,
    is_number,
    json_object,
    json_response,
    principal,
    query,
)
from meshnode.web.services import WebServices, actor
from protocol.errors import NotFoundError

MAX_BODY = 4096


def user_view(u: User) -> dict[str, object]:
    return {"name": u.name, "roles": list(u.roles), "display_name": u.display_name, "email": u.email,
            "source": u.source, "disabled": u.disabled, "created": iso(u.created_ms // 1000)}


def enrolment_view(e: signin.Enrolment) -> dict[str, object]:
    return {"user": e.user, "password": e.password or None, "totp_secret": e.totp_secret, "totp_uri": e.totp_uri}


async def _json(request: Request) -> dict[str, Any]:
    return await json_object(request, MAX_BODY)


def _text(fields: dict[str, Any], key: str) -> str:
    value = fields.get(key, "")
    if not isinstance(value, str):
        raise HttpError(400, f"{key} must be a string")
    return value


def _roles(fields: dict[str, Any]) -> tuple[str, ...]:
    roles = fields.get("roles")
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles) or len(roles) > len(ROLES):
        raise HttpError(400, f"roles must be a list of: {', '.join(ROLES)}")
    return check_roles(tuple(roles))


class UsersWeb:
    def __init__(self, services: WebServices, auth: Authenticator, issuer: str) -> None:
        self.s = services
        self.auth = auth
        self.issuer = issuer

    def routes(self) -> list[Route]:
        return [
            route("GET", "/ui/api/users", self._search, "admin", "ui-users-search"),
            route("POST", "/ui/api/users", self._add, "admin", "ui-users-add"),
            route("POST", "/ui/api/users/{name}/roles", self._set_roles, "admin", "ui-users-roles"),
            route("POST", "/ui/api/users/{name}/profile", self._profile, "admin", "ui-users-profile"),
            route("POST", "/ui/api/users/{name}/disable", self._disable, "admin", "ui-users-disable"),
            route("POST", "/ui/api/users/{name}/enable", self._enable, "admin", "ui-users-enable"),
            route("POST", "/ui/api/users/{name}/reset", self._reset, "admin", "ui-users-reset"),
        ]

    async def _audit(self, request: Request, action: str, detail: str) -> None:
        await self.s.audit(AuditEvent(EventCode.SECURITY_ALERT, action, actor=actor(request), detail=detail[:300]))

    def _name(self, request: Request) -> str:
        return check_user_name(str(request.path_params["name"]))

    async def _existing(self, name: str) -> User:
        user = await self.auth.run_sync(lambda: self.auth.store.user(name))
        if user is None:
            raise NotFoundError(f"no user {name!r}")
        return user

    async def _search(self, request: Request) -> Response:
        text = (query(request).get("q") or [""])[-1][:100]
        if any(unicodedata.category(ch) == "Cc" for ch in text):  # NUL and the like: no name has them
            raise HttpError(400, "the search text has a control character")
        raw_limit = (query(request).get("limit") or [str(SEARCH_LIMIT)])[-1]
        limit = min(max(int(raw_limit), 1), 200) if is_number(raw_limit) else SEARCH_LIMIT
        found = await self.auth.run_sync(lambda: self.auth.store.search_users(text, limit))
        return json_response(200, {"users": [user_view(u) for u in found], "roles": list(ROLES)})

    async def _add(self, request: Request) -> Response:
        fields = await _json(request)
        name = check_user_name(_text(fields, "name").strip().lower())
        roles = _roles(fields)
        display, email = check_display_name(_text(fields, "display_name")), check_email(_text(fields, "email"))
        now_ms = int(self.s.clock() * 1000)

        def add() -> signin.Enrolment:
            self.auth.store.add_user(User(name, roles, now_ms, display_name=display, email=email))
            return signin.enrol(self.auth.store, name, "", now_ms, self.issuer)

        enrolment = await self.auth.run_sync(add)
        await self._audit(request, "user-added", f"{name} roles={','.join(roles)} (portal)")
        return json_response(200, {"user": user_view(await self._existing(name)), **enrolment_view(enrolment)})

    async def _set_roles(self, request: Request) -> Response:
        name, roles = self._name(request), _roles(await _json(request))
        p = principal(request)
        if p is not None and p.user == name:
            # an admin granting themself patient-data roles (or keeping admin while changing others) is a
            # second person's decision: another admin, or someone at the node's console (meshnode users roles)
            await self.s.audit(AuditEvent(EventCode.SECURITY_ALERT, "user-roles-self", Outcome.MINOR_FAILURE,
                                          actor=actor(request),
                                          detail=f"{name} tried to set their own roles to {','.join(roles)}: refused"))
            raise HttpError(403, "you cannot change your own roles: ask another admin, or use `meshnode users "
                                 "roles` on the node", code="own-roles")
        if (await self._existing(name)).roles == roles:
            return json_response(200, {"user": user_view(await self._existing(name)), "sessions_ended": 0})
        await self.auth.run_sync(lambda: self.auth.store.set_roles(name, roles))
        ended = self.auth.end_sessions(name)
        await self._audit(request, "user-roles", f"{name} roles={','.join(roles)}, {ended} session(s) ended")
        return json_response(200, {"user": user_view(await self._existing(name)), "sessions_ended": ended})

    async def _profile(self, request: Request) -> Response:
        name, fields = self._name(request), await _json(request)
        display, email = check_display_name(_text(fields, "display_name")), check_email(_text(fields, "email"))
        await self.auth.run_sync(lambda: self.auth.store.set_profile(name, display, email))
        await self._audit(request, "user-profile", f"{name}")
        return json_response(200, {"user": user_view(await self._existing(name))})

    async def _disable(self, request: Request) -> Response:
        name = self._name(request)
        revoked = await self.auth.run_sync(lambda: self.auth.store.disable_user(name))
        ended = self.auth.end_sessions(name)
        await self._audit(request, "user-disabled", f"{name}, {revoked} token(s) revoked, {ended} session(s) ended")
        return json_response(200, {"user": user_view(await self._existing(name)), "tokens_revoked": revoked,
                                    "sessions_ended": ended})

    async def _enable(self, request: Request) -> Response:
        name = self._name(request)
        await self.auth.run_sync(lambda: self.auth.store.set_disabled(name, False))
        await self._audit(request, "user-enabled", name)
        return json_response(200, {"user": user_view(await self._existing(name))})

    async def _reset(self, request: Request) -> Response:
        name = self._name(request)
        now_ms = int(self.s.clock() * 1000)
        enrolment = await self.auth.run_sync(lambda: signin.enrol(self.auth.store, name, "", now_ms, self.issuer))
        ended = self.auth.end_sessions(name)
        await self._audit(request, "user-credentials-reset", f"{name}, {ended} session(s) ended (portal)")
        return json_response(200, {"user": user_view(await self._existing(name)), **enrolment_view(enrolment),
                                    "sessions_ended": ended})
