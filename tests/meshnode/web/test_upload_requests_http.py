"""The ask for an upload link over a real HTTP listener (hypercorn on 127.0.0.1), behind the public pages' rate
limiter as a node serves them (meshnode.web.patient_listener.limited): the form page with its CSP, an ask
(nothing sent), the PACS team's list and "Send an upload link" (the email with the link arrives at a real SMTP
server), and the limiter refusing a flood of asks from one address."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import requests
import trio

from meshnode.patient.service import LinkService
from meshnode.patient.sqlite_upload_requests import SqliteUploadRequestStore
from meshnode.patient.upload_requests import PER_CLIENT, UploadRequests
from meshnode.storage.users import MemoryUserStore
from meshnode.web.app import WebApp
from meshnode.web.auth import Authenticator, add_user, issue_token
from meshnode.web.config import HttpConfig
from meshnode.web.patient_listener import limited
from meshnode.web.rate_limit import RateLimiter
from meshnode.web.server import serve_http
from meshnode.web.ui import _static
from meshnode.web.upload_requests_web import UploadRequestsWeb
from tests.meshnode.notify.helpers import Audit
from tests.meshnode.notify.smtp_server import SmtpServer
from tests.meshnode.patient.helpers import Clock, SmsGateway, service, token_of

ASK = {"person": "Ann Patient", "email": "ann@example.org", "code_to": "+447700900123",
       "message": "A CD of my MRI from St Elsewhere"}
PER_MINUTE = 8


@dataclass
class Served:
    url: str
    staff: dict[str, str]
    smtp: SmtpServer
    gateway: SmsGateway
    links: LinkService


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    smtp = SmtpServer(tmp_path / "smtp").start()
    clock = Clock()
    gateway = SmsGateway(clock).start()
    links, _ = service(smtp, gateway, tmp_path, clock)
    (tmp_path / "node").mkdir()
    store = SqliteUploadRequestStore(tmp_path / "node" / "node.db")
    audit = Audit()
    asks = UploadRequests(links.config, store, links, audit, clock=clock)
    users = MemoryUserStore()
    add_user(users, "pacs1", ("pacs",), 0)
    token, _ = issue_token(users, "pacs1", "", 0)
    web = UploadRequestsWeb(lambda: asks)
    config = HttpConfig(listen="127.0.0.1:0")
    app = WebApp([*web.public_routes(), *web.staff_routes()], Authenticator(users), config, audit)
    frozen = RateLimiter(PER_MINUTE, clock=lambda: 0.0)  # no refill during the test
    async with trio.open_nursery() as nursery:
        url = await nursery.start(serve_http, limited(app, replace(links.config), frozen), config, tmp_path / "node")
        yield Served(url, {"Authorization": f"Bearer {token}"}, smtp, gateway, links)
        nursery.cancel_scope.cancel()
    store.close()
    gateway.stop()
    smtp.stop()


async def test_ask_then_the_pacs_team_sends_the_link(served: Served) -> None:
    page = await trio.to_thread.run_sync(lambda: requests.get(served.url + "/p/ask", timeout=10))
    assert page.status_code == 200 and "default-src" in page.headers["content-security-policy"]
    for label in ('for="person"', 'for="email"', 'for="code-to"', 'for="message"', "/p/static/ask.js"):
        assert label in page.text
    assert _static("patient/ask.js") is not None  # served by the patient pages' static route

    asked = await trio.to_thread.run_sync(
        lambda: requests.post(served.url + "/p/api/upload-requests", json=ASK, timeout=10))
    assert asked.status_code == 202 and asked.json()["received"] is True
    assert served.smtp.received == [] and served.gateway.bodies == []

    listed = await trio.to_thread.run_sync(
        lambda: requests.get(served.url + "/ui/api/upload-requests", headers=served.staff, timeout=10))
    [row] = listed.json()["requests"]
    assert (row["person"], row["email"], row["code_to"], row["message"], row["client"]) == (
        ASK["person"], ASK["email"], ASK["code_to"], ASK["message"], "127.0.0.1")

    sent = await trio.to_thread.run_sync(lambda: requests.post(
        served.url + f"/ui/api/upload-requests/{row['id']}/send", headers=served.staff, timeout=30))
    assert sent.status_code == 200, sent.text
    assert token_of(served.smtp, ASK["email"])  # the link's email arrived
    [link] = served.links.store.links(kind="upload")
    assert (link.link_id, link.person, link.code_to, link.created_by) == (
        sent.json()["link"], "Ann Patient", "+447700900123", "user:pacs1")
    again = await trio.to_thread.run_sync(
        lambda: requests.get(served.url + "/ui/api/upload-requests", headers=served.staff, timeout=10))
    assert again.json()["requests"] == []


async def test_a_flood_of_asks_from_one_address_is_rate_limited(served: Served) -> None:
    def flood() -> list[int]:
        return [requests.post(served.url + "/p/api/upload-requests", timeout=10,
                              json={**ASK, "email": f"p{i}@example.org"}).status_code for i in range(PER_MINUTE + 3)]

    codes = await trio.to_thread.run_sync(flood)  # PER_CLIENT asks stored, then the queue refuses, then the limiter
    assert codes == [202] * PER_CLIENT + [503] * (PER_MINUTE - PER_CLIENT) + [429] * 3
