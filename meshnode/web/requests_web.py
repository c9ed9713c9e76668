"""The portal's study requests and prior queries (meshnode/web/static/requests.html), as JSON under
/ui/api/requests. The same node functions as `meshnode request ...` and `meshnode priors`
(meshnode.node.request_routes, meshnode.node.requests):

    GET  /ui/api/requests/outgoing[?before=C]      request  what this node asked others for, with live state (a
                                                            clinician: their own; `queues`: all); 100 a page,
                                                            `before` = the last row's `cursor` for the next
    POST /ui/api/requests                          request  a new request {"holder", "nhs_number"?, "patient_id"?,
                                                            "date_from"?, "date_to"?, "modality"?, "reason",
                                                            "priority"?, "purpose"?}
    POST /ui/api/requests/priors                   request  {"org", "nhs_number"}: the org's studies for the patient
    GET  /ui/api/requests/incoming[?before=C]      queues   what others asked this node for (paged likewise)
    GET  /ui/api/requests/incoming/{id}            queues   one, with the local studies it matches
    POST /ui/api/requests/incoming/{id}/search     queues   local studies of the requested patient, narrowed or
                                                            widened by {"date_from", "date_to", "modality"}
    POST /ui/api/requests/incoming/{id}/approve    queues   {"studies": [...]}: shares them with the requester
    POST /ui/api/requests/incoming/{id}/decline    queues   {"reason"}

A clinician has `request`; deciding needs `queues` (the PACS team). With the session cookie every POST also
needs the X-CSRF-Token header (meshnode.web.app). Each is audited with the user ("user:<name>"): requests
and decisions by the node's request service, every request opened and search made here (Query, 110112),
and each list shown once per user per LIST_AUDIT_EVERY_S (the page polls it every two seconds).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from meshnode.node.request_routes import (
    list_requests,
    query_priors,
    send_request,
    show_request,
    study_list,
)
from meshnode.node.requests import Requests, request_json
from meshnode.node.study_match import search_studies, study_json
from meshnode.storage.audit import AuditEvent, EventCode
from meshnode.web.app import Route, route
from meshnode.web.http import HttpError, json_object, json_response, principal

AuditFn = Callable[[AuditEvent], Awaitable[None]]
MAX_BODY = 16384
#: the page polls its lists every two seconds: a list shown to a user is audited once per this many seconds
#: (per user and list), not on every poll; opening one request or searching is audited every time
LIST_AUDIT_EVERY_S = 600.0
MAX_TRACKED_VIEWERS = 4096


async def _json(request: Request) -> dict[str, Any]:
    return await json_object(request, MAX_BODY)


def _user(request: Request) -> str:
    p = principal(request)
    if p is None:  # the route's access level already required one
        raise HttpError(401, "authentication required")
    return f"user:{p.user}"


class RequestsWeb:
    def __init__(self, requests: Callable[[], Requests], audit: AuditFn) -> None:
        self.requests = requests
        self.audit = audit
        self._listed: dict[tuple[str, str], float] = {}

    def routes(self) -> list[Route]:
        base = "/ui/api/requests"
        return [
            route("GET", f"{base}/outgoing", self.outgoing, "request", "requests-outgoing"),
            route("POST", base, self.create, "request", "requests-create"),
            route("POST", f"{base}/priors", self.priors, "request", "requests-priors"),
            route("GET", f"{base}/incoming", self.incoming, "queues", "requests-incoming"),
            route("GET", f"{base}/incoming/{{id}}", self.show, "queues", "requests-show"),
            route("POST", f"{base}/incoming/{{id}}/search", self.search, "queues", "requests-search"),
            route("POST", f"{base}/incoming/{{id}}/approve", self.approve, "queues", "requests-approve"),
            route("POST", f"{base}/incoming/{{id}}/decline", self.decline, "queues", "requests-decline"),
        ]

    async def _viewed(self, request: Request, what: str, n: int) -> None:
        await self.audit(AuditEvent(EventCode.QUERY, what, actor=_user(request), detail=f"{n} row(s) shown"))

    async def _listed_to(self, request: Request, what: str, n: int) -> None:
        """A list shown (polled): audited when this user was last shown it LIST_AUDIT_EVERY_S ago or more."""
        key, now = (_user(request), what), self.requests().ctx.clock()
        last = self._listed.get(key)
        if last is not None and now - last < LIST_AUDIT_EVERY_S:
            return
        if len(self._listed) >= MAX_TRACKED_VIEWERS:
            self._listed.clear()
        self._listed[key] = now
        await self._viewed(request, what, n)

    async def outgoing(self, request: Request) -> Response:
        """A page of this node's requests: a clinician's own only; the PACS team (`queues`) sees all."""
        p = principal(request)
        mine = None if p is not None and p.may("queues") else _user(request)
        rows = await list_requests(self.requests(), {"direction": "outgoing",
                                                     "before": request.query_params.get("before")},
                                   requested_by=mine)
        await self._listed_to(request, "requests-outgoing-list", len(rows))
        return json_response(200, rows)

    async def incoming(self, request: Request) -> Response:
        rows = await list_requests(self.requests(), {"direction": "incoming",
                                                     "before": request.query_params.get("before")})
        await self._listed_to(request, "requests-incoming-list", len(rows))
        return json_response(200, rows)

    async def create(self, request: Request) -> Response:
        return json_response(200, await send_request(self.requests(), await _json(request), _user(request)))

    async def priors(self, request: Request) -> Response:
        return json_response(200, await query_priors(self.requests(), await _json(request), _user(request)))

    async def show(self, request: Request) -> Response:
        out = await show_request(self.requests(), {"id": str(request.path_params["id"])})
        if out["direction"] != "incoming":
            raise HttpError(404, "no such incoming request")
        await self._viewed(request, "requests-show", 1)
        return json_response(200, out)

    async def search(self, request: Request) -> Response:
        requests = self.requests()
        payload = await _json(request)
        row, req = await requests.incoming_request(str(request.path_params["id"]))
        filters = {k: payload.get(k, "") for k in ("date_from", "date_to", "modality")}
        if not all(isinstance(v, str) and len(v) <= 16 for v in filters.values()):
            raise HttpError(400, "date_from, date_to and modality are short text")
        ids = await requests.patient_of(req)
        rows = await search_studies(requests.ctx, ids, filters["date_from"].replace("-", ""),
                                    filters["date_to"].replace("-", ""), filters["modality"].upper())
        await self._viewed(request, "requests-search", len(rows))
        return json_response(200, [study_json(r) for r in rows])

    async def approve(self, request: Request) -> Response:
        row = await self.requests().approve(str(request.path_params["id"]), study_list(await _json(request)),
                                            decided_by=_user(request))
        return json_response(200, request_json(row))

    async def decline(self, request: Request) -> Response:
        payload = await _json(request)
        reason = payload.get("reason")
        if not isinstance(reason, str):
            raise HttpError(400, "'reason' is required")
        row = await self.requests().decline(str(request.path_params["id"]), reason, decided_by=_user(request))
        return json_response(200, request_json(row))
