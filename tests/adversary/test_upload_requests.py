"""Hostile tests of the ask for an upload link (/p/ask, POST /p/api/upload-requests): an unauthenticated form on
the internet. Through the real app (meshnode.web.app.WebApp, in-process ASGI) with a real link service, a real
SMTP server and the recording SMS gateway; both request stores."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import trio

from meshnode.patient.service import LinkService
from meshnode.patient.sqlite_upload_requests import SqliteUploadRequestStore
from meshnode.patient.upload_errors import UploadStateError
from meshnode.patient.upload_requests import (
    PENDING,
    PER_CLIENT,
    MemoryUploadRequestStore,
    UploadRequests,
    UploadRequestStore,
)
from meshnode.storage.users import MemoryUserStore
from meshnode.web.app import WebApp
from meshnode.web.auth import Authenticator, add_user, issue_token
from meshnode.web.config import HttpConfig
from meshnode.web.upload_requests_web import UploadRequestsWeb
from tests.meshnode.notify.helpers import Audit
from tests.meshnode.notify.smtp_server import SmtpServer
from tests.meshnode.patient.helpers import Clock, SmsGateway, service, token_of
from tests.meshnode.web.asgi import Reply, call

ASK = "/p/api/upload-requests"
JSON = {"Content-Type": "application/json"}
GOOD = {"person": "Ann Patient", "email": "ann@example.org", "code_to": "+447700900123",
        "message": "Two CT scans on a CD from St Elsewhere, 2025"}


@dataclass
class World:
    app: WebApp
    asks: UploadRequests
    store: UploadRequestStore
    links: LinkService
    smtp: SmtpServer
    gateway: SmsGateway
    audit: Audit
    staff: dict[str, str]
    clinician: dict[str, str]

    async def ask(self, body: object, client: str = "198.51.100.7", headers: dict[str, str] | None = None) -> Reply:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return await call(self.app, "POST", ASK, headers=headers if headers is not None else JSON, body=raw,
                          client=client)

    def pending(self) -> int:
        return len(self.store.pending())


@pytest.fixture(params=["memory", "sqlite"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    smtp = SmtpServer(tmp_path / "smtp").start()
    clock = Clock()
    gateway = SmsGateway(clock).start()
    links, _ = service(smtp, gateway, tmp_path, clock)
    store: UploadRequestStore
    store = MemoryUploadRequestStore() if request.param == "memory" else SqliteUploadRequestStore(tmp_path / "n.db")
    audit = Audit()
    asks = UploadRequests(replace(links.config, max_pending_upload_requests=3), store, links, audit, clock=clock)
    users = MemoryUserStore()
    add_user(users, "pacs1", ("pacs",), 0)
    add_user(users, "doc1", ("clinician",), 0)
    staff, _ = issue_token(users, "pacs1", "", 0)
    doc, _ = issue_token(users, "doc1", "", 0)
    web = UploadRequestsWeb(lambda: asks)
    app = WebApp([*web.public_routes(), *web.staff_routes()], Authenticator(users), HttpConfig(), audit)
    yield World(app, asks, store, links, smtp, gateway, audit, {"Authorization": f"Bearer {staff}"},
                {"Authorization": f"Bearer {doc}"})
    gateway.stop()
    smtp.stop()
    if isinstance(store, SqliteUploadRequestStore):
        store.close()


async def test_an_ask_sends_nothing_to_the_addresses_given(world: World) -> None:
    """The form cannot be used to mail or text third parties (nor to run up SMS costs)."""
    for code_to in ("+447700900123", "second@example.org"):
        reply = await world.ask({**GOOD, "email": f"victim-{code_to[-3:]}@example.org", "code_to": code_to})
        assert reply.status == 202, reply.body
    # the link service awaits its sends (SMTP, the gateway): anything sent would be here by now
    assert world.smtp.received == [] and world.gateway.bodies == []
    assert world.pending() == 2


async def test_the_pending_asks_are_capped(world: World) -> None:
    for i in range(3):
        assert (await world.ask({**GOOD, "email": f"p{i}@example.org"})).status == 202
    reply = await world.ask({**GOOD, "email": "p9@example.org"}, client="203.0.113.50")
    assert reply.status == 503 and reply.json()["error"] == "busy"
    assert "try again later" in reply.json()["message"]
    assert world.pending() == 3
    # one decided frees a place
    first = world.store.pending()[0].request_id
    await world.asks.decline("pacs1", first, "not ours")
    assert (await world.ask({**GOOD, "email": "p9@example.org"})).status == 202


async def test_one_address_cannot_fill_the_queue(world: World) -> None:
    """Within the public rate limit one address could post the whole queue full: it gets PER_CLIENT pending asks,
    then 503, while others still get in."""
    world.asks.config = replace(world.asks.config, max_pending_upload_requests=100)
    codes = [(await world.ask({**GOOD, "email": f"flood{i}@example.org"}, client="203.0.113.66")).status
             for i in range(PER_CLIENT + 3)]
    assert codes == [202] * PER_CLIENT + [503] * 3
    other = await world.ask(GOOD, client="198.51.100.8")
    assert other.status == 202 and world.pending() == PER_CLIENT + 1


async def test_the_same_ask_again_is_one_ask_and_answers_the_same(world: World) -> None:
    first = await world.ask(GOOD)
    again = [await world.ask({**GOOD, "email": GOOD["email"].upper(), "message": f"again {i}"}) for i in range(5)]
    assert world.pending() == 1
    assert all((r.status, r.body) == (first.status, first.body) for r in again)
    # nor does the answer say whether the node knows the address (a link already made for it)
    await world.links.create_upload("user:pacs1", "Bob", "bob@example.org", "+447700900124")
    known = await world.ask({**GOOD, "email": "bob@example.org", "code_to": "+447700900124"})
    assert (known.status, known.body) == (first.status, first.body)
    assert len([e for e in world.audit.events if e.action == "upload-request-received"]) == 2


BAD: list[tuple[str, object]] = [
    ("control character in the name", {**GOOD, "person": "Ann\x07 Patient"}),
    ("new line in the name", {**GOOD, "person": "Ann\nPatient"}),
    ("bidi override in the name", {**GOOD, "person": "Ann \u202egnp.exe"}),
    ("bidi override in the message", {**GOOD, "message": "CT scans \u202etxt.exe"}),
    ("NUL in the message", {**GOOD, "message": "CT\x00"}),
    ("escape in the message", {**GOOD, "message": "CT \x1b[31m"}),
    ("message over 500", {**GOOD, "message": "x" * 501}),
    ("empty message", {**GOOD, "message": "  "}),
    ("header injection in the email", {**GOOD, "email": "a@example.org\r\nBcc: x@example.org"}),
    ("not an email", {**GOOD, "email": "nobody"}),
    ("code to the link's own email", {**GOOD, "code_to": "ANN@example.org"}),
    ("code to a premium number", {**GOOD, "code_to": "09001234567"}),
    ("name not text", {**GOOD, "person": ["Ann"]}),
    ("email missing", {k: v for k, v in GOOD.items() if k != "email"}),
    ("name too long", {**GOOD, "person": "A" * 129}),
    ("not an object", [GOOD]),
]


@pytest.mark.parametrize(("why", "body"), BAD, ids=[b[0] for b in BAD])
async def test_bad_input_is_refused_and_stores_nothing(world: World, why: str, body: object) -> None:
    reply = await world.ask(body)
    assert reply.status == 400, (why, reply.body)
    assert world.pending() == 0 and world.audit.events == []


async def test_a_huge_body_or_a_form_post_is_refused(world: World) -> None:
    assert (await world.ask({**GOOD, "message": "x" * 20000})).status == 413
    form = b"person=Ann&email=ann%40example.org&code_to=%2B447700900123&message=CT"
    assert (await world.ask(form, headers={"Content-Type": "application/x-www-form-urlencoded"})).status == 415
    assert world.pending() == 0


async def test_two_pacs_users_sending_at_once_make_one_link(world: World) -> None:
    await world.ask(GOOD)
    request_id = world.store.pending()[0].request_id
    results: list[object] = []

    async def one(user: str) -> None:
        try:
            results.append(await world.asks.send(user, request_id))
        except UploadStateError as exc:
            results.append(exc)

    async with trio.open_nursery() as nursery:
        for user in ("pacs1", "pacs2", "pacs3"):
            nursery.start_soon(one, user)
    links = [r for r in results if isinstance(r, str)]
    assert len(links) == 1 and len(results) == 3
    assert len(world.links.store.links(kind="upload")) == 1
    assert token_of(world.smtp, GOOD["email"])  # the one link's email went
    # and a decided request cannot be decided again, by HTTP either
    for path, body in ((f"/ui/api/upload-requests/{request_id}/send", b""),
                       (f"/ui/api/upload-requests/{request_id}/decline", b'{"reason": "changed my mind"}')):
        reply = await call(world.app, "POST", path, headers={**world.staff, **JSON}, body=body)
        assert reply.status == 409, reply.body
    stored = world.store.get(request_id)
    assert stored is not None and stored.state == "sent" and stored.outcome == links[0]


async def test_a_link_that_could_not_be_made_leaves_the_ask_pending(world: World) -> None:
    """Making the link fails (no SMS gateway here for a mobile number): the ask waits again, nothing sent."""
    await world.ask(GOOD)
    request_id = world.store.pending()[0].request_id
    world.links.config = replace(world.links.config, sms_gateway_url="")
    reply = await call(world.app, "POST", f"/ui/api/upload-requests/{request_id}/send", headers=world.staff)
    assert reply.status == 400, reply.body
    row = world.store.get(request_id)
    assert row is not None and row.state == PENDING and row.decided_by == ""
    assert world.links.store.links() == []


async def test_the_staff_routes_need_the_queues_permission(world: World) -> None:
    await world.ask(GOOD)
    request_id = world.store.pending()[0].request_id
    for method, path in (("GET", "/ui/api/upload-requests"),
                         ("POST", f"/ui/api/upload-requests/{request_id}/send"),
                         ("POST", f"/ui/api/upload-requests/{request_id}/decline")):
        assert (await call(world.app, method, path)).status == 401
        assert (await call(world.app, method, path, headers={**world.clinician, **JSON},
                           body=b'{"reason": "x"}')).status == 403
    assert world.pending() == 1 and world.smtp.received == []


async def test_the_audit_trail_holds_no_patient_data(world: World) -> None:
    await world.ask(GOOD)
    await world.ask({**GOOD, "email": "carl@example.org", "person": "Carl Secret"})
    first, second = (r.request_id for r in world.store.pending())
    await world.asks.send("pacs1", first)
    await world.asks.decline("pacs1", second, "Carl Secret is not our patient")
    secrets = ("Ann", "Carl", "example.org", "447700900123", "CT", "Elsewhere", "not our patient")
    actions = [e.action for e in world.audit.events if e.action.startswith("upload-request")]
    assert actions == ["upload-request-received", "upload-request-received", "upload-request-sent",
                       "upload-request-declined"]
    for event in world.audit.events:
        text = f"{event.actor} {event.detail} {event.study}"
        assert not any(s in text for s in secrets), text
    declined = world.store.get(second)
    assert declined is not None and declined.outcome == "Carl Secret is not our patient"


async def test_a_decline_reason_is_checked(world: World) -> None:
    await world.ask(GOOD)
    request_id = world.store.pending()[0].request_id
    for reason in ("", "x" * 501, "bad\x00reason", 5):
        reply = await call(world.app, "POST", f"/ui/api/upload-requests/{request_id}/decline",
                           headers={**world.staff, **JSON}, body=json.dumps({"reason": reason}).encode())
        assert reply.status == 400, reply.body
    assert world.pending() == 1
