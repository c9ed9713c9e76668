"""STOW-RS: store instances (PS3.18 10.5) through the same intake and routing as C-STORE.

    POST /dicomweb/studies[/{study}][?route=NAME | ?to=ORG[,ORG]]
    POST /dicomweb/routes/{route}/studies[/{study}]
    Content-Type: multipart/related; type="application/dicom"; boundary=...

A route (by name, or the one configured route whose destinations are exactly
the `to` orgs) shares the study once it is quiet, as a C-STORE to that
route's AE title would; without one the instances are kept on this node.

Nothing is half-stored. The body is parsed as it arrives and each part
spooled to a file in the node folder (so memory holds at most one part);
a broken multipart framing, a part over [http] max_instance_mb, a body over
max_request_mb, or any part that is not a valid DICOM instance (checked as
`meshnode ingest` checks a file, and against the study in the path) refuses
the whole request: 400/409/413/415 with the reasons, nothing stored, audited.
Only then is each instance made durable by the intake and its metadata
committed; the answer lists every stored instance (ReferencedSOPSequence),
and a failure at that point (disk full) the ones not stored
(FailedSOPSequence, 202 if some were stored).
"""

from __future__ import annotations

import logging
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import trio
from starlette.requests import Request
from starlette.responses import Response

from meshnode.dicom.errors import DicomError
from meshnode.dicom.layout import plan_instance
from meshnode.gateway.intake import PreparedInstance, StoredInstance, StudyIntake
from meshnode.gateway.routes import Route, RouteError, RouteTable
from meshnode.storage.audit import AuditEvent, EventCode, Outcome
from meshnode.storage.records import hash_uid
from meshnode.web.app import Route as HttpRoute, route as http_route
from meshnode.web.dicomjson import Json, element
from meshnode.web.http import HttpError, body_chunks, client, json_response, principal, query
from meshnode.web.multipart import (
    MultipartError,
    MultipartParser,
    PartData,
    PartEnded,
    PartStarted,
    check_boundary,
    content_type_params,
)
from meshnode.web.services import WebServices, actor
from protocol.errors import LimitError, MeshError

log = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
MAX_PARTS = 10_000
#: PS3.18 / PS3.4 failure reasons
CANNOT_UNDERSTAND = 0xC000
OUT_OF_RESOURCES = 0xA700
STUDY_MISMATCH = 0xC122  # the instance is not of the study the request names
NOT_DICOM_PART = 0xC000


@dataclass
class Part:
    index: int
    path: Path
    content_type: str
    size: int = 0


@dataclass(frozen=True)
class Failure:
    index: int
    reason: int
    why: str
    sop_class_uid: str = ""
    sop_instance_uid: str = ""


def _failure_item(f: Failure) -> Json:
    item: Json = {"00081197": element("US", f.reason)}
    if f.sop_class_uid:
        item["00081150"] = element("UI", f.sop_class_uid)
    if f.sop_instance_uid:
        item["00081155"] = element("UI", f.sop_instance_uid)
    return item


def _warning(failures: list[Failure]) -> dict[str, str]:
    text = "; ".join(f"part {f.index + 1}: {f.why}" for f in failures[:10])
    if len(failures) > 10:
        text += f"; and {len(failures) - 10} more"
    value = f'299 meshnode "{text}"'.replace("\r", " ").replace("\n", " ")
    return {"warning": value.encode("latin-1", "replace").decode("latin-1")}


