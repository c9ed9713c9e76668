"""Uploads over HTTP: the uploader's resumable uploads (tus 1.0.0) and the PACS team's review (issue 14).

The uploader's side, for the public app under /p/ (its patient session, through PatientGate, for an
upload link; `public_routes`):

    GET     /p/upload                      the uploader's page (static/patient/upload.html)
    OPTIONS /p/api/uploads                 tus discovery: version, extensions, largest file
    POST    /p/api/uploads                 tus creation: Upload-Length, Upload-Metadata -> 201 Location
    HEAD    /p/api/uploads/{id}            Upload-Offset, Upload-Length
    PATCH   /p/api/uploads/{id}            application/offset+octet-stream at Upload-Offset -> 204 new offset
    DELETE  /p/api/uploads/{id}            tus termination (an upload still receiving)
    GET     /p/api/uploads                 this link's files: accepted / refused / skipped, with reasons; and
                                           its uploads not yet checked (receiving, checking)

tus core, creation and termination (https://tus.io/protocols/resumable-upload), written here: the Python
tus servers are tied to FastAPI/asyncio or a framework's storage and none fsyncs before acknowledging an
offset; the protocol is five small handlers. An upload ID is random and scoped to the link: another
link's ID is 404, as an unknown one is. Upload-Metadata is data only (the file's name, shown back to the
uploader as text), never a path. Bodies are read in bounded chunks; a PATCH's 204 carries an offset whose
bytes are on disk (fsynced) and committed.

The PACS team's side, on the staff listener (`staff_routes`, permission `queues`):

    GET  /ui/api/uploads                   held uploads by link: who, files, the studies in them
    POST /ui/api/uploads/{link}/accept     ingest through the node's intake, then out of quarantine
    POST /ui/api/uploads/{link}/reject     {"reason": "..."}: delete (audited)
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncIterator, Callable

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from meshnode.patient.links import LinkGrant, LinkKind, PatientGate, PatientLinks
from meshnode.patient.upload_errors import UploadLimitError, UploadStateError
from meshnode.patient.uploads import MB, Uploads
from meshnode.web.app import Route, route
from meshnode.web.http import (
    HttpError,
    bytes_response,
    client,
    content_length,
    is_number,
    json_object,
    json_response,
    principal,
)
from meshnode.web.ui import CSP, _static
from protocol.errors import MeshError, NotFoundError

TUS_VERSION = "1.0.0"
TUS_HEADERS = {"Tus-Resumable": TUS_VERSION, "Cache-Control": "no-store"}
OFFSET_TYPE = "application/offset+octet-stream"
MAX_METADATA = 4096
#: PATCH bodies arrive in chunks of whatever size the server hands over; each is bounded by the transport
PUBLIC_BASE = "/p/api/uploads"
#: where meshnode.web.patient_web's PatientGate leaves the request's patient session (with its CSRF token)
PATIENT_SESSION = "meshnode.patient_session"


def _metadata(header: str) -> dict[str, str]:
    """Upload-Metadata: "key base64,key base64"; HttpError(400) on anything else."""
    if len(header) > MAX_METADATA:
        raise HttpError(400, "Upload-Metadata is too long", headers=TUS_HEADERS)
    out: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in header.split(","))):
        key, _, value = pair.partition(" ")
        if not key or not key.isascii() or not key.replace("_", "").replace("-", "").isalnum() or key in out:
            raise HttpError(400, "Upload-Metadata: bad or repeated key", headers=TUS_HEADERS)
        try:
            out[key] = base64.b64decode(value.strip(), validate=True).decode("utf-8") if value.strip() else ""
        except (binascii.Error, ValueError):
            raise HttpError(400, "Upload-Metadata: a value that is not base64 of UTF-8 text",
                            headers=TUS_HEADERS) from None
    return out


def _number(request: Request, header: str) -> int:
    value = request.headers.get(header, "")
    if not is_number(value):
        raise HttpError(400, f"{header} must be a non-negative number", headers=TUS_HEADERS)
    return int(value)


def _http(exc: MeshError) -> HttpError:
    status = (404 if isinstance(exc, NotFoundError) else 413 if isinstance(exc, UploadLimitError)
              else 409 if isinstance(exc, UploadStateError) else 400)
    return HttpError(status, str(exc), headers=TUS_HEADERS, code=exc.name)


class UploadsWeb:
    def __init__(self, uploads: Callable[[], Uploads | None], gate: PatientGate | None = None,
                 links: PatientLinks | None = None) -> None:
        self.uploads = uploads
        self.gate = gate
        #: the link service: a completed upload goes into the link's history the staff see ("uploaded")
        self.links = links

    def public_routes(self) -> list[Route]:
        """For the public app (/p/): every handler checks the patient session itself (PatientGate)."""
        return [
            route("GET", "/p/upload", self.page, "public", "upload-page"),
            route("OPTIONS", PUBLIC_BASE, self.options, "public", "upload-options"),
            route("POST", PUBLIC_BASE, self.create, "public", "upload-create"),
            route("GET", PUBLIC_BASE, self.results, "public", "upload-results"),
            route("HEAD", PUBLIC_BASE + "/{upload}", self.head, "public", "upload-head"),
            route("PATCH", PUBLIC_BASE + "/{upload}", self.patch, "public", "upload-patch"),
            route("DELETE", PUBLIC_BASE + "/{upload}", self.delete, "public", "upload-delete"),
        ]

    def staff_routes(self) -> list[Route]:
        return [
            route("GET", "/ui/api/uploads", self.held, "queues", "uploads-held"),
            route("POST", "/ui/api/uploads/{link}/accept", self.accept, "queues", "uploads-accept"),
            route("POST", "/ui/api/uploads/{link}/reject", self.reject, "queues", "uploads-reject"),
        ]

    def _service(self) -> Uploads:
        service = self.uploads()
        if service is None:
            raise HttpError(404, "uploads are not enabled on this node")
        return service

    async def _grant(self, request: Request, *, tus: bool = True) -> tuple[Uploads, LinkGrant]:
        service = self._service()
        if self.gate is None:
            raise HttpError(404, "uploads are not served on this listener")
        grant = await self.gate.require(request, LinkKind.UPLOAD)
        if tus and request.headers.get("tus-resumable") != TUS_VERSION:
            raise HttpError(412, f"this server speaks tus {TUS_VERSION}",
                            headers={**TUS_HEADERS, "Tus-Version": TUS_VERSION})
        return service, grant

    async def page(self, request: Request) -> Response:
        """The uploader's page (static/patient/upload.html; its script and style from /p/static/). It holds
        nothing about anyone: what it shows comes from GET /p/api/uploads, with the patient session."""
        data = _static("patient/upload.html")
        if data is None:
            raise HttpError(404, "no such page")
        return bytes_response(200, data, "text/html; charset=utf-8",
                              {"content-security-policy": CSP, "x-frame-options": "DENY", "cache-control": "no-store"})

    async def options(self, request: Request) -> Response:
        service = self._service()
        return Response(status_code=204, headers={
            **TUS_HEADERS, "Tus-Version": TUS_VERSION, "Tus-Extension": "creation,termination",
            "Tus-Max-Size": str(service.config.max_file_mb * MB)})

    async def create(self, request: Request) -> Response:
        service, grant = await self._grant(request)
        if request.headers.get("upload-defer-length"):
            raise HttpError(400, "Upload-Defer-Length is not supported: give Upload-Length", headers=TUS_HEADERS)
        if (content_length(request) or 0) > 0:
            raise HttpError(400, "creation with data is not supported: PATCH the bytes", headers=TUS_HEADERS)
        length = _number(request, "upload-length")
        meta = _metadata(request.headers.get("upload-metadata", ""))
        name = meta.get("relativePath") or meta.get("filename") or meta.get("name") or ""
        try:
            row = await service.create(grant, length, name)
        except MeshError as exc:
            raise _http(exc) from None
        return Response(status_code=201, headers={**TUS_HEADERS, "Location": f"{PUBLIC_BASE}/{row.upload_id}",
                                                  "Upload-Offset": "0"})

    async def head(self, request: Request) -> Response:
        service, grant = await self._grant(request)
        try:
            row = await service.status(grant, request.path_params["upload"])
        except MeshError as exc:
            raise _http(exc) from None
        return Response(status_code=200, headers={**TUS_HEADERS, "Upload-Offset": str(row.received),
                                                  "Upload-Length": str(row.length)})

    async def patch(self, request: Request) -> Response:
        service, grant = await self._grant(request)
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != OFFSET_TYPE:
            raise HttpError(415, f"PATCH takes Content-Type {OFFSET_TYPE}", headers=TUS_HEADERS)
        offset = _number(request, "upload-offset")
        declared = content_length(request)

        async def chunks() -> AsyncIterator[bytes]:
            async for chunk in request.stream():
                if chunk:
                    yield chunk

        try:
            row = await service.append(grant, request.path_params["upload"], offset, chunks(), declared)
        except ClientDisconnect:
            raise  # what arrived is kept (durable); the client asks HEAD and resumes
        except MeshError as exc:
            raise _http(exc) from None
        if row.received == row.length and self.links is not None:
            await self.links.record(grant, "uploaded", f"{row.length} bytes", client(request))
        return Response(status_code=204, headers={**TUS_HEADERS, "Upload-Offset": str(row.received)})

    async def delete(self, request: Request) -> Response:
        service, grant = await self._grant(request)
        try:
            await service.delete(grant, request.path_params["upload"])
        except MeshError as exc:
            raise _http(exc) from None
        return Response(status_code=204, headers=TUS_HEADERS)

    async def results(self, request: Request) -> Response:
        service, grant = await self._grant(request, tus=False)
        pending, files = await service.results(grant)
        session = request.scope.get(PATIENT_SESSION)  # the public app's session (its CSRF token for the page)
        return json_response(200, {
            "csrf": str(getattr(session, "csrf", "")), "person": grant.person, "expires_at": grant.expires_at,
            "files": [{"name": f.name, "outcome": f.outcome, "reason": f.reason, "size": f.size} for f in files],
            # not yet checked: still arriving (resume them), or complete and being checked now
            "uploads": [{"id": u.upload_id, "name": u.name, "received": u.received, "length": u.length,
                         "state": "checking" if u.received == u.length else "receiving"} for u in pending],
            "limits": {"max_file_mb": service.config.max_file_mb, "max_upload_mb": service.config.max_upload_mb,
                       "max_files": service.config.max_files},
        }, headers={"Cache-Control": "no-store"})

    # -- staff ----------------------------------------------------------------------------------------

    async def held(self, request: Request) -> Response:
        return json_response(200, {"links": await self._service().held()}, headers={"Cache-Control": "no-store"})

    def _user(self, request: Request) -> str:
        user = principal(request)
        return user.user if user else "?"

    async def accept(self, request: Request) -> Response:
        try:
            result = await self._service().accept(request.path_params["link"], self._user(request))
        except UploadStateError as exc:
            raise HttpError(409, str(exc), code=exc.name) from None
        return json_response(200, {"stored": result.stored,
                                   "held": [{"study_uid": k, "reason": v} for k, v in sorted(result.held.items())]})

    async def reject(self, request: Request) -> Response:
        body = await json_object(request, 4096)
        reason = body.get("reason")
        if not isinstance(reason, str) or not reason.strip():
            raise HttpError(400, "give a reason (it is audited)")
        try:
            deleted = await self._service().reject(request.path_params["link"], self._user(request),
                                                   reason.strip()[:200])
        except UploadStateError as exc:
            raise HttpError(409, str(exc), code=exc.name) from None
        return json_response(200, {"deleted": deleted})
