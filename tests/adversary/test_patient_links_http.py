"""Attacks on the staff API of patient links (/ui/api/patient-links, meshnode.web.patient_links_web) through the
real WebApp with a signed-in session: no `send` permission, no CSRF token, oversized and malformed bodies on
every route, studies this node does not hold, a link ID that is not one. Real SMTP (aiosmtpd), real local SMS
gateway."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshnode.patient.service import LinkService
from meshnode.storage.users import MemoryUserStore
from meshnode.web.app import WebApp
from meshnode.web.patient_links_web import PatientLinksWeb
from meshnode.web.services import WebServices
from meshnode.web.signin_web import SignInWeb
from tests.meshnode.notify.helpers import Audit
from tests.meshnode.notify.smtp_server import SmtpServer
from tests.meshnode.patient.helpers import STUDY, Clock, SmsGateway, service, token_of
from tests.meshnode.web.portal_app import Portal, cheap_hashing, make_portal

__all__ = ["cheap_hashing"]
BASE = "/ui/api/patient-links"
GOOD = {"kind": "share", "studies": [STUDY], "person": "Ann Patient", "email": "ann@example.org",
        "code_to": "+447700900123", "days": 7}


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[SmtpServer]:
    server = SmtpServer(tmp_path / "smtp").start()
    yield server
    server.stop()


@pytest.fixture
def gateway() -> Iterator[SmsGateway]:
    g = SmsGateway(Clock()).start()
    yield g
    g.stop()


@pytest.fixture
def links(smtp: SmtpServer, gateway: SmsGateway, tmp_path: Path) -> LinkService:
    async def holds(uids: tuple[str, ...]) -> list[str]:
        return [u for u in uids if u != STUDY]

    return service(smtp, gateway, tmp_path, Clock(), holds=holds)[0]


def _portal(links: LinkService | None) -> Portal:
    portal = make_portal(MemoryUserStore())
    app = portal.app

    async def audit(event: Any) -> None:
        portal.events.append(event)

    services = WebServices(app.config, "RGT", None, None, audit, portal.clock)  # type: ignore[arg-type]
    portal.app = WebApp([*SignInWeb(services, app.auth, None).routes(), *PatientLinksWeb(lambda: links).routes()],
                        app.auth, app.config, audit)
    portal.user("alice", "clinician")
    portal.user("reader", "read")
    portal.user("pat", "pacs")
    return portal


@pytest.mark.usefixtures("cheap_hashing")
async def test_a_clinician_creates_lists_shows_revokes(links: LinkService, smtp: SmtpServer) -> None:
    portal = _portal(links)
    session, csrf = await portal.signed_in("alice")
    reply = await portal.call("POST", BASE, session=session, csrf=csrf, json=GOOD)
    assert reply.status == 201, reply.body
    link_id = reply.json()["id"]
    assert token_of(smtp, "ann@example.org")
    (row,) = (await portal.call("GET", BASE, session=session)).json()["links"]
    assert row["id"] == link_id and row["state"] == "active" and row["created_by"] == "user:alice"
    assert "token_hash" not in row and "code_hash" not in row and "code_salt" not in row
    shown = (await portal.call("GET", f"{BASE}/{link_id}", session=session)).json()
    assert [h["action"] for h in shown["history"]] == ["created", "email sent"]
    # showing names and addresses to staff is audited, with the user
    audit = links.audit
    assert isinstance(audit, Audit)
    assert [(e.action, e.actor) for e in audit.events if e.action in ("patient-links-listed", "patient-link-shown")
            ] == [("patient-links-listed", "user:alice"), ("patient-link-shown", "user:alice")]
    reply = await portal.call("POST", f"{BASE}/{link_id}/revoke", session=session, csrf=csrf,
                              json={"reason": "wrong patient"})
    assert reply.status == 200
    assert (await portal.call("GET", f"{BASE}/{link_id}", session=session)).json()["state"] == "revoked"
    reply = await portal.call("POST", f"{BASE}/{link_id}/unlock", session=session, csrf=csrf,
                              json={"reason": "phoned"})
    assert reply.status == 403  # unlocking needs the PACS team (`queues`)
    reply = await portal.call("POST", BASE, session=session, csrf=csrf,
                              json={"kind": "upload", "person": "Dr Who", "email": "who@example.org",
                                    "code_to": "who@example.net"})
    assert reply.status == 201


@pytest.mark.usefixtures("cheap_hashing")
async def test_without_send_every_route_is_refused(links: LinkService, smtp: SmtpServer) -> None:
    portal = _portal(links)
    session, csrf = await portal.signed_in("reader")
    for method, path, body in [("GET", BASE, None), ("POST", BASE, GOOD), ("GET", f"{BASE}/{'0' * 32}", None),
                               ("POST", f"{BASE}/{'0' * 32}/revoke", {"reason": "x"}),
                               ("POST", f"{BASE}/{'0' * 32}/unlock", {})]:
        reply = await portal.call(method, path, session=session, csrf=csrf, json=body)
        assert reply.status == 403, (path, reply.body)
    assert links.store.links() == [] and smtp.received == []


@pytest.mark.usefixtures("cheap_hashing")
async def test_no_csrf_token_changes_nothing(links: LinkService, smtp: SmtpServer) -> None:
    portal = _portal(links)
    session, csrf = await portal.signed_in("alice")
    link_id = (await portal.call("POST", BASE, session=session, csrf=csrf, json=GOOD)).json()["id"]
    for path, body in [(BASE, GOOD), (f"{BASE}/{link_id}/revoke", {"reason": "x"}), (f"{BASE}/{link_id}/unlock", {})]:
        for token in ("", "forged-" + csrf):
            reply = await portal.call("POST", path, session=session, csrf=token, json=body)
            assert reply.status == 403, (path, reply.body)
    assert len(links.store.links()) == 1 and links.store.links()[0].revoked_at == 0


BAD_CREATE: list[tuple[Any, bytes]] = [
    (None, b"not json"), (None, b"[1, 2]"), (None, b'"text"'), (None, b"{" * 5000),
    ({**GOOD, "admin": True}, b""), ({**GOOD, "studies": STUDY}, b""), ({**GOOD, "studies": []}, b""),
    ({**GOOD, "studies": [STUDY] * 51 + ["1.2"]}, b""), ({**GOOD, "studies": ["1.2.x'; DROP TABLE"]}, b""),
    ({**GOOD, "email": "a@b.org\r\nBcc: all@evil.example"}, b""), ({**GOOD, "code_to": "ann@example.org"}, b""),
    ({**GOOD, "code_to": 447700900123}, b""), ({**GOOD, "person": None}, b""), ({**GOOD, "person": "\x00"}, b""),
    ({**GOOD, "days": 1000}, b""), ({**GOOD, "days": "7"}, b""), ({**GOOD, "days": 7.5}, b""),
    ({**GOOD, "kind": "admin"}, b""), ({**GOOD, "kind": "upload"}, b""),
]


@pytest.mark.usefixtures("cheap_hashing")
@pytest.mark.parametrize(("body", "raw"), BAD_CREATE)
async def test_malformed_create_bodies_are_400_and_change_nothing(links: LinkService, smtp: SmtpServer,
                                                                  body: Any, raw: bytes) -> None:
    portal = _portal(links)
    session, csrf = await portal.signed_in("alice")
    reply = await portal.call("POST", BASE, session=session, csrf=csrf, json=body, raw=raw,
                              content_type="application/json" if raw else "")
    assert reply.status == 400, reply.body
    assert "message" in reply.json()
    assert links.store.links() == [] and smtp.received == []


@pytest.mark.usefixtures("cheap_hashing")
async def test_oversized_bodies_on_every_post_are_refused(links: LinkService, smtp: SmtpServer) -> None:
    portal = _portal(links)
    session, csrf = await portal.signed_in("pat")  # the PACS team: unlock too
    link_id = (await portal.call("POST", BASE, session=session, csrf=csrf, json=GOOD)).json()["id"]
    huge = {**GOOD, "person": "A" * 100_000}
    for path in (BASE, f"{BASE}/{link_id}/revoke", f"{BASE}/{link_id}/unlock"):
        reply = await portal.call("POST", path, session=session, csrf=csrf, json=huge)
        assert reply.status in (400, 413), (path, reply.status)
    for path, body in [(f"{BASE}/{link_id}/revoke", {"reason": ""}), (f"{BASE}/{link_id}/revoke", {"reason": 5}),
                       (f"{BASE}/{link_id}/revoke", {"reason": "x", "cascade": False}),
                       (f"{BASE}/{link_id}/unlock", {"force": True}), (f"{BASE}/{link_id}/unlock", {}),
                       (f"{BASE}/{link_id}/unlock", {"reason": ""})]:
        reply = await portal.call("POST", path, session=session, csrf=csrf, json=body)
        assert reply.status == 400, (path, body, reply.body)
    assert len(links.store.links()) == 1 and links.store.links()[0].revoked_at == 0


@pytest.mark.usefixtures("cheap_hashing")
@pytest.mark.parametrize("bad", ["0" * 31, "g" * 32, "..%2F..%2Fetc", "A" * 32, "0" * 33])
async def test_a_link_id_that_is_not_one_is_404(links: LinkService, bad: str) -> None:
    portal = _portal(links)
    session, csrf = await portal.signed_in("alice")
    assert (await portal.call("GET", f"{BASE}/{bad}", session=session)).status == 404
    reply = await portal.call("POST", f"{BASE}/{bad}/revoke", session=session, csrf=csrf, json={"reason": "x"})
    assert reply.status == 404


@pytest.mark.usefixtures("cheap_hashing")
async def test_a_study_not_held_here_is_404(links: LinkService, smtp: SmtpServer) -> None:
    portal = _portal(links)
    session, csrf = await portal.signed_in("alice")
    reply = await portal.call("POST", BASE, session=session, csrf=csrf, json={**GOOD, "studies": ["1.2.3.999"]})
    assert reply.status == 404 and "does not hold" in reply.json()["message"]
    assert links.store.links() == [] and smtp.received == []


@pytest.mark.usefixtures("cheap_hashing")
async def test_an_email_not_sent_is_503_and_the_link_withdrawn(links: LinkService, smtp: SmtpServer) -> None:
    smtp.handler.refuse_rcpt.add("ann@example.org")
    portal = _portal(links)
    session, csrf = await portal.signed_in("alice")
    reply = await portal.call("POST", BASE, session=session, csrf=csrf, json=GOOD)
    assert reply.status == 503 and "withdrawn" in reply.json()["message"]
    (row,) = (await portal.call("GET", BASE, session=session)).json()["links"]
    assert row["state"] == "revoked" and row["revoke_reason"] == "email not sent"


@pytest.mark.usefixtures("cheap_hashing")
async def test_off_is_404_everywhere() -> None:
    portal = _portal(None)
    session, csrf = await portal.signed_in("alice")
    assert (await portal.call("GET", BASE, session=session)).status == 404
    assert (await portal.call("POST", BASE, session=session, csrf=csrf, json=GOOD)).status == 404


# -- the hostile review of 22:07 (notes/i14/reviews/links.md) --------------------------------------------------

@pytest.mark.usefixtures("cheap_hashing")
async def test_major1_a_clinician_sees_and_ends_only_their_own_links(links: LinkService, smtp: SmtpServer,
                                                                 gateway: SmsGateway) -> None:
    portal = _portal(links)
    portal.user("bob", "clinician")
    alice, alice_csrf = await portal.signed_in("alice")
    link_id = (await portal.call("POST", BASE, session=alice, csrf=alice_csrf, json=GOOD)).json()["id"]
    token = token_of(smtp, "ann@example.org")
    await links.send_code(token, "203.0.113.9")
    grant = await links.verify(token, gateway.received[-1].code, "203.0.113.9")
    child_id = await links.forward(grant, "gp@example.org", "+447700900999", "203.0.113.9")
    bob, bob_csrf = await portal.signed_in("bob")
    assert (await portal.call("GET", BASE, session=bob)).json()["links"] == []
    assert (await portal.call("GET", f"{BASE}/{link_id}", session=bob)).status == 404
    reply = await portal.call("POST", f"{BASE}/{link_id}/revoke", session=bob, csrf=bob_csrf, json={"reason": "x"})
    assert reply.status == 404
    reply = await portal.call("POST", f"{BASE}/{link_id}/unlock", session=bob, csrf=bob_csrf,
                              json={"reason": "phoned, checked date of birth"})
    assert reply.status == 403
    # alice: her link and its forward; unlocking needs the PACS team
    assert {r["id"] for r in (await portal.call("GET", BASE, session=alice)).json()["links"]} == {link_id, child_id}
    assert (await portal.call("GET", f"{BASE}/{child_id}", session=alice)).status == 200
    reply = await portal.call("POST", f"{BASE}/{link_id}/unlock", session=alice, csrf=alice_csrf,
                              json={"reason": "phoned"})
    assert reply.status == 403
    pat, pat_csrf = await portal.signed_in("pat")
    assert {r["id"] for r in (await portal.call("GET", BASE, session=pat)).json()["links"]} == {link_id, child_id}
    reply = await portal.call("POST", f"{BASE}/{link_id}/unlock", session=pat, csrf=pat_csrf, json={})
    assert reply.status == 400  # a reason is required
    reply = await portal.call("POST", f"{BASE}/{link_id}/unlock", session=pat, csrf=pat_csrf,
                              json={"reason": "phoned, checked date of birth"})
    assert reply.status == 200, reply.body
    history = (await portal.call("GET", f"{BASE}/{link_id}", session=pat)).json()["history"]
    assert history[-1]["action"] == "unlocked" and "date of birth" in history[-1]["detail"]
    # a listing's audit names the links shown
    audit = links.audit
    assert isinstance(audit, Audit)
    listed = [e for e in audit.events if e.action == "patient-links-listed" and e.actor == "user:pat"]
    assert listed and link_id in listed[-1].detail and child_id in listed[-1].detail


@pytest.mark.usefixtures("cheap_hashing")
async def test_minor10_the_listing_pages_and_refuses_bad_paging(links: LinkService, smtp: SmtpServer) -> None:
    portal = _portal(links)
    session, csrf = await portal.signed_in("alice")
    made = [(await portal.call("POST", BASE, session=session, csrf=csrf,
                               json={**GOOD, "email": f"p{n}@example.org"})).json()["id"] for n in range(3)]
    reply = await portal.call("GET", BASE, session=session, query="limit=2")
    assert reply.status == 200, reply.body
    page = reply.json()
    assert len(page["links"]) == 2 and page["more"]
    rest = (await portal.call("GET", BASE, session=session, query="limit=2&offset=2")).json()
    assert not rest["more"]
    assert {r["id"] for r in page["links"] + rest["links"]} == set(made)
    for bad in ("limit=0", "limit=100000", "offset=-1", "limit=x", "kind=admin"):
        assert (await portal.call("GET", BASE, session=session, query=bad)).status == 400, bad
