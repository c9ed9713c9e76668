"""The reconciliation queue and the patient lookup table on the HTTP listener, for PACS-team users.

    GET  /reconcile                        queues  the queue (?all=1: decided ones too)
    POST /reconcile/{manifest}/match       write   {"local_id": ...} or {"record": {local_id, issuer, nhs_number,
                                                   name, birth_date, sex}}, "override_reason"?: needed when
                                                   the record's NHS number is not the study's (audited)
    POST /reconcile/{manifest}/reject      write   {"reason": ...}
    GET  /patients                         queues  the lookup table (?nhs_number=...)
    POST /patients                         write   {"record": {...}}: add or replace one record
    POST /patients/delete                  write   {"local_id": ...}

The lists need the `queues` permission (the pacs role; not `read`, which a clinician holds: the lookup table
is every patient's identifiers); decisions and edits need `write` (the pacs role has it). CSRF-safe as the
rest of the listener (meshnode.web.app): a POST needs the API token in the Authorization header, or the
session cookie together with the session's anti-CSRF token (X-CSRF-Token), which no other site can read.
Every decision and edit is audited as "user:<name>".
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from meshnode.gateway import reconcile_api
from meshnode.gateway.reconciler import Reconciler
from meshnode.node.retry_driver import Database
from meshnode.storage.audit import AuditEvent, EventCode
from meshnode.web.app import Route, route
from meshnode.web.http import (
    HttpError,
    json_object,
    json_response,
    principal,
    query,
)

AuditFn = Callable[..., Awaitable[None]]
MAX_BODY = 16384


async def _json(request: Request) -> dict[str, Any]:
    return await json_object(request, MAX_BODY)


def _user(request: Request) -> str:
    p = principal(request)
    if p is None:  # the route's access level already required one
        raise HttpError(401, "authentication required")
    return f"user:{p.user}"


class ReconcileWeb:
    def __init__(self, reconciler: Callable[[], Reconciler], db: Database, audit: AuditFn,
                 clock: Callable[[], float]) -> None:
        self.reconciler = reconciler
        self.db = db
        self.audit = audit
        self.clock = clock

    def routes(self) -> list[Route]:
        return [
            route("GET", "/reconcile", self.queue, "queues", "reconcile-list"),
            route("POST", "/reconcile/{manifest}/match", self.match, "write", "reconcile-match"),
            route("POST", "/reconcile/{manifest}/reject", self.reject, "write", "reconcile-reject"),
            route("GET", "/patients", self.patients, "queues", "patients-list"),
            route("POST", "/patients", self.put, "write", "patients-set"),
            route("POST", "/patients/delete", self.delete, "write", "patients-delete"),
        ]

    async def _viewed(self, request: Request, what: str, n: int) -> None:
        """Patient identifiers were shown: audited (Query, 110112) with the user."""
        await self.audit(AuditEvent(EventCode.QUERY, what, actor=_user(request), detail=f"{n} row(s) shown"))

    async def queue(self, request: Request) -> Response:
        everything = query(request).get("all", ["0"])[-1] in ("1", "true")
        rows = await reconcile_api.queue(self.reconciler(), {"all": everything})
        await self._viewed(request, "reconcile-list", len(rows))
        return json_response(200, rows)

    async def _decide(self, request: Request, action: str) -> Response:
        payload = await _json(request)
        payload = {k: v for k, v in payload.items() if k in ("local_id", "record", "reason", "override_reason")}
        payload.update(manifest=str(request.path_params["manifest"]), action=action)
        return json_response(200, await reconcile_api.decide(self.reconciler(), payload, _user(request)))

    async def match(self, request: Request) -> Response:
        return await self._decide(request, "match")

    async def reject(self, request: Request) -> Response:
        return await self._decide(request, "reject")

    async def patients(self, request: Request) -> Response:
        number = query(request).get("nhs_number", [""])[-1]
        rows = await reconcile_api.patients(self.db, {"nhs_number": number})
        await self._viewed(request, "patient-table-list", len(rows))
        return json_response(200, rows)

    async def put(self, request: Request) -> Response:
        return json_response(200, await reconcile_api.put_patient(self.db, self.audit, await _json(request),
                                                                  _user(request), int(self.clock() * 1000)))

    async def delete(self, request: Request) -> Response:
        return json_response(200, await reconcile_api.delete_patient(self.db, self.audit, await _json(request),
                                                                     _user(request)))
