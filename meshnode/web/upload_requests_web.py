"""Asks for an upload link over HTTP (meshnode.patient.upload_requests says what they are and why they are
shaped so).

For the public app under /p/ (no session: anyone on the internet; meshnode.web.rate_limit covers /p/):

    GET  /p/ask                       the ask form (static/patient/ask.html, its script ask.js)
    POST /p/api/upload-requests       {person, email, code_to, message} -> 202 {"received": true}, the same
                                      answer for a new ask and one already pending; 400 bad input; 503 full

On the staff listener (permission `queues`, the portal's session and X-CSRF-Token as every POST):

    GET  /ui/api/upload-requests                      pending asks, oldest first
    POST /ui/api/upload-requests/{id}/send            an upload link to the asker (email + code) -> {"link"}
    POST /ui/api/upload-requests/{id}/decline         {"reason"}: no email; the reason stays in the row
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import Response

from meshnode.patient.upload_errors import UploadStateError
from meshnode.patient.upload_requests import UploadRequests
from meshnode.web.app import Route, route
from meshnode.web.http import HttpError, bytes_response, client, json_object, json_response, principal
from meshnode.web.ui import CSP, _static
from protocol.errors import MeshError, NotFoundError, UnavailableError
from protocol.patient_link import PatientAccessError

#: a name, two addresses and 500 characters of message, even all JSON-escaped, fit
MAX_BODY = 8192
RECEIVED = ("thank you: the imaging team will look at your request. If they can help, you will get an email "
            "with a link, and a code on your phone or second email")


def _http(exc: MeshError) -> HttpError:
    if isinstance(exc, UnavailableError):
        return HttpError(503, str(exc), code="busy", headers={"retry-after": "3600"})
    status = (404 if isinstance(exc, NotFoundError) else 409 if isinstance(exc, UploadStateError)
              else 400 if isinstance(exc, PatientAccessError) else 500)
    return HttpError(status, str(exc), code=exc.name)


class UploadRequestsWeb:
    def __init__(self, requests: Callable[[], UploadRequests | None]) -> None:
        self.requests = requests

    def public_routes(self) -> list[Route]:
        return [
            route("GET", "/p/ask", self.page, "public", "upload-ask-page"),
            route("POST", "/p/api/upload-requests", self.ask, "public", "upload-ask"),
        ]

    def staff_routes(self) -> list[Route]:
        return [
            route("GET", "/ui/api/upload-requests", self.pending, "queues", "upload-requests"),
            route("POST", "/ui/api/upload-requests/{request}/send", self.send, "queues", "upload-request-send"),
            route("POST", "/ui/api/upload-requests/{request}/decline", self.decline, "queues",
                  "upload-request-decline"),
        ]

    def _service(self) -> UploadRequests:
        service = self.requests()
        if service is None:
            raise HttpError(404, "patient access is not enabled on this node")
        return service

    async def page(self, request: Request) -> Response:
        self._service()
        data = _static("patient/ask.html")
        if data is None:
            raise HttpError(404, "no such page")
        return bytes_response(200, data, "text/html; charset=utf-8",
                              {"content-security-policy": CSP, "x-frame-options": "DENY"})

    async def ask(self, request: Request) -> Response:
        service = self._service()
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            raise HttpError(415, "send JSON (Content-Type: application/json)")
        body = await json_object(request, MAX_BODY)
        try:
            await service.ask(body.get("person"), body.get("email"), body.get("code_to"), body.get("message"),
                              client(request))
        except MeshError as exc:
            raise _http(exc) from None
        return json_response(202, {"received": True, "message": RECEIVED}, headers={"Cache-Control": "no-store"})

    # -- staff ----------------------------------------------------------------------------------------

    def _user(self, request: Request) -> str:
        user = principal(request)
        if user is None:
            raise HttpError(401, "sign in")
        return user.user

    async def pending(self, request: Request) -> Response:
        rows = await self._service().pending()
        return json_response(200, {"requests": [
            {"id": r.request_id, "person": r.person, "email": r.email, "code_to": r.code_to, "message": r.message,
             "created_at": r.created_at, "client": r.client} for r in rows]}, headers={"Cache-Control": "no-store"})

    async def send(self, request: Request) -> Response:
        service = self._service()
        try:
            link = await service.send(self._user(request), request.path_params["request"])
        except MeshError as exc:
            raise _http(exc) from None
        return json_response(200, {"link": link})

    async def decline(self, request: Request) -> Response:
        service = self._service()
        body = await json_object(request, 4096)
        try:
            await service.decline(self._user(request), request.path_params["request"], body.get("reason"))
        except MeshError as exc:
            raise _http(exc) from None
        return json_response(200, {"declined": True})
