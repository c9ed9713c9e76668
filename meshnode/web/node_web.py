"""The node's HTTP side, started by the node runtime: DICOMweb, web UI, metrics, health, webhooks, email.

One task in the node's nursery. The HTTP listener runs when [http] listen is
set; webhooks run when [[webhook]] receivers are configured and arrival emails
when [notify] is (with or without the listener).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

import trio

from meshnode.directory.orgs import OrgList
from meshnode.node.context import keep_running
from meshnode.node.control_routes import routes as control_routes
from meshnode.notify.notifier import Notifier
from meshnode.storage.audit import AuditEvent
from meshnode.patient.uploads import AuditFn, Uploads
from meshnode.storage.sqlite_uploads import SqliteUploadStore
from meshnode.storage.sqlite_users import SqliteUserStore
from meshnode.web.app import Route, WebApp
from meshnode.web.auth import Authenticator
from meshnode.web.chain import ChainVerifier
from meshnode.web.deid_web import DeidWeb
from meshnode.web.conflicts_http import ConflictsHttp
from meshnode.web.crc_warmup import CrcWarmup
from meshnode.web.metrics import EventMetrics, MetricsSnapshot
from meshnode.web.node_view import NodeView
from meshnode.web.ops import Ops
from meshnode.web.qido import Qido
from meshnode.web.reconcile_web import ReconcileWeb
from meshnode.web.send_web import SendWeb
from meshnode.web.patient_links_web import PatientLinksWeb
from meshnode.patient.service import LinkService
from meshnode.patient.sqlite_links import SqliteLinkStore
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.records import InstanceRecord
from meshnode.storage.received_research import received_for_research_only
from meshnode.web.requests_web import RequestsWeb
from meshnode.web.server import serve_http
from meshnode.web.services import WebServices
from meshnode.web.stow import Stow
from meshnode.web import signin
from meshnode.web.oidc import OidcClient
from meshnode.web.patient_listener import check_shared, limited, public_app, serve_patient_http
from meshnode.web.patient_web import PatientWeb, media_planner
from meshnode.study.key_image import key_image_of
from meshnode.web.signin_web import SignInWeb
from meshnode.web.ui import Ui
from meshnode.web.uploads_web import UploadsWeb
from meshnode.web.upload_requests_web import UploadRequestsWeb
from meshnode.patient.sqlite_upload_requests import SqliteUploadRequestStore
from meshnode.patient.upload_requests import UploadRequests
from meshnode.web.users_web import UsersWeb
from meshnode.web.wado import Wado
from meshnode.web.webhooks import Webhooks

if TYPE_CHECKING:
    from trio_typing import TaskStatus

    from meshnode.node.runtime import Node

log = logging.getLogger(__name__)


async def run_web(node: Node, *, task_status: TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    ctx = node.ctx
    http = ctx.config.http
    db_path = ctx.home.path / "node.db"
    users = SqliteUserStore(db_path)
    events = EventMetrics()
    webhooks = Webhooks(http.webhooks, ctx.db, ctx.org, ctx.peer_id, http.public_url, ctx.clock)
    ctx.events.subscribe(events.on_event)
    if http.webhooks:
        ctx.events.subscribe(webhooks.on_event)
    notifier = _notifier(node, users)  # [notify]: email to staff when a study arrives
    # the patient pages get `links` (None when [patient_access] is off); the control API uses node.patient_links
    # a share's CRC-32s are computed ahead, so the patient's download streams its ZIP without a pass
    warmup = CrcWarmup(ctx.db, ctx.storage) if ctx.config.patient_access.enabled else None
    links = _patient_links(node, users, warmup)
    node.patient_links = links
    upload_store = SqliteUploadStore(db_path) if ctx.config.patient_access.enabled else None
    # asks for an upload link from the public page /p/ask (meshnode.patient.upload_requests)
    ask_store = SqliteUploadRequestStore(db_path) if links is not None else None
    if notifier is not None:
        ctx.events.subscribe(notifier.on_event)
    try:
        async with trio.open_nursery() as nursery:
            if http.webhooks:
                nursery.start_soon(keep_running, "webhooks", webhooks.run)
            if notifier is not None:
                nursery.start_soon(keep_running, "email notifications", notifier.run)
            if warmup is not None:
                nursery.start_soon(keep_running, "CRC-32 warm-up", warmup.run)
            url = ""
            # the patient pages' own listener runs even with [http] off (only it faces the internet)
            if http.enabled or ctx.config.patient_access.own_listener:
                async def audit(event: AuditEvent) -> None:
                    await ctx.audit(event)

                uploads = patient_uploads(node, upload_store, audit)
                asks = None if links is None or ask_store is None else UploadRequests(
                    ctx.config.patient_access, ask_store, links, audit, clock=ctx.clock)
                if uploads is not None:  # abandoned uploads (their link ended) swept hourly
                    nursery.start_soon(keep_running, "upload sweep", uploads.run)

                services = WebServices(http, ctx.org, ctx.storage, ctx.db, audit, ctx.clock)
                auth = Authenticator(users, ctx.clock, http.session_idle_seconds)
                view = NodeView(node)
                app_holder: list[WebApp] = []

                async def snapshot() -> MetricsSnapshot:
                    counts = await webhooks.counts()
                    snap = await view.metrics_snapshot(counts)
                    return replace(snap, emails=await notifier.counts()) if notifier is not None else snap

                routes: list[Route] = [
                    *Ops(view.health, snapshot, events, lambda: app_holder[0]).routes(),
                    *DeidWeb(lambda: node.sender.research).routes(),
                    *Qido(services).routes(),
                    *Wado(services).routes(),
                    *Stow(services, lambda: node.gateway.intake, lambda: ctx.config.gateway.routes).routes(),
                    *(ui := Ui(services, auth, view, ChainVerifier(ctx.db, ctx.storage, ctx.clock),
                               lambda: ctx.changed)).routes(),
                    *SignInWeb(services, auth, OidcClient(http.oidc, ctx.clock) if http.oidc else None,
                               pages=ui).routes(),
                    *UsersWeb(services, auth, signin.issuer(ctx.org)).routes(),
                    *ReconcileWeb(lambda: node.gateway.reconciler, ctx.db, audit, ctx.clock).routes(),
                    *ConflictsHttp(lambda: node.gateway.conflicts).routes(),
                    # the portal's send page: the control API's share/recall/redeliver (what the CLI calls)
                    *SendWeb(services, control_routes(node), OrgList(ctx.directory.list_orgs, ctx.clock,
                                                                      own_org=ctx.org), view.outbox).routes(),
                    *RequestsWeb(lambda: node.requests, audit).routes(),  # study requests, prior queries
                    *PatientLinksWeb(lambda: links).routes(),  # patient links: staff create, list, revoke, unlock
                    # issue 14: the PACS team's review of patient uploads (the /p/ tus routes: the public app)
                    *UploadsWeb(lambda: uploads).staff_routes(),
                    *UploadRequestsWeb(lambda: asks).staff_routes(),  # asks for an upload link (/p/ask)
                ]
                # the patient pages (issue 14): under /p/ here, or on a listener of their own
                patient = ctx.config.patient_access
                patient_web = _patient_web(node, services, links)
                # with them, the uploader's tus routes (meshnode.web.uploads_web), behind the pages' session check
                public_routes = [] if patient_web is None else [
                    *patient_web.routes(), *UploadsWeb(lambda: uploads, patient_web, links).public_routes(),
                    *UploadRequestsWeb(lambda: asks).public_routes()]
                if patient_web is not None and not patient.own_listener:
                    check_shared(patient, http)  # one list of trusted proxies; TLS off localhost
                    routes.extend(public_routes)
                app = WebApp(routes, auth, http, audit)
                app_holder.append(app)
                if http.enabled:
                    url = await nursery.start(serve_http, limited(app, patient, http=http) if patient_web is not None else app,
                                              http, ctx.home.path)
                    services.url = url
                if patient_web is not None and patient.own_listener:
                    await nursery.start(serve_patient_http, public_app(public_routes, auth, patient, audit),
                                        patient, ctx.home.path)
            task_status.started(url)
    finally:
        ctx.events.unsubscribe(events.on_event)
        ctx.events.unsubscribe(webhooks.on_event)
        if notifier is not None:
            ctx.events.unsubscribe(notifier.on_event)
        node.patient_links = None
        if links is not None:
            store = links.store
            if isinstance(store, SqliteLinkStore):
                store.close()
        users.close()
        if upload_store is not None:
            upload_store.close()
        if ask_store is not None:
            ask_store.close()


def patient_uploads(node: Node, store: SqliteUploadStore | None, audit: AuditFn) -> Uploads | None:
    """Uploads through patient upload links ([patient_access] on): the public app's tus routes and the
    staff review share this one."""
    ctx = node.ctx
    if store is None:
        return None
    return Uploads(ctx.home.path, store, ctx.config.patient_access, audit, lambda: node.gateway.intake, ctx.clock,
                   lambda: node.gateway.reconciler)


def _patient_web(node: Node, services: WebServices, links: LinkService | None) -> PatientWeb | None:
    """The patient pages ([patient_access] on): the link service, MEDIA's media set and key images."""
    if links is None:
        return None
    ctx = node.ctx
    storage = ctx.storage
    org_name = ctx.certificate.document.org_name or ctx.org

    def render(record: InstanceRecord, fmt: str, frame: int) -> bytes:
        return key_image_of(storage, record, fmt=fmt, frame=frame)

    return PatientWeb(links, services, ctx.config.patient_access, media_planner(services.db, storage, org_name),
                      render)


