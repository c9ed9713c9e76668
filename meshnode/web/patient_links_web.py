"""The staff side of patient links (meshnode/web/static/patient-links.html) as JSON under /ui/api/patient-links:

    GET  /ui/api/patient-links[?kind=share|upload&limit=N&offset=N]   send   the links, newest first, with
                                   their state: {"links": [...], "more": true if older ones follow}
    POST /ui/api/patient-links    {"kind": "share"|"upload", "studies": [UID...] (share), "person", "email",
                                   "code_to": "+44..." or a second email, "days"?}   send   -> {"id"}
    GET  /ui/api/patient-links/{link}                send   one link with its newest history
    POST /ui/api/patient-links/{link}/revoke  {"reason"}     send   (its forwards with it)
    POST /ui/api/patient-links/{link}/unlock  {"reason"}     queues (how the person's identity was checked)

A staff user with `queues` (the PACS team) sees, shows and revokes every link; anyone else with `send` only
the links they made and the shares forwarded from those (another's link is a 404, as if it did not exist).
Unlocking is the PACS team's. With the session cookie every POST also needs X-CSRF-Token (meshnode.web.app).
Bad input is a 400 that changes nothing (the link service checks every value: protocol.patient_link); a
study this node does not hold is a 404; an email that could not be sent is a 503 (the link is withdrawn). Off ([patient_access] enabled = false): every route answers 404.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from meshnode.patient.service import LinkService
from meshnode.web.app import Route, route
from meshnode.web.http import HttpError, json_object, json_response, principal

MAX_BODY = 8192
PAGE = 200
MAX_PAGE = 500
CREATE_KEYS = frozenset({"kind", "studies", "person", "email", "code_to", "days"})


class PatientLinksWeb:
    def __init__(self, links: Callable[[], LinkService | None]) -> None:
        self.links = links

    def routes(self) -> list[Route]:
        base = "/ui/api/patient-links"
        return [
            route("GET", base, self._list, "send", "patient-links-list"),
            route("POST", base, self._create, "send", "patient-links-create"),
            route("GET", f"{base}/{{link}}", self._show, "send", "patient-links-show"),
            route("POST", f"{base}/{{link}}/revoke", self._revoke, "send", "patient-links-revoke"),
            route("POST", f"{base}/{{link}}/unlock", self._unlock, "queues", "patient-links-unlock"),
        ]

    def _service(self) -> LinkService:
        service = self.links()
        if service is None:
            raise HttpError(404, "patient access is off on this node ([patient_access] enabled = false)")
        return service

    @staticmethod
    def _owner(request: Request) -> str | None:
        """None (every link) for the PACS team, else the user: only their links and their forwards."""
        p = principal(request)
        if p is None:
            raise HttpError(401, "authentication required")
        return None if p.may("queues") else f"user:{p.user}"

    @staticmethod
    def _user(request: Request) -> str:
        p = principal(request)
        if p is None:  # the app authorised the route: a principal is there
            raise HttpError(401, "authentication required")
        return f"user:{p.user}"

    async def _list(self, request: Request) -> Response:
        service = self._service()
        unknown = sorted(set(request.query_params) - {"kind", "limit", "offset"})
        if unknown:
            raise HttpError(400, f"unknown parameter {unknown[0][:40]!r}; use kind, limit, offset")
        kind = request.query_params.get("kind") or None
        limit = _number(request, "limit", PAGE, 1, MAX_PAGE)
        offset = _number(request, "offset", 0, 0, 10**9)
        rows = await service.list_links(kind, limit + 1, actor=self._user(request), owner=self._owner(request),
                                        offset=offset)
        return json_response(200, {"links": rows[:limit], "more": len(rows) > limit})

    async def _create(self, request: Request) -> Response:
        service = self._service()
        body = await json_object(request, MAX_BODY)
        unknown = sorted(set(body) - CREATE_KEYS)
        if unknown:
            raise HttpError(400, f"unknown field {unknown[0][:40]!r}; use {', '.join(sorted(CREATE_KEYS))}")
        kind = body.get("kind", "share")
        actor = self._user(request)
        args: dict[str, Any] = {k: body.get(k) for k in ("person", "email", "code_to", "days")}
        if kind == "share":
            link_id = await service.create_share(actor, body.get("studies"), **args)
        elif kind == "upload":
            if body.get("studies") not in (None, []):
                raise HttpError(400, "an upload link has no studies")
            link_id = await service.create_upload(actor, **args)
        else:
            raise HttpError(400, "kind: share or upload")
        return json_response(201, {"id": link_id})

    async def _show(self, request: Request) -> Response:
        return json_response(200, await self._service().history(request.path_params["link"],
                                                                 actor=self._user(request),
                                                                 owner=self._owner(request)))

    async def _revoke(self, request: Request) -> Response:
        service = self._service()
        body = await json_object(request, MAX_BODY)
        if set(body) - {"reason"}:
            raise HttpError(400, "only {\"reason\"} is accepted")
        await service.revoke(self._user(request), request.path_params["link"], body.get("reason"),
                             owner=self._owner(request))
        return json_response(200, {"revoked": True})

    async def _unlock(self, request: Request) -> Response:
        service = self._service()
        body = await json_object(request, MAX_BODY)
        if set(body) - {"reason"}:
            raise HttpError(400, "only {\"reason\"} is accepted")
        await service.unlock(self._user(request), request.path_params["link"], body.get("reason"))
        return json_response(200, {"unlocked": True})


def _number(request: Request, key: str, default: int, least: int, most: int) -> int:
    text = request.query_params.get(key)
    if text is None:
        return default
    if not text.isdigit() or len(text) > 10 or not least <= int(text) <= most:
        raise HttpError(400, f"{key}: a whole number from {least} to {most}")
    return int(text)
