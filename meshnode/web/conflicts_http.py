"""The conflict queue over the node's HTTP listener (meshnode.gateway.conflict_desk).

    GET  /api/conflicts?state=pending|all|...     queues permission (pacs role): the conflicts, both digests each
    POST /api/conflicts/{id}/decision             write permission (pacs role): {"decision": "replace" | "keep-both" | "discard",
                                                  "existing_sha256": the stored version seen (optional)}

A decision is audited with the deciding user (`user:<name>`). CSRF (meshnode.web.app): a decision needs the
Authorization header, or the session cookie together with the session's anti-CSRF token (X-CSRF-Token);
no other site can make a browser send either.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import Response

from meshnode.gateway.conflict_desk import ConflictDesk
from meshnode.node.conflict_routes import parse_decision, parse_expected, parse_state
from meshnode.web.app import Route, route
from meshnode.web.http import HttpError, body, is_number, json_response, query
from meshnode.web.services import actor

MAX_BODY = 4096


class ConflictsHttp:
    def __init__(self, desk: Callable[[], ConflictDesk]) -> None:
        self.desk = desk

    def routes(self) -> list[Route]:
        return [
            route("GET", "/api/conflicts", self._list, "queues", "conflicts-list"),
            route("POST", "/api/conflicts/{conflict_id}/decision", self._decide, "write", "conflicts-decide"),
        ]

    async def _list(self, request: Request) -> Response:
        values = query(request).get("state")
        rows = await self.desk().list(parse_state(values[-1] if values else "pending"))
        return json_response(200, [r.json() for r in rows])

    async def _decide(self, request: Request) -> Response:
        raw_id = str(request.path_params.get("conflict_id", ""))
        if not is_number(raw_id):
            raise HttpError(400, "the conflict id is a number")
        try:
            data = json.loads(await body(request, MAX_BODY) or b"{}")
        except ValueError:
            raise HttpError(400, "the body is a JSON object: {\"decision\": ...}") from None
        if not isinstance(data, dict):
            raise HttpError(400, "the body is a JSON object: {\"decision\": ...}")
        conflict_id, decision = parse_decision({"id": int(raw_id), "decision": data.get("decision")})
        expected = parse_expected(data.get("existing_sha256"))  # compare-and-set on the version the user saw
        row = await self.desk().decide(conflict_id, decision, actor(request), expected)
        return json_response(200, row.json())
