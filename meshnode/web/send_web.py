"""The staff portal's send page (/ui/send): find a study, look at its series, choose organisations from the
directory, share; follow each recipient, recall, redeliver.

    GET  /ui/api/send/studies?patient_id=&nhs_number=&name=&date_from=&date_to=&modality=&accession=
                                                                     read   studies held (identifiers: audited)
    GET  /ui/api/send/studies/{study}/series                         read   series, instance counts (audited)
    GET  /ui/api/send/studies/{study}/series/{series}/thumbnail.png  read   a middle instance, small (audited)
    GET  /ui/api/send/orgs?q=TEXT                                    send   the directory's organisations
    GET  /ui/api/send/outbox                                         read   `meshnode outbox`, with identifiers
    POST /ui/api/send/share      {study, to[], priority, purpose, attention?, note?, lifetime_days?, deid?,
                                  include_unreconciled?, origin?}    send   `meshnode share`
    POST /ui/api/send/recall     {manifest, reason, research_copies?} send  `meshnode recall`
    POST /ui/api/send/redeliver  {manifest}                           send  `meshnode redeliver MANIFEST`

Share, recall and redeliver call the control API's own handlers (meshnode.node.control_routes, what the
CLI asks the node), after checking here what a browser sends: UIDs, organisations the directory lists,
lengths and characters. Bad input is a 400 that changes nothing. With the session cookie every POST
needs the session's anti-CSRF token (meshnode.web.app). The user is audited on every view and action.

Live progress: the page follows /ui/api/events?page=outbox (meshnode.web.ui), whose rows are those of
/ui/api/send/outbox (NodeView.outbox).
"""

from __future__ import annotations

import datetime
import logging
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import trio
from starlette.requests import Request
from starlette.responses import Response

from meshnode.control.app import Handler as ControlHandler
from meshnode.directory.orgs import OrgList
from meshnode.node.control_routes import share_addressing
from meshnode.storage.audit import AuditEvent, EventCode
from meshnode.storage.block_stream import read_instance
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.received_research import received_for_research_only
from meshnode.storage.records import InstanceRecord, Source, hash_uid
from meshnode.storage.search import (
    Level,
    ListMatch,
    Match,
    RangeMatch,
    Search,
    TextMatch,
)
from meshnode.study.preview import PreviewError, render_png
from meshnode.web.app import Route, route
from meshnode.web.http import (
    HttpError,
    json_object,
    json_response,
    principal,
    query,
)
from meshnode.web.services import WebServices
from protocol.cid import CID
from protocol.errors import MeshError, SchemaError
from protocol.manifest import Priority, Purpose
from protocol.reconciliation import nhs_number_valid, normalise_nhs_number
from protocol.schema import check_org_code

log = logging.getLogger(__name__)

Row = dict[str, Any]
OutboxFn = Callable[[bool], Awaitable[list[Row]]]

MAX_BODY = 16384
MAX_TEXT = 64
MAX_REASON = 1024
MAX_RECIPIENTS = 20
MAX_STUDIES = 50
THUMBNAIL_SIDE = 128
THUMBNAIL_CACHE = 512
#: series of one study that get a thumbnail (in series-number order): a study of thousands of series does not
#: make the page ask for thousands of renders
MAX_THUMBNAIL_SERIES = 64
SEARCH_KEYS = frozenset({"patient_id", "nhs_number", "name", "date_from", "date_to", "modality", "accession"})
#: what a share may carry from the page: what `meshnode share` sends (meshnode.cli.node_cmds.run_share)
SHARE_KEYS = frozenset({"study", "to", "priority", "purpose", "attention", "note", "lifetime_days", "deid",
                        "include_unreconciled", "origin"})
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_DATE = re.compile(r"^([0-9]{4})-?([0-9]{2})-?([0-9]{2})$")
_MODALITY = re.compile(r"^[A-Z0-9]{1,16}$")
#: characters a search value may not hold: DICOM wildcards and escapes (a value is matched as typed), and
#: control characters
_NOT_IN_VALUES = re.compile(r"[*?\\\[\]\x00-\x1f\x7f]")


def check_uid(value: object, what: str) -> str:
    if not isinstance(value, str) or not _UID.match(value) or len(value) > 64:
        raise HttpError(400, f"{what}: not a DICOM UID (digits and dots, at most 64 characters)")
    return value


