"""The public pages under /p/: what a patient or an outside clinician reaches from the link in their email.

    GET  /p/                       the landing page (token from location.hash, code, then the share)
    GET  /p/viewer?study=          the viewer (the portal's bundle, over /p/dicomweb)
    GET  /p/static/{file}          their files (viewer/..., style.css, viewer.css: the portal's, the same files)
    POST /p/api/open    {token}           the link's state before the code (nothing about the patient)
    POST /p/api/code    {token}           send a one-time code on the second channel
    POST /p/api/verify  {token, code}     the right code: the patient session cookie and its CSRF token
    GET  /p/api/share                     the grant's studies (with the CSRF token, for a reloaded page)
    GET  /p/api/key-image?study=&series=&instance=&format=png|jpeg&frame=
    GET  /p/download/{name}.zip           the DICOM media set, resumable (one byte range)
    POST /p/api/forward {email, code_to}  a new share for a clinician
    POST /p/api/sign-out
    GET  /p/dicomweb/studies/{study}/metadata                     WADO-RS, the grant's studies only: what the
    GET  /p/dicomweb/studies/{study}/series/{s}/instances/{i}     viewer asks (viewer/src/main.js), no more

Every route is "public" to the app (meshnode.web.app ignores staff credentials under /p/); PatientWeb.require
is the session check (the PatientGate of meshnode.patient.links): the session cookie (meshnode_patient,
HttpOnly, SameSite=Strict, Path=/p/, Secure over TLS; on a listener of its own over TLS
__Host-meshnode_patient, Path=/), then the link re-read through PatientLinks.current on
every request (revoked or expired ends the session at once), and on every POST the session's X-CSRF-Token.
A study outside the grant answers exactly as an unknown one (404). POST bodies are JSON (Content-Type
application/json: a cross-site form cannot send one without a preflight), at most MAX_BODY bytes.

The whole study or series in bulk is not served under /p/dicomweb: that is the ZIP's job (recorded, full rate
cost). WADO's own audit rows name the share ("share:<link id>", meshnode.web.services.ACTOR) as participant.

Audit (PatientLinks.record, the share as participant): the share page and the viewer's study metadata
("viewed", once per session and study), each key image ("key image"), and each download ("downloaded"): a
response starting at byte 0 (no Range, or a range from 0) is a new download and is recorded; a range from
later on is recorded only when this session has not recorded a download of this media set (same ETag) yet,
so a copy fetched as `bytes=1-` (byte 0 is always "P") is recorded too, and a resume is not recorded again.

The ZIP holds what the pages show (media_planner: the instances WADO-RS serves). Every request reads the
shown records from the catalogue (cheap, on the database thread: a study changed or held back since is never
served from an old plan; a changed set has another ETag, so a resume with the old If-Range gets the whole new
file); the set built from them (one header read per series) is kept in a small LRU keyed by a digest of those
records (PLAN_CACHE sets) and built once for concurrent requests. Planning, reading the set and key images run
on the public side's own worker limiter (PUBLIC_READERS threads, not the staff side's block_readers), and a
session sends at most DOWNLOADS_PER_SESSION downloads at once.

Rate limits are not here: meshnode.web.rate_limit wraps the whole public app (meshnode.web.patient_listener).
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Protocol

import trio
from starlette.requests import Request
from starlette.responses import Response

from meshnode.patient.config import PatientAccessConfig
from meshnode.patient.links import LinkGrant, LinkKind, PatientLinks
from meshnode.storage.dbthread import DatabaseThread
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.node_storage import NodeStorage
from meshnode.storage.records import InstanceRecord, hash_uid
from meshnode.study.media_set import media_set_from_records, readme_text
from meshnode.web.app import PATIENT_PREFIX, SAFE_METHODS, Handler, Route, route
from meshnode.web.byte_range import RangeNotSatisfiable, wanted_range
from meshnode.web.http import (
    HttpError,
    ProducedResponse,
    Write,
    bytes_response,
    client,
    is_number,
    json_object,
    json_response,
    query,
)
from meshnode.web.patient_session import COOKIE, PatientSession, PatientSessions
from meshnode.web.services import ACTOR, WebServices
from meshnode.web.ui import CONTENT_TYPES, CSP, PAGE_CSP, SCRIPT_CSP, _static
from meshnode.web.wado import Wado, shown_instances
from protocol.errors import NotFoundError

#: the session cookie on a listener of its own over TLS
HOST_COOKIE = "__Host-" + COOKIE
#: planned media sets kept (by a digest of their records)
PLAN_CACHE = 16
#: worker threads of the public side (planning, reading the ZIP, key images): not the staff side's
PUBLIC_READERS = 2
#: downloads one session sends at once (a download manager opens a few ranges in parallel)
DOWNLOADS_PER_SESSION = 4
#: a JSON body of the public API (a token, a code, two addresses) is far smaller
MAX_BODY = 4096
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
_CODE = re.compile(r"^[0-9A-Za-z -]{1,20}$")
_UID = re.compile(r"^[0-9]{1,64}(\.[0-9]{1,64}){0,40}$")
_ZIP_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}\.zip$")
NOT_FOUND = "no such study, series or instance on this node"
_SESSION = "meshnode.patient_session"
#: the portal's files the patients' viewer page uses too (served under /p/static/ by the same name)
SHARED_FILES = ("style.css", "viewer.css")


class MediaSetLike(Protocol):
    """meshnode.study.media_set.MediaSet as the download needs it."""

    @property
    def size(self) -> int: ...
    @property
    def etag(self) -> str: ...
    @property
    def filename(self) -> str: ...
    def read(self, start: int, stop: int) -> Iterator[bytes]: ...


#: plan the media set of these studies (blocking: run on a worker thread)
PlanMedia = Callable[[tuple[str, ...]], MediaSetLike]
#: a key image: (the shown instance's record, "png" | "jpeg", frame) -> its bytes (blocking)
KeyImage = Callable[[InstanceRecord, str, int], bytes]


def media_planner(db: DatabaseThread, storage: NodeStorage, org_name: str, keep: int = PLAN_CACHE) -> PlanMedia:
    """MEDIA's media set (meshnode.study.media_set) of what the pages show: the studies' instances as WADO-RS
    serves them (shown_instances: nothing held back by patient reconciliation, no research copy; one per SOP
    Instance UID), read exclusive with the database thread, then the set built from those records outside
    it. The set of the same records is built once and kept (the last `keep` sets): concurrent callers for the
    same records wait for one build. Blocking: the download runs it on a worker thread."""
    kept: OrderedDict[str, MediaSetLike] = OrderedDict()
    guard = threading.Lock()
    building: dict[str, threading.Lock] = {}

    def plan(studies: tuple[str, ...]) -> MediaSetLike:
        def read(store: MetadataStore) -> list[InstanceRecord]:
            unique: dict[str, InstanceRecord] = {}
            for uid in sorted(set(studies)):
                for r in shown_instances(store, uid):
                    unique.setdefault(r.sop_instance_uid, r)
            return list(unique.values())
        records = db.run_blocking(read)
        if not records:
            raise HttpError(404, "there are no images to download in this share")
        key = hashlib.sha256(repr(sorted(records, key=lambda r: r.sop_instance_uid)).encode()).hexdigest()
        with guard:
            lock = building.setdefault(key, threading.Lock())
        try:
            with lock:
                with guard:
                    media = kept.get(key)
                    if media is not None:
                        kept.move_to_end(key)
                        return media
                count = len({r.study_uid for r in records})
                media = media_set_from_records(storage, records, readme=readme_text(org_name, count, len(records)))
                with guard:
                    kept[key] = media
                    while len(kept) > keep:
                        kept.popitem(last=False)
                return media
        finally:
            with guard:
                building.pop(key, None)
    return plan


def _text(value: object, field: str, pattern: re.Pattern[str] | None = None, most: int = 254) -> str:
    if not isinstance(value, str) or not value or len(value) > most or (pattern and not pattern.match(value)):
        raise HttpError(400, f"{field} is missing or malformed")
    return value


class PatientWeb:
    def __init__(self, links: PatientLinks, services: WebServices, config: PatientAccessConfig,
                 media: PlanMedia | None, key_image: KeyImage | None, *,
                 sessions: PatientSessions | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.links = links
        self.s = services
        self.config = config
        self.media = media
        self.key_image = key_image
        self.sessions = (sessions if sessions is not None
                         else PatientSessions(config.session_minutes * 60.0, services.clock, monotonic))
        self.monotonic = monotonic
        self.wado = Wado(services)
        self._files: dict[str, bytes | None] = {}
        self.readers = trio.CapacityLimiter(PUBLIC_READERS)

    def routes(self) -> list[Route]:
        out = [
            route("GET", "/p/", self._index, "public", "patient-index"),
            route("GET", "/p/viewer", self._viewer, "public", "patient-viewer"),
            route("GET", "/p/static/{name:path}", self._asset, "public", "patient-static"),
            route("POST", "/p/api/open", self._open, "public", "patient-open"),
            route("POST", "/p/api/code", self._code, "public", "patient-code"),
            route("POST", "/p/api/verify", self._verify, "public", "patient-verify"),
            route("GET", "/p/api/share", self._share, "public", "patient-share"),
            route("GET", "/p/api/key-image", self._key_image, "public", "patient-key-image"),
            route("GET", "/p/download/{name}", self._download, "public", "patient-download"),
            route("POST", "/p/api/forward", self._forward, "public", "patient-forward"),
            route("POST", "/p/api/sign-out", self._sign_out, "public", "patient-sign-out"),
        ]
        # what the viewer asks (viewer/src/main.js): the study's metadata, then one instance per image
        out.append(route("GET", "/p/dicomweb/studies/{study}/metadata", self._scoped(self.wado.metadata, True),
                         "public", "patient-wado-study-metadata"))
        out.append(route("GET", "/p/dicomweb/studies/{study}/series/{series}/instances/{instance}",
                         self._scoped(self.wado.retrieve, False), "public", "patient-wado-instance"))
        return out

    # -- the session check (PatientGate) ------------------------------------------------------------
    async def require(self, request: Request, kind: LinkKind) -> LinkGrant:
        """The grant of this request's patient session, re-read from the link; HttpError 401 otherwise (and
        403 for a POST without the session's X-CSRF-Token)."""
        cookie = request.cookies.get(self._cookie(request)[0], "")
        session = self.sessions.get(cookie)
        if session is None:
            raise HttpError(401, "you are not signed in (or your session ended): open the link from your email "
                                 "again", code="no-session")
        if request.method not in SAFE_METHODS and not self.sessions.csrf_ok(
                session, request.headers.get("x-csrf-token", "")):
            raise HttpError(403, "missing or wrong CSRF token", code="csrf")
        try:
            grant = await self.links.current(session.link_id)
        except NotFoundError:
            self.sessions.end_link(session.link_id)
            raise HttpError(401, "this link no longer works (it has expired or was withdrawn)",
                            code="no-session") from None
        if grant.kind != kind or grant.expires_at <= self.s.clock():
            raise HttpError(401, "this session cannot do that", code="no-session")
        request.scope[_SESSION] = session
        request.scope[ACTOR] = f"share:{grant.link_id}"
        return grant

    async def _record_once(self, request: Request, grant: LinkGrant, key: str, action: str, detail: str) -> None:
        """PatientLinks.record, once per session and `key`."""
        session: PatientSession = request.scope[_SESSION]
        if key in session.recorded:
            return
        await self.links.record(grant, action, detail, client(request))
        if len(session.recorded) > 1000:
            session.recorded.clear()
        session.recorded.add(key)

    # -- pages and files -----------------------------------------------------------------------------
    def _file(self, name: str) -> bytes | None:
        if name not in self._files:
            if len(self._files) > 1000:
                self._files.clear()
            self._files[name] = _static(name)
        return self._files[name]

    def _page(self, name: str, csp: str) -> Response:
        data = self._file("patient/" + name)
        if data is None:
            raise HttpError(404, "no such page")
        return bytes_response(200, data, "text/html; charset=utf-8",
                              {"content-security-policy": csp, "x-frame-options": "DENY",
                               "cross-origin-opener-policy": "same-origin"})

    async def _index(self, request: Request) -> Response:
        return self._page("index.html", CSP)

    async def _viewer(self, request: Request) -> Response:
        return self._page("viewer.html", PAGE_CSP["viewer.html"])

    async def _asset(self, request: Request) -> Response:
        """/p/static/viewer/... is the portal's viewer bundle (static/viewer/); anything else is a file of
        static/patient/. Names are checked by meshnode.web.ui._static (no `..`, no leading dot)."""
        name = request.path_params["name"]
        kind = CONTENT_TYPES.get("." + name.rsplit(".", 1)[-1] if "." in name else "")
        path = name if name.startswith("viewer/") or name in SHARED_FILES else "patient/" + name
        data = self._file(path) if kind and not kind.startswith("text/html") else None
        if data is None or kind is None:
            raise HttpError(404, "no such file")
        etag = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
        headers = {"etag": etag, "cache-control": "private, no-cache"}
        if kind.startswith("text/javascript"):
            headers["content-security-policy"] = SCRIPT_CSP
        if etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
            return Response(b"", 304, headers=headers)
        return bytes_response(200, data, kind, headers)

    # -- before the code -------------------------------------------------------------------------------
    async def _body(self, request: Request) -> dict[str, object]:
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            raise HttpError(415, "send JSON (Content-Type: application/json)")
        return await json_object(request, MAX_BODY)

    async def _token(self, request: Request) -> tuple[str, dict[str, object]]:
        body = await self._body(request)
        return _text(body.get("token"), "token", _TOKEN, 128), body

    async def _open(self, request: Request) -> Response:
        token, _ = await self._token(request)
        opened = await self.links.opened(token, client(request))
        return json_response(200, {"kind": opened.kind.value, "code_pending": opened.code_pending,
                                   "resends_left": opened.resends_left, "channel": opened.channel})

    async def _code(self, request: Request) -> Response:
        token, _ = await self._token(request)
        await self.links.send_code(token, client(request))
        return json_response(200, {"sent": True})

    async def _verify(self, request: Request) -> Response:
        token, body = await self._token(request)
        code = _text(body.get("code"), "code", _CODE, 20)
        grant = await self.links.verify(token, code, client(request))
        self.sessions.end(request.cookies.get(self._cookie(request)[0], ""))  # never keep a session from before (fixation)
        cookie, session = self.sessions.start(grant.link_id, grant.expires_at)
        response = json_response(200, {"kind": grant.kind.value, "csrf": session.csrf, "person": grant.person,
                                       "expires_at": grant.expires_at, "may_forward": grant.may_forward})
        self._set_cookie(request, response, cookie)
        return response

    def _secure(self, request: Request) -> bool:
        return request.url.scheme == "https" or (
            "meshnode.peer" in request.scope and self.config.public_url.startswith("https://"))

    def _cookie(self, request: Request) -> tuple[str, str]:
        """The session cookie's name and path: on a listener of its own over TLS `__Host-meshnode_patient`
        with Path=/ (that listener serves only /p/; a sibling subdomain cannot set a __Host- cookie); on the
        shared [http] listener `meshnode_patient` with Path=/p/ (kept off the staff routes)."""
        if self.config.own_listener and self._secure(request):
            return HOST_COOKIE, "/"
        return COOKIE, PATIENT_PREFIX

    def _set_cookie(self, request: Request, response: Response, value: str, *, clear: bool = False) -> None:
        name, path = self._cookie(request)
        response.set_cookie(name, value, max_age=0 if clear else None, path=path, secure=self._secure(request),
                            httponly=True, samesite="strict")

    # -- after the code ----------------------------------------------------------------------------------
    async def _share(self, request: Request) -> Response:
        grant = await self.require(request, LinkKind.SHARE)
        session: PatientSession = request.scope[_SESSION]

        def read(store: MetadataStore) -> list[dict[str, object]]:
            out: list[dict[str, object]] = []
            for uid in grant.studies:
                records = shown_instances(store, uid)
                if not records:
                    continue
                by_series: dict[str, list[InstanceRecord]] = {}
                for r in records:
                    by_series.setdefault(r.series_uid, []).append(r)
                series = []
                for suid, items in by_series.items():
                    items.sort(key=lambda r: (r.instance_number or 0, r.sop_instance_uid))
                    key = items[len(items) // 2]
                    series.append({"uid": suid, "modality": items[0].series.modality,
                                   "description": items[0].series.description,
                                   "number": items[0].series.series_number, "images": len(items),
                                   "key_instance": key.sop_instance_uid, "key_frames": key.frames or 1})
                series.sort(key=lambda s: (s["number"] if isinstance(s["number"], int) else 0, str(s["uid"])))
                a = records[0].study
                out.append({"uid": uid, "date": a.study_date, "description": a.description,
                            "patient_name": a.patient_name.replace("^", " ").strip(),
                            "modalities": sorted({r.series.modality for r in records if r.series.modality}),
                            "images": len(records), "series": series})
            return out

        studies = await self.s.db.run(read)
        await self._record_once(request, grant, "viewed:", "viewed", f"share page: {len(studies)} study(ies)")
        return json_response(200, {"person": grant.person, "expires_at": grant.expires_at,
                                   "may_forward": grant.may_forward, "csrf": session.csrf,
                                   "download": "/p/download/images.zip" if self.media is not None else None,
                                   "studies": studies})

    def _scoped(self, handler: Handler, audited: bool) -> Handler:
        """A WADO-RS handler (meshnode.web.wado) for the grant's studies only: another study answers as an
        unknown one."""
        async def handle(request: Request) -> Response:
            grant = await self.require(request, LinkKind.SHARE)
            study = request.path_params["study"]
            if study not in grant.studies:
                raise HttpError(404, NOT_FOUND)
            response = await handler(request)
            if audited:
                await self._record_once(request, grant, "viewed:" + study, "viewed",
                                        f"viewer opened study {hash_uid(study)}")
            return response
        return handle

    async def _instance(self, study: str, series: str, instance: str) -> InstanceRecord:
        """The shown instance's record, read on the database thread (under its lock)."""
        records = await self.s.db.run(lambda store: shown_instances(store, study))
        for r in records:
            if r.series_uid == series and r.sop_instance_uid == instance:
                return r
        raise HttpError(404, NOT_FOUND)

    async def _key_image(self, request: Request) -> Response:
        grant = await self.require(request, LinkKind.SHARE)
        q = query(request)

        def one(name: str, default: str | None = None) -> str:
            values = q.get(name)
            if not values:
                if default is None:
                    raise HttpError(400, f"{name} is missing")
                return default
            return values[-1]

        study, series, instance = one("study"), one("series"), one("instance")
        for value in (study, series, instance):
            if not _UID.match(value):
                raise HttpError(400, "study, series and instance must be DICOM UIDs")
        fmt = one("format", "png")
        if fmt not in ("png", "jpeg"):
            raise HttpError(400, "format must be png or jpeg")
        frame_text = one("frame", "1")
        if not is_number(frame_text, 6) or int(frame_text) < 1:
            raise HttpError(400, "frame must be a number from 1")
        frame = int(frame_text)
        if study not in grant.studies:
            raise HttpError(404, NOT_FOUND)
        record = await self._instance(study, series, instance)
        if frame > (record.frames or 1):
            raise HttpError(404, "the image has no such frame")
        if self.key_image is None:
            raise HttpError(503, "key images are not available on this node")
        render = self.key_image
        data = await trio.to_thread.run_sync(lambda: render(record, fmt, frame), limiter=self.readers)
        await self.links.record(grant, "key image", f"{fmt} of instance {hash_uid(instance)} frame {frame}",
                                client(request))
        number = record.instance_number or 1
        return bytes_response(200, data, "image/png" if fmt == "png" else "image/jpeg",
                              {"content-disposition": f'inline; filename="image-{number}.{fmt}"'})

    # -- the download --------------------------------------------------------------------------------
    async def _plan(self, studies: tuple[str, ...]) -> MediaSetLike:
        """The media set of the studies as they are now (media_planner: built once per set of records)."""
        if self.media is None:
            raise HttpError(503, "downloads are not available on this node")
        plan = self.media
        return await trio.to_thread.run_sync(lambda: plan(studies), limiter=self.readers)

    async def _download(self, request: Request) -> Response:
        grant = await self.require(request, LinkKind.SHARE)
        if not _ZIP_NAME.match(request.path_params["name"]):
            raise HttpError(404, "no such file")
        session: PatientSession = request.scope[_SESSION]
        if session.downloads >= DOWNLOADS_PER_SESSION:
            raise HttpError(429, f"at most {DOWNLOADS_PER_SESSION} downloads at once: wait for one to finish",
                            headers={"retry-after": "10"}, code="rate-limited")
        media = await self._plan(tuple(sorted(grant.studies)))
        headers = {"accept-ranges": "bytes", "etag": media.etag, "cache-control": "no-store",
                   "content-disposition": f'attachment; filename="{media.filename}"'}
        try:
            wanted = wanted_range(request.headers.get("range"), media.size, request.headers.get("if-range"),
                                  media.etag)
        except RangeNotSatisfiable:
            raise HttpError(416, "the range asked for is not within this file",
                            headers={"content-range": f"bytes */{media.size}", "accept-ranges": "bytes"},
                            code="range-not-satisfiable") from None
        start, stop = (wanted.start, wanted.stop) if wanted else (0, media.size)
        detail = f"{media.filename}: {media.size} bytes"
        if start == 0:  # a new download
            await self.links.record(grant, "downloaded", detail, client(request))
            session.recorded.add("downloaded:" + media.etag)
        else:  # a resume, or a copy that never asks for byte 0
            await self._record_once(request, grant, "downloaded:" + media.etag, "downloaded", detail)
        if wanted is not None:
            headers["content-range"] = wanted.content_range
        headers["content-length"] = str(stop - start)

        async def produce(write: Write) -> None:
            session.downloads += 1
            chunks = media.read(start, stop)
            try:
                while True:
                    chunk = await trio.to_thread.run_sync(next, chunks, None, limiter=self.readers)
                    if chunk is None:
                        break
                    await write(chunk)
            finally:
                session.downloads -= 1
                close = getattr(chunks, "close", None)
                if close is not None:
                    with trio.CancelScope(shield=True):
                        await trio.to_thread.run_sync(close)

        return ProducedResponse(produce, 206 if wanted else 200, headers, "application/zip")

    # -- forward and sign out --------------------------------------------------------------------------
    async def _forward(self, request: Request) -> Response:
        grant = await self.require(request, LinkKind.SHARE)
        body = await self._body(request)
        email = _text(body.get("email"), "email")
        code_to = _text(body.get("code_to"), "code_to")
        if not grant.may_forward:
            raise HttpError(403, "this share cannot be passed on", code="forward-refused")
        await self.links.forward(grant, email, code_to, client(request))
        return json_response(200, {"forwarded": True})

    async def _sign_out(self, request: Request) -> Response:
        cookie = request.cookies.get(self._cookie(request)[0], "")
        session = self.sessions.get(cookie)
        if session is not None:
            if not self.sessions.csrf_ok(session, request.headers.get("x-csrf-token", "")):
                raise HttpError(403, "missing or wrong CSRF token", code="csrf")
            self.sessions.end(cookie)
        response = json_response(200, {"signed_out": True})
        self._set_cookie(request, response, "", clear=True)
        return response

