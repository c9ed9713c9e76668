"""The portal's requests API (meshnode.web.requests_web) on the node's real request service, in one process
(tests/meshnode/node/request_harness.py): who may do what (a clinician requests, only the PACS team decides),
and that what the page sends reaches the other organisation and comes back."""

from __future__ import annotations

import json

import trio
from trio.testing import MockClock

from meshnode.storage.audit import AuditEvent
from meshnode.storage.request_store import INCOMING, OUTGOING
from meshnode.storage.users import MemoryUserStore
from meshnode.web.app import WebApp
from meshnode.web.auth import Authenticator, add_user, issue_token
from meshnode.web.config import HttpConfig
from meshnode.web.requests_web import LIST_AUDIT_EVERY_S, RequestsWeb
from protocol.study_request import RequestState
from tests.meshnode.node.conftest import mesh, source, study  # noqa: F401 - the in-process node fixtures
from tests.meshnode.node.harness import MemoryMesh
from tests.meshnode.node.request_harness import RequestMesh, RequestNode
from tests.meshnode.web.asgi import call

NOW = 1_767_225_600.0
PATIENT = "SYN0000001"


def portal(node: RequestNode) -> tuple[WebApp, dict[str, str], list[AuditEvent]]:
    """The node's requests API with three users: a clinician, a PACS-team member and an auditor."""
    store = MemoryUserStore()
    events: list[AuditEvent] = []

    async def audit(e: AuditEvent) -> None:
        events.append(e)

    tokens = {}
    for name, role in (("alice", "clinician"), ("bob", "pacs"), ("ann", "auditor")):
        add_user(store, name, (role,), int(NOW * 1000))
        tokens[name] = issue_token(store, name, "", int(NOW * 1000))[0]
    app = WebApp(RequestsWeb(lambda: node.requests, audit).routes(), Authenticator(store, lambda: NOW),
                 HttpConfig(listen="127.0.0.1:0"), audit)
    return app, tokens, events


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