def _text(value: object, what: str, most: int, *, required: bool = False) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise HttpError(400, f"{what} must be text")
    if len(value) > most:
        raise HttpError(400, f"{what} is longer than {most} characters")
    if not value.isprintable():
        raise HttpError(400, f"{what} may not contain control characters")
    if required and not value.strip():
        raise HttpError(400, f"{what} is required")
    return value


def _date(value: str, what: str) -> str:
    m = _DATE.match(value)
    if not m:
        raise HttpError(400, f"{what}: expected a date like 2025-01-31")
    try:
        datetime.date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError:
        raise HttpError(400, f"{what}: no such date") from None
    return "".join(m.groups())


def parse_search(params: Mapping[str, list[str]], nhs_ids: Callable[[str], list[str]] | None = None) -> Search:
    """The page's search form as a study-level Search (reconciliation holds hidden); 400 for anything else."""
    unknown = sorted(set(params) - SEARCH_KEYS)
    if unknown:
        raise HttpError(400, f"unknown search field {unknown[0][:40]!r}; use {', '.join(sorted(SEARCH_KEYS))}")
    values: dict[str, str] = {}
    for key, items in params.items():
        value = items[-1].strip()
        if len(value) > MAX_TEXT:
            raise HttpError(400, f"{key} is longer than {MAX_TEXT} characters")
        if _NOT_IN_VALUES.search(value):
            raise HttpError(400, f"{key}: wildcards, backslashes and control characters are not accepted")
        if value:
            values[key] = value
    if not values:  # a search names something: an empty one would list every patient the node holds
        raise HttpError(400, f"search by at least one of {', '.join(sorted(SEARCH_KEYS))}")
    filters: dict[str, Match] = {}
    modalities: tuple[str, ...] = ()
    if "patient_id" in values:
        filters["patient_id"] = TextMatch(values["patient_id"])
    if "accession" in values:
        filters["accession"] = TextMatch(values["accession"])
    if "name" in values:  # a name's start, case ignored ("smith" finds SMITH^JANE)
        filters["patient_name"] = TextMatch(values["name"].replace(" ", "^") + "*")
    lo = _date(values["date_from"], "date_from") if "date_from" in values else ""
    hi = _date(values["date_to"], "date_to") if "date_to" in values else ""
    if lo or hi:
        if lo and hi and lo > hi:
            raise HttpError(400, "date_from is after date_to")
        filters["study_date"] = RangeMatch(lo, hi)
    if "modality" in values:
        modality = values["modality"].upper()
        if not _MODALITY.match(modality):
            raise HttpError(400, "modality: a DICOM modality code such as CT or MR")
        modalities = (modality,)
    if "nhs_number" in values:
        number = normalise_nhs_number(values["nhs_number"])
        if not nhs_number_valid(number):
            raise HttpError(400, "nhs_number: not a valid NHS number (10 digits with a valid check digit)")
        if "patient_id" in values:
            raise HttpError(400, "search by patient ID or by NHS number, not both")
        # the NHS number as Patient ID, or a local ID the lookup table maps it to
        filters["patient_id"] = ListMatch(tuple(dict.fromkeys([number, *(nhs_ids(number) if nhs_ids else [])])))
    return Search(Level.STUDY, filters, modalities, limit=MAX_STUDIES + 1, hide_held=True)


def _study_json(row: Any) -> Row:
    a = row.attributes
    return {"study_uid": a.study_uid, "patient_name": a.patient_name, "patient_id": a.patient_id,
            "birth_date": a.birth_date, "sex": a.sex, "study_date": a.study_date, "description": a.description,
            "accession": a.accession, "modalities": list(row.modalities), "series": row.series_count,
            "instances": row.instance_count, "bytes": row.total_bytes, "sources": list(row.sources)}


def shown_instances(store: MetadataStore, study_uid: str) -> list[InstanceRecord]:
    """A study's instances as the portal shows them (as WADO-RS does): none for a research copy, none held
    back by patient reconciliation, one per SOP Instance UID."""
    if store.research_copy_of(study_uid) is not None:
        return []
    held = store.held_instances(study_uid)
    unique: dict[str, InstanceRecord] = {}
    for r in store.instances(study_uid):
        if (r.sop_instance_uid, r.digest) not in held:
            unique.setdefault(r.sop_instance_uid, r)
    return list(unique.values())