class Stow:
    def __init__(self, services: WebServices, intake: Callable[[], StudyIntake | None],
                 routes: Callable[[], RouteTable]) -> None:
        self.s = services
        self.intake = intake
        self.route_table = routes
        self.spool_root = services.storage.home / "tmp" / "stow"

    def routes(self) -> list[HttpRoute]:
        handler = self.store
        return [
            http_route("POST", "/dicomweb/studies", handler, "write", "stow"),
            http_route("POST", "/dicomweb/studies/{study}", handler, "write", "stow"),
            http_route("POST", "/dicomweb/routes/{route}/studies", handler, "write", "stow"),
            http_route("POST", "/dicomweb/routes/{route}/studies/{study}", handler, "write", "stow"),
        ]

    def select_route(self, request: Request) -> Route | None:
        table = self.route_table()
        params = query(request)
        name = request.path_params.get("route") or (params.get("route") or [""])[-1]
        to = (params.get("to") or [""])[-1]
        try:
            if name:
                if to:
                    raise HttpError(400, "give route= or to=, not both")
                return table.by_name(name)
        except RouteError as exc:
            raise HttpError(404, str(exc)) from None
        if not to:
            return None
        wanted = {o.strip().upper() for o in to.split(",") if o.strip()}
        matching = [r for r in table if set(r.to) == wanted]
        if len(matching) != 1:
            known = ", ".join(f"{r.name} (to {','.join(r.to)})" for r in table) or "none configured"
            raise HttpError(404 if not matching else 409,
                            f"{'no' if not matching else 'more than one'} route sends to exactly "
                            f"{','.join(sorted(wanted))}; routes: {known}")
        return matching[0]

    async def store(self, request: Request) -> Response:
        intake = self.intake()
        if intake is None:
            raise HttpError(503, "this node runs no study intake (the gateway is not started)")
        route = self.select_route(request)
        study = request.path_params.get("study")
        kind, params = content_type_params(request.headers.get("content-type", ""))
        if kind != "multipart/related":
            raise HttpError(415, 'STOW-RS takes multipart/related; type="application/dicom"')
        part_type = params.get("type", "application/dicom").lower()
        if part_type != "application/dicom":
            raise HttpError(415, f"parts of type {part_type!r} are not accepted (only application/dicom)")
        try:
            boundary = check_boundary(params.get("boundary", ""))
        except MultipartError as exc:
            raise HttpError(400, str(exc)) from None
        spool = self.spool_root / secrets.token_hex(8)
        user = principal(request)
        source = f"stow:{user.user if user else '?'}@{client(request)}"
        try:
            try:
                parts = await self._receive(request, boundary, spool)
                failures = await self._validate(parts, study)
            except (MultipartError, LimitError, HttpError) as exc:
                status = exc.status if isinstance(exc, HttpError) else 413 if isinstance(exc, LimitError) else 400
                why = exc.message if isinstance(exc, HttpError) else f"{exc.name}: {exc}"
                await self._refused(request, route, why)
                raise HttpError(status, why) from None
            if failures:
                await self._refused(request, route, f"{len(failures)} of {len(parts)} part(s) refused: "
                                                    + "; ".join(f.why for f in failures[:3]))
                body: Json = {"00081198": {"vr": "SQ", "Value": [_failure_item(f) for f in failures]}}
                return json_response(409, body, DICOM_JSON, _warning(failures))
            stored, failed = await self._store_all(intake, parts, route, source)
        finally:
            await trio.to_thread.run_sync(shutil.rmtree, spool, True)
        return await self._answer(request, stored, failed)

    async def _receive(self, request: Request, boundary: bytes, spool: Path) -> list[Part]:
        """Parse the body as it arrives; every part into its own spool file."""
        await trio.to_thread.run_sync(lambda: spool.mkdir(parents=True, exist_ok=True))
        parser = MultipartParser(boundary, max_part_bytes=self.s.config.max_instance_bytes, max_parts=MAX_PARTS)
        parts: list[Part] = []
        out: BinaryIO | None = None
        pending: list[bytes] = []

        async def flush() -> None:
            if out is not None and pending:
                data = b"".join(pending)
                pending.clear()
                await trio.to_thread.run_sync(out.write, data)

        try:
            async for chunk in body_chunks(request, self.s.config.max_request_bytes):
                for event in parser.feed(chunk):
                    if isinstance(event, PartStarted):
                        part = Part(len(parts), spool / f"part-{len(parts):05d}",
                                    event.headers.get("content-type", "application/dicom"))
                        parts.append(part)
                        out = await trio.to_thread.run_sync(part.path.open, "wb")
                    elif isinstance(event, PartData):
                        pending.append(event.data)
                        if sum(len(p) for p in pending) >= 1 << 20:
                            await flush()
                    elif isinstance(event, PartEnded) and out is not None:
                        await flush()
                        await trio.to_thread.run_sync(out.close)
                        out = None
                        parts[-1].size = event.size
            parser.close()
        finally:
            if out is not None:
                await trio.to_thread.run_sync(out.close)
        if not parts:
            raise MultipartError("the body holds no parts")
        return parts

    async def _validate(self, parts: list[Part], study: str | None) -> list[Failure]:
        """Every part must be a DICOM instance (of the study in the path); nothing is stored yet."""
        failures: list[Failure] = []
        for part in parts:
            kind, _ = content_type_params(part.content_type)
            if kind != "application/dicom":
                failures.append(Failure(part.index, NOT_DICOM_PART, f"Content-Type {kind or '(none)'} is not "
                                                                    "application/dicom"))
                continue
            try:
                plan = await trio.to_thread.run_sync(plan_instance, part.path, limiter=self.s.block_readers)
            except MeshError as exc:
                failures.append(Failure(part.index, CANNOT_UNDERSTAND, f"not a valid DICOM instance ({exc.name})"))
                continue
            a = plan.attributes
            if study is not None and a.study_instance_uid != study:
                failures.append(Failure(part.index, STUDY_MISMATCH, "instance of another study than the URL names",
                                        a.sop_class_uid, a.sop_instance_uid))
        return failures

    async def _store_all(self, intake: StudyIntake, parts: list[Part], route: Route | None,
                         source: str) -> tuple[list[StoredInstance], list[Failure]]:
        """Blocks of every instance durable first; then the metadata, commits grouped by the intake."""
        prepared: list[PreparedInstance] = []
        for part in parts:
            def prepare(path: Path = part.path) -> PreparedInstance:
                return intake.prepare(path.read_bytes(), source)

            try:
                prepared.append(await trio.to_thread.run_sync(prepare, limiter=self.s.block_readers))
            except MeshError as exc:
                # a block write failed (disk full): commit nothing of this request
                log.error("STOW-RS: cannot store part %d: %s", part.index + 1, exc)
                reason = OUT_OF_RESOURCES if not isinstance(exc, DicomError) else CANNOT_UNDERSTAND
                return [], [Failure(p.index, reason, f"not stored: {exc.name}") for p in parts]
        stored: list[StoredInstance | None] = [None] * len(prepared)
        failed: list[Failure] = []

        async def commit(i: int, item: PreparedInstance) -> None:
            try:
                stored[i] = await intake.commit(item, route)
            except MeshError as exc:
                rec = item.record
                failed.append(Failure(i, OUT_OF_RESOURCES, f"not stored: {exc.name}", rec.sop_class_uid,
                                      rec.sop_instance_uid))

        async with trio.open_nursery() as nursery:
            for i, item in enumerate(prepared):
                nursery.start_soon(commit, i, item)
        return [s for s in stored if s is not None], sorted(failed, key=lambda f: f.index)

    async def _refused(self, request: Request, route: Route | None, why: str) -> None:
        await self.s.audit(AuditEvent(EventCode.IMPORT, "stow-refused", Outcome.MINOR_FAILURE, actor=actor(request),
                                      detail=f"{why} (route {route.name if route else '-'}) from {client(request)}"[:300]))

    async def _answer(self, request: Request, stored: list[StoredInstance], failed: list[Failure]) -> Response:
        base = self.s.base_url(request)
        body: Json = {}
        studies = sorted({s.study_uid for s in stored})
        if len(studies) == 1:
            body["00081190"] = element("UR", f"{base}/studies/{studies[0]}")
        if stored:
            body["00081199"] = {"vr": "SQ", "Value": [{
                "00081150": element("UI", s.sop_class_uid), "00081155": element("UI", s.sop_instance_uid),
                "00081190": element("UR", f"{base}/studies/{s.study_uid}/series/{s.series_uid}"
                                          f"/instances/{s.sop_instance_uid}"),
            } for s in stored]}
        if failed:
            body["00081198"] = {"vr": "SQ", "Value": [_failure_item(f) for f in failed]}
        status = 200 if not failed else 202 if stored else 503
        log.info("STOW-RS from %s: %d stored, %d failed, studies %s", actor(request), len(stored), len(failed),
                 ", ".join(hash_uid(s) for s in studies))
        return json_response(status, body, DICOM_JSON, _warning(failed) if failed else None)