def _notifier(node: Node, users: SqliteUserStore) -> Notifier | None:
    ctx = node.ctx
    if not ctx.config.notify.enabled:
        return None

    async def audit(event: AuditEvent) -> None:
        await ctx.audit(event)

    def org_name(peer_id: str) -> str:
        known = ctx.peers.certificate_of(peer_id)
        return known.document.org_name if known is not None else ""

    return Notifier(ctx.config.notify, ctx.db, users, ctx.org, ctx.config.http.public_url, audit, ctx.clock,
                    open_manifest=ctx.manifests.open, org_name=org_name)


def _patient_links(node: Node, users: SqliteUserStore, warmup: CrcWarmup | None = None) -> LinkService | None:
    """The patient link service ([patient_access] on; it needs [notify]'s relay, which the config checks)."""
    ctx = node.ctx
    if not ctx.config.patient_access.enabled:
        return None

    async def audit(event: AuditEvent) -> None:
        await ctx.audit(event)

    async def holds(uids: tuple[str, ...]) -> list[str]:
        """Those of `uids` this node may not share: not here, held back, a research copy, or received for research."""
        def run(store: MetadataStore) -> list[str]:  # what the send page offers (meshnode.web.send_web)
            held_back = store.held_studies()  # reconciliation holds and research copies: not this node's to share
            missing = []
            for u in uids:
                row = store.study(u)
                if row is None or u in held_back or store.research_copy_of(u) is not None or (
                        "local" not in row.sources and received_for_research_only(store, u)):
                    missing.append(u)
            return missing
        return await ctx.db.run(run)

    name = ctx.certificate.document.org_name or ctx.org
    return LinkService(ctx.config.patient_access, ctx.config.notify, SqliteLinkStore(ctx.home.path / "node.db"),
                       users, audit, org_name=name, clock=ctx.clock, holds=holds,
                       on_share=warmup.wanted if warmup is not None else None)
