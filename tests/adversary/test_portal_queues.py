"""The PACS team's queues are not a clinician's: the reconciliation queue, the patient lookup table (every
patient's identifiers), the conflict queue and the held research shares need the `queues` permission (the
pacs role), by API token and by session; the pacs role can also decide (write, deid-release)."""

from __future__ import annotations

from typing import Any

import pytest

from meshnode.storage.audit import AuditEvent
from meshnode.storage.users import MemoryUserStore, permissions
from meshnode.web.app import WebApp
from meshnode.web.auth import SESSION_COOKIE, Authenticator, add_user, issue_token
from meshnode.web.config import HttpConfig
from meshnode.web.conflicts_http import ConflictsHttp
from meshnode.web.deid_web import DeidWeb
from meshnode.web.reconcile_web import ReconcileWeb
from tests.meshnode.web.asgi import call

LISTS = ["/reconcile", "/patients", "/api/conflicts", "/deid/held"]


def _app() -> tuple[WebApp, dict[str, str], list[AuditEvent]]:
    users = MemoryUserStore()
    events: list[AuditEvent] = []

    async def audit(event: AuditEvent) -> None:
        events.append(event)

    def nothing() -> Any:
        raise AssertionError("a refused request must not reach the queue")

    routes = [*ReconcileWeb(nothing, None, audit, lambda: 0.0).routes(),  # type: ignore[arg-type]
              *ConflictsHttp(nothing).routes(), *DeidWeb(nothing).routes()]
    auth = Authenticator(users)
    tokens = {}
    for name in ("clinician", "auditor", "admin"):
        add_user(users, name, (name,), 0)
        tokens[name], _ = issue_token(users, name, "", 0)
    return WebApp(routes, auth, HttpConfig(listen="127.0.0.1:0"), audit), tokens, events


@pytest.mark.parametrize("path", LISTS)
async def test_a_clinician_cannot_list_the_pacs_queues(path: str) -> None:
    app, tokens, events = _app()
    for name in ("clinician", "auditor", "admin"):
        reply = await call(app, "GET", path, headers={"Authorization": f"Bearer {tokens[name]}"})
        assert reply.status == 403, (name, reply.body)
    principal = await app.auth.token(tokens["clinician"])
    assert principal is not None
    session = app.auth.open_session(principal, 1)
    reply = await call(app, "GET", path, headers={"Cookie": f"{SESSION_COOKIE}={session}"})
    assert reply.status == 403
    assert [e.action for e in events].count("http-forbidden") == 4  # audited


def test_the_pacs_role_can_list_and_decide() -> None:
    assert {"queues", "write", "deid-release"} <= permissions(("pacs",))
    assert "queues" not in permissions(("clinician",)) | permissions(("read", "write"))