async def test_a_clinician_requests_and_only_the_pacs_team_decides(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    rm = RequestMesh(mesh)
    holder = rm.add(mesh.add("a", "RJ1", 50))
    requester = rm.add(mesh.add("r", "RGT", 51))
    app_r, tokens_r, _ = portal(requester)
    app_h, tokens_h, events_h = portal(holder)
    body = json.dumps({"holder": "RJ1", "patient_id": PATIENT, "reason": "MDT", "priority": "urgent",
                       "lifetime_days": 2}).encode()
    assert (await call(app_r, "POST", "/ui/api/requests", headers=auth(tokens_r["ann"]), body=body)).status == 403
    sent = await call(app_r, "POST", "/ui/api/requests", headers=auth(tokens_r["alice"]), body=body)
    assert sent.status == 200, sent.json()
    request_id = sent.json()["request_id"]
    assert sent.json()["requested_by"] == "user:alice"
    assert sent.json()["expires_at"] - sent.json()["created_at"] == 2 * 86400
    # the holder's clinician sees neither the queue nor may decide
    assert (await call(app_h, "GET", "/ui/api/requests/incoming", headers=auth(tokens_h["alice"]))).status == 403
    approve = json.dumps({"studies": [study]}).encode()
    path = f"/ui/api/requests/incoming/{request_id}/approve"
    assert (await call(app_h, "POST", path, headers=auth(tokens_h["alice"]), body=approve)).status == 403
    assert holder.node.store.request(request_id, INCOMING).state is RequestState.PENDING  # type: ignore[union-attr]
    assert holder.node.store.manifests("sent") == []
    # the PACS team sees it with the matching study, and sends it
    shown = await call(app_h, "GET", f"/ui/api/requests/incoming/{request_id}", headers=auth(tokens_h["bob"]))
    assert [s["study_uid"] for s in shown.json()["matching"]] == [study]
    found = await call(app_h, "POST", f"/ui/api/requests/incoming/{request_id}/search", headers=auth(tokens_h["bob"]),
                       body=json.dumps({"modality": "MR"}).encode())
    assert found.status == 200 and found.json() == []
    done = await call(app_h, "POST", path, headers=auth(tokens_h["bob"]), body=approve)
    assert done.status == 200 and done.json()["state"] == "approved" and done.json()["decided_by"] == "user:bob"
    outgoing = await call(app_r, "GET", "/ui/api/requests/outgoing", headers=auth(tokens_r["alice"]))
    [row] = outgoing.json()
    assert row["state"] == "approved" and len(row["manifests"]) == 1
    assert requester.node.store.request(request_id, OUTGOING).state is RequestState.APPROVED  # type: ignore[union-attr]
    assert "requests-show" in [e.action for e in events_h]  # patient identifiers shown: audited with the user
    # the page polls its lists: each list is audited once per user per LIST_AUDIT_EVERY_S, not on every poll
    for _ in range(3):
        assert (await call(app_h, "GET", "/ui/api/requests/incoming", headers=auth(tokens_h["bob"]))).status == 200
    listed = [e for e in events_h if e.action == "requests-incoming-list"]
    assert [e.actor for e in listed] == ["user:bob"]
    await trio.sleep(LIST_AUDIT_EVERY_S)
    await call(app_h, "GET", "/ui/api/requests/incoming", headers=auth(tokens_h["bob"]))
    assert len([e for e in events_h if e.action == "requests-incoming-list"]) == 2


async def test_bad_input_is_a_clear_error(autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    rm = RequestMesh(mesh)
    holder = rm.add(mesh.add("a", "RJ1", 50))
    app, tokens, _ = portal(holder)
    for payload in ({"holder": "RGT", "reason": "x"},  # no patient
                    {"holder": "RGT", "nhs_number": "1234567890", "reason": "x"},  # bad check digit
                    {"holder": "rgt; drop", "patient_id": "P", "reason": "x"},
                    {"holder": "RGT", "patient_id": "P", "reason": "x", "lifetime_days": 31}):
        reply = await call(app, "POST", "/ui/api/requests", headers=auth(tokens["alice"]),
                           body=json.dumps(payload).encode())
        assert reply.status == 400, payload
    assert holder.node.store.requests() == []
    missing = await call(app, "GET", "/ui/api/requests/incoming/" + "ab" * 16, headers=auth(tokens["bob"]))
    assert missing.status == 404
    assert (await call(app, "GET", "/ui/api/requests/incoming/nothex", headers=auth(tokens["bob"]))).status == 400


async def test_a_clinician_sees_only_their_own_requests_and_lists_are_paged(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    """Review 3: a user with `request` saw every outgoing request of the node (other clinicians' patients);
    now a clinician sees the requests they made, the PACS team all; lists come a page at a time."""
    from dataclasses import replace

    from meshnode.node.request_routes import PAGE
    rm = RequestMesh(mesh)
    holder = rm.add(mesh.add("a", "RJ1", 50))
    requester = rm.add(mesh.add("r", "RGT", 51))
    app_r, tokens_r, _ = portal(requester)
    body = json.dumps({"holder": "RJ1", "patient_id": PATIENT, "reason": "MDT"}).encode()
    assert (await call(app_r, "POST", "/ui/api/requests", headers=auth(tokens_r["alice"]), body=body)).status == 200
    await requester.requests.send("RJ1", patient_id="SOMEONE-ELSE", reason="MDT", requested_by="user:carol")
    mine = (await call(app_r, "GET", "/ui/api/requests/outgoing", headers=auth(tokens_r["alice"]))).json()
    assert [r["requested_by"] for r in mine] == ["user:alice"]
    everyone = (await call(app_r, "GET", "/ui/api/requests/outgoing", headers=auth(tokens_r["bob"]))).json()
    assert sorted(r["requested_by"] for r in everyone) == ["user:alice", "user:carol"]
    # paging: more than a page of rows, read through with `before`
    [row] = [r for r in requester.node.store.requests(OUTGOING) if r.request_id == mine[0]["request_id"]]
    for i in range(PAGE + 5):
        requester.node.store.save_request(replace(row, request_id=f"{i:032x}", created_ms=row.created_ms - 1 - i))
    first = (await call(app_r, "GET", "/ui/api/requests/outgoing", headers=auth(tokens_r["alice"]))).json()
    assert len(first) == PAGE
    rest = (await call(app_r, "GET", "/ui/api/requests/outgoing", query=f"before={first[-1]['cursor']}",
                       headers=auth(tokens_r["alice"]))).json()
    assert len(rest) == 6 and not {r["request_id"] for r in first} & {r["request_id"] for r in rest}
    bad = await call(app_r, "GET", "/ui/api/requests/outgoing", query="before=x", headers=auth(tokens_r["alice"]))
    assert bad.status == 400
