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
from meshnode.web.metrics import EventMetrics, MetricsSnapshot
from meshnode.web.node_view import NodeView
from meshnode.web.ops import Ops
from meshnode.web.qido import Qido
from meshnode.web.reconcile_web import ReconcileWeb
from meshnode.web.send_web import SendWeb
from meshnode.web.requests_web import RequestsWeb
from meshnode.web.server import serve_http
from meshnode.web.services import WebServices
from meshnode.web.stow import Stow
from meshnode.web import signin
from meshnode.web.oidc import OidcClient
from meshnode.web.signin_web import SignInWeb
from meshnode.web.ui import Ui
from meshnode.web.uploads_web import UploadsWeb
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
    upload_store = SqliteUploadStore(db_path) if ctx.config.patient_access.enabled else None
    if notifier is not None:
        ctx.events.subscribe(notifier.on_event)
    try:
        async with trio.open_nursery() as nursery:
            if http.webhooks:
                nursery.start_soon(keep_running, "webhooks", webhooks.run)
            if notifier is not None:
                nursery.start_soon(keep_running, "email notifications", notifier.run)
            url = ""
            if http.enabled:
                async def audit(event: AuditEvent) -> None:
                    await ctx.audit(event)

                uploads = patient_uploads(node, upload_store, audit)

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
                    # issue 14: the PACS team's review of patient uploads (the /p/ tus routes: the public app)
                    *UploadsWeb(lambda: uploads).staff_routes(),
                ]
                app = WebApp(routes, auth, http, audit)
                app_holder.append(app)
                url = await nursery.start(serve_http, app, http, ctx.home.path)
                services.url = url
            task_status.started(url)
    finally:
        ctx.events.unsubscribe(events.on_event)
        ctx.events.unsubscribe(webhooks.on_event)
        if notifier is not None:
            ctx.events.unsubscribe(notifier.on_event)
        users.close()
        if upload_store is not None:
            upload_store.close()


def patient_uploads(node: Node, store: SqliteUploadStore | None, audit: AuditFn) -> Uploads | None:
    """Uploads through patient upload links ([patient_access] on): the public app's tus routes and the
    staff review share this one."""
    ctx = node.ctx
    if store is None:
        return None
    return Uploads(ctx.home.path, store, ctx.config.patient_access, audit, lambda: node.gateway.intake, ctx.clock)


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
