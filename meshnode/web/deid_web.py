"""Research shares on the HTTP listener: the held queue and its decisions, and the re-link export.

    GET  /deid/held                              queues        research shares held (pixel risk), with what a
                                                               reviewer needs to find each instance
    GET  /deid/held/{share}/instances/{n}.png    deid-release  frame 1 of a held instance, rendered (review)
    POST /deid/held/{share}/release              deid-release  body {"include_risky": bool, "reason": "..."}
    POST /deid/held/{share}/refuse               deid-release  body {"reason": "..."}
    POST /deid/relink/{project}                  reidentify    the project's pseudonym -> original table

Decisions need the dedicated `deid-release` role (not `write`, which STOW service tokens hold), and a
reason (mandatory when instances at pixel risk are released).

The held list needs the `queues` permission (the pacs role), not `read` (a clinician). POSTs need the
Authorization header, or the session cookie together with the session's anti-CSRF token (X-CSRF-Token,
meshnode.web.app), so another site cannot make a browser decide. The deciding user is audited.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from meshnode.node.deid_routes import held_json
from meshnode.node.research_share import ResearchShares
from meshnode.storage.audit import AuditEvent, EventCode
from meshnode.storage.research_store import ResearchState
from meshnode.study.preview import PreviewError, render_png
from meshnode.web.app import Route, route
from meshnode.web.http import HttpError, json_object, json_response, principal
from protocol.errors import NotFoundError

MAX_BODY = 4096


class DeidWeb:
    def __init__(self, research: Callable[[], ResearchShares | None]) -> None:
        self.research = research

    def routes(self) -> list[Route]:
        return [
            route("GET", "/deid/held", self._held, "queues", "deid-held"),
            route("GET", "/deid/held/{share}/instances/{n}.png", self._preview, "deid-release", "deid-preview"),
            route("POST", "/deid/held/{share}/release", self._release, "deid-release", "deid-release"),
            route("POST", "/deid/held/{share}/refuse", self._refuse, "deid-release", "deid-refuse"),
            route("POST", "/deid/relink/{project}", self._relink, "reidentify", "deid-relink"),
        ]

    def _shares(self) -> ResearchShares:
        research = self.research()
        if research is None:
            raise NotFoundError("research shares are not available on this node")
        return research

    @staticmethod
    def _actor(request: Request) -> str:
        p = principal(request)
        if p is None:  # the app authorised the route: a principal is there
            raise HttpError(401, "authentication required")
        return f"user:{p.user}"

    @staticmethod
    async def _json(request: Request) -> dict[str, Any]:
        return await json_object(request, MAX_BODY)

    async def _held(self, request: Request) -> Response:
        shares = self._shares()
        rows = await shares.ctx.db.run(lambda s: s.research_shares(ResearchState.HELD))
        return json_response(200, [held_json(r) for r in rows])

    async def _release(self, request: Request) -> Response:
        value = await self._json(request)
        include = value.get("include_risky", False)
        if not isinstance(include, bool):
            raise HttpError(400, "'include_risky' must be true or false")
        reason = value.get("reason", "")
        if not isinstance(reason, str) or (include and not reason.strip()):
            raise HttpError(400, "'reason' is required (what was checked) to release instances at pixel risk")
        outcome = await self._shares().release(request.path_params["share"], include, actor=self._actor(request),
                                               reason=reason)
        return json_response(200, outcome.to_json())

    async def _refuse(self, request: Request) -> Response:
        value = await self._json(request)
        reason = value.get("reason")
        if not isinstance(reason, str) or not reason.strip():
            raise HttpError(400, "'reason' is required")
        row = await self._shares().refuse(request.path_params["share"], reason, actor=self._actor(request))
        return json_response(200, held_json(row))

    async def _preview(self, request: Request) -> Response:
        try:
            n = int(request.path_params["n"])
        except ValueError:
            raise HttpError(404, "no such instance") from None
        shares = self._shares()
        data = await shares.held_instance(request.path_params["share"], n)
        try:
            png = await shares.ctx.worker.run(lambda: render_png(data))
        except PreviewError as exc:
            raise HttpError(422, str(exc)) from None
        await shares.ctx.audit(AuditEvent(EventCode.INSTANCES_ACCESSED, "deid-preview", actor=self._actor(request),
                                          actor_org=shares.ctx.org,
                                          detail=f"research share {request.path_params['share']}: instance {n}"))
        return Response(png, 200, media_type="image/png", headers={"cache-control": "no-store"})

    async def _relink(self, request: Request) -> Response:
        entries = await self._shares().export_relink(request.path_params["project"], actor=self._actor(request))
        return json_response(200, [{"kind": k, "pseudonym": p, "original": o} for k, p, o in entries])