def _by_series(records: list[InstanceRecord]) -> list[tuple[str, list[InstanceRecord]]]:
    """A study's instances by series, in series-number order (then UID)."""
    groups: dict[str, list[InstanceRecord]] = {}
    for r in records:
        groups.setdefault(r.series_uid, []).append(r)
    number = {uid: items[0].series.series_number for uid, items in groups.items()}
    return sorted(groups.items(), key=lambda g: (number[g[0]] if number[g[0]] is not None else 1 << 31, g[0]))


def _middle(records: list[InstanceRecord]) -> InstanceRecord:
    ordered = sorted(records, key=lambda r: (r.instance_number if r.instance_number is not None else 0,
                                             r.sop_instance_uid))
    return ordered[len(ordered) // 2]


class SendWeb:
    def __init__(self, services: WebServices, control: Mapping[tuple[str, str], ControlHandler], orgs: OrgList,
                 outbox: OutboxFn) -> None:
        self.s = services
        self.control = control
        self.orgs = orgs
        self.outbox = outbox
        self._thumbnails: OrderedDict[tuple[str, bytes], bytes | str] = OrderedDict()
        self._render = trio.CapacityLimiter(1)

    def routes(self) -> list[Route]:
        return [
            route("GET", "/ui/api/send/studies", self._studies, "read", "send-studies"),
            route("GET", "/ui/api/send/studies/{study}/series", self._series, "read", "send-series"),
            route("GET", "/ui/api/send/studies/{study}/series/{series}/thumbnail.png", self._thumbnail, "read",
                  "send-thumbnail"),
            route("GET", "/ui/api/send/orgs", self._orgs, "send", "send-orgs"),
            route("GET", "/ui/api/send/outbox", self._outbox, "read", "send-outbox"),
            route("POST", "/ui/api/send/share", self._share, "send", "send-share"),
            route("POST", "/ui/api/send/recall", self._recall, "send", "send-recall"),
            route("POST", "/ui/api/send/redeliver", self._redeliver, "send", "send-redeliver"),
        ]

    # -- helpers ------------------------------------------------------------------------------
    @staticmethod
    def _user(request: Request) -> str:
        p = principal(request)
        if p is None:  # the app authorised the route: a principal is there
            raise HttpError(401, "authentication required")
        return f"user:{p.user}"

    async def _audit(self, request: Request, code: EventCode, action: str, *, study: str = "",
                     manifest_id: str = "", detail: str = "") -> None:
        await self.s.audit(AuditEvent(code, action, actor=self._user(request), actor_org=self.s.org,
                                      study=hash_uid(study) if study else "", manifest_id=manifest_id,
                                      detail=detail[:1000]))

    @staticmethod
    async def _json(request: Request) -> dict[str, Any]:
        return await json_object(request, MAX_BODY)

    # -- find ---------------------------------------------------------------------------------
    async def _studies(self, request: Request) -> Response:
        params = query(request)
        parse_search(params)  # bad input refused before the database is asked anything

        def run(store: MetadataStore) -> list[Row]:
            search = parse_search(params, lambda n: [r.local_id for r in store.patients(n)])
            rows = [r for r in store.search_studies(search) if store.research_copy_of(r.attributes.study_uid) is None
                    and not ("local" not in r.sources
                             and received_for_research_only(store, r.attributes.study_uid))]
            return [_study_json(r) for r in rows]

        rows = await self.s.db.run(run)
        fields = ','.join(sorted(k for k, v in params.items() if v and v[-1].strip())) or '-'
        shown = rows[:MAX_STUDIES]
        if not shown:
            await self._audit(request, EventCode.INSTANCES_ACCESSED, "portal-study-search",
                              detail=f"no study found; fields {fields}")
        for n, row in enumerate(shown, 1):  # every study whose patient identifiers the answer disclosed
            await self._audit(request, EventCode.INSTANCES_ACCESSED, "portal-study-search", study=row["study_uid"],
                              detail=f"study {n} of {len(shown)} listed with patient identifiers; fields {fields}")
        return json_response(200, {"studies": rows[:MAX_STUDIES], "more": len(rows) > MAX_STUDIES})

    async def _shown(self, study: str) -> list[InstanceRecord]:
        def load(store: MetadataStore) -> list[InstanceRecord]:
            records = shown_instances(store, study)
            if records and all(r.source is Source.RECEIVED for r in records) and received_for_research_only(
                    store, study, {r.origin for r in records}):
                return []  # came here for research only: not for sending (meshnode.storage.received_research)
            return records

        records = await self.s.db.run(load)
        if not records:
            raise HttpError(404, "this node holds no such study")
        return records

    async def _series(self, request: Request) -> Response:
        study = check_uid(request.path_params["study"], "study")
        records = await self._shown(study)
        series = []
        for n, (uid, items) in enumerate(_by_series(records)):
            attrs = items[0].series
            series.append({"series_uid": uid, "modality": attrs.modality, "number": attrs.series_number,
                           "description": attrs.description, "instances": len(items),
                           "thumbnail": f"/ui/api/send/studies/{study}/series/{uid}/thumbnail.png"
                           if n < MAX_THUMBNAIL_SERIES else None})
        await self._audit(request, EventCode.INSTANCES_ACCESSED, "portal-series-view", study=study,
                          detail=f"{len(series)} series")
        first = records[0].study
        return json_response(200, {"study_uid": study, "patient_name": first.patient_name,
                                   "patient_id": first.patient_id, "study_date": first.study_date,
                                   "description": first.description, "accession": first.accession,
                                   "viewer": f"/ui/viewer?study={study}", "series": series})

    async def _thumbnail(self, request: Request) -> Response:
        study = check_uid(request.path_params["study"], "study")
        series = check_uid(request.path_params["series"], "series")
        groups = _by_series(await self._shown(study))
        records = next((items for uid, items in groups[:MAX_THUMBNAIL_SERIES] if uid == series), [])
        if not records:
            raise HttpError(404, "no such series in this study (or not one of the first "
                                 f"{MAX_THUMBNAIL_SERIES}, which have thumbnails)")
        record = _middle(records)
        key = (record.sop_instance_uid, record.digest)
        cached = self._thumbnails.get(key)
        if cached is None:
            cached = await trio.to_thread.run_sync(self._render_thumbnail, record, limiter=self._render)
            self._thumbnails[key] = cached
            while len(self._thumbnails) > THUMBNAIL_CACHE:
                self._thumbnails.popitem(last=False)
        else:
            self._thumbnails.move_to_end(key)
        await self._audit(request, EventCode.INSTANCES_ACCESSED, "portal-thumbnail", study=study,
                          detail=f"series {hash_uid(series)}, instance {hash_uid(record.sop_instance_uid)}")
        if isinstance(cached, str):
            raise HttpError(422, cached, code="no-thumbnail")
        return Response(cached, 200, media_type="image/png", headers={"cache-control": "private, max-age=300"})

    def _render_thumbnail(self, record: InstanceRecord) -> bytes | str:
        """The PNG, or why there is none (kept in the cache too: an undecodable instance is not retried)."""
        try:
            return render_png(read_instance(self.s.storage.blocks, record), THUMBNAIL_SIDE)
        except PreviewError as exc:
            return f"no thumbnail: {exc}"
        except MeshError as exc:
            return f"no thumbnail: the instance cannot be read ({exc.name})"

    # -- organisations ------------------------------------------------------------------------
    async def _orgs(self, request: Request) -> Response:
        text = _text((query(request).get("q") or [""])[-1], "q", MAX_TEXT)
        found = await self.orgs.search(text)
        return json_response(200, [{"code": o.code, "name": o.name} for o in found])

    # -- share, recall, redeliver -------------------------------------------------------------
    async def _share(self, request: Request) -> Response:
        value = await self._json(request)
        unknown = sorted(set(value) - SHARE_KEYS)
        if unknown:
            raise HttpError(400, f"unknown field {unknown[0][:40]!r}")
        study = check_uid(value.get("study"), "study")
        to = value.get("to")
        if not isinstance(to, list) or not to or len(to) > MAX_RECIPIENTS:
            raise HttpError(400, f"'to' must list 1 to {MAX_RECIPIENTS} organisation codes")
        recipients: list[str] = []
        for code in to:
            try:
                code = check_org_code(code if isinstance(code, str) else "", "recipient")
            except SchemaError:
                raise HttpError(400, f"{str(code)[:20]!r} is not an organisation code") from None
            if await self.orgs.find(code) is None:
                raise HttpError(400, f"unknown organisation {code}: the directory does not list it")
            if code not in recipients:
                recipients.append(code)
        for key, allowed in (("priority", [p.value for p in Priority]), ("purpose", [p.value for p in Purpose])):
            if value.get(key, "routine" if key == "priority" else "care") not in allowed:
                raise HttpError(400, f"{key} must be one of {', '.join(allowed)}")
        if value.get("origin") is not None:
            _text(value["origin"], "origin", 16)
        share_addressing(value)  # attention and note as the manifest will check them, before anything else
        unreconciled = value.get("include_unreconciled", False)
        if not isinstance(unreconciled, bool):
            raise HttpError(400, "'include_unreconciled' must be true or false")
        held = 0
        if unreconciled:  # overriding patient reconciliation is the PACS team's decision, not a sender's
            p = principal(request)
            if p is None or not p.may("queues"):
                raise HttpError(403, "only the PACS team (permission 'queues') may send instances held by "
                                     "patient reconciliation")
            held = len(await self.s.db.run(lambda store: store.held_instances(study)))
        await self._shown(study)  # a study this node holds, shown (not a research copy or a held one)
        call = {"study": study, "to": recipients, "priority": value.get("priority", "routine"),
                "purpose": value.get("purpose", "care"),
                **{k: value[k] for k in ("attention", "note", "lifetime_days", "deid", "origin")
                   if value.get(k) is not None},
                **({"include_unreconciled": True} if unreconciled else {}),
                # the signed-in user decided a de-identified (research) share, not the node's OS account
                "portal_user": self._user(request).removeprefix("user:")}
        recipients.sort()
        result = await self.control[("POST", "/share")](call)
        manifest = result.get("manifest_id", "") if isinstance(result, dict) else ""
        await self._audit(request, EventCode.INSTANCES_TRANSFERRED, "portal-share", study=study,
                          manifest_id=str(manifest or ""),
                          detail=f"{call['priority']} {call['purpose']} to {','.join(recipients)}"
                                 + (" (de-identified copy)" if "deid" in call else "")
                                 + (" for a named person" if call.get("attention") else "")
                                 + (" with a note" if call.get("note") else "")
                                 + (f", including {held} unreconciled instance(s)" if unreconciled else ""))
        return json_response(200, result)

    async def _sent_manifest(self, value: object) -> CID:
        text = _text(value, "manifest", 128, required=True)
        try:
            manifest = CID.parse(text)
        except MeshError:
            raise HttpError(400, "manifest: not a manifest ID") from None
        row = await self.s.db.run(lambda store: store.manifest(manifest))
        if row is None or row.direction != "sent" or row.sender_org != self.s.org:
            raise HttpError(404, "this node sent no such manifest (only the sender may recall a study)")
        return manifest

    async def _recall(self, request: Request) -> Response:
        value = await self._json(request)
        unknown = sorted(set(value) - {"manifest", "reason", "research_copies"})
        if unknown:
            raise HttpError(400, f"unknown field {unknown[0][:40]!r}")
        manifest = await self._sent_manifest(value.get("manifest"))
        reason = _text(value.get("reason"), "reason", MAX_REASON, required=True).strip()
        research = value.get("research_copies", False)
        if not isinstance(research, bool):
            raise HttpError(400, "'research_copies' must be true or false")
        result = await self.control[("POST", "/recall")]({"manifest": str(manifest), "reason": reason,
                                                         "research_copies": research})
        await self._audit(request, EventCode.INSTANCES_TRANSFERRED, "portal-recall", manifest_id=str(manifest),
                          detail=reason[:300] + (" (with research copies)" if research else ""))
        return json_response(200, result)

    async def _redeliver(self, request: Request) -> Response:
        value = await self._json(request)
        unknown = sorted(set(value) - {"manifest"})
        if unknown:
            raise HttpError(400, f"unknown field {unknown[0][:40]!r}")
        # one manifest the user chose: the page never queues every failed delivery of the node again
        call: dict[str, Any] = {"manifest": str(await self._sent_manifest(value.get("manifest")))}
        result = await self.control[("POST", "/outbox/retry")](call)
        await self._audit(request, EventCode.INSTANCES_TRANSFERRED, "portal-redeliver",
                          manifest_id=call.get("manifest", ""), detail="failed deliveries queued again")
        return json_response(200, result)

    async def _outbox(self, request: Request) -> Response:
        rows = await self.outbox(True)
        await self._audit(request, EventCode.INSTANCES_ACCESSED, "portal-outbox-view",
                          detail="sent studies with patient identifiers")
        return json_response(200, {"rows": rows[:200]})
