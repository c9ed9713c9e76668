"""Attacks on patient links (meshnode.patient.service over protocol.patient_link): guessed, replayed and
forged tokens, a token of the other kind, brute-forced and concurrent wrong codes, codes after expiry, the
resend limit, revoke mid-session and racing a right code, forwarding a forward, after a revoke and beyond
the parent's life, header injection in addresses. A real SMTP server (aiosmtpd) and a real local HTTP
server as the SMS gateway (each POST's HMAC verified)."""

from __future__ import annotations

import base64
import hashlib
import logging
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from meshnode.config import parse_config
from meshnode.notify import smtp as smtp_mod
from meshnode.notify.config import NotifyConfig
from meshnode.patient import service as service_module
from meshnode.patient.link_store import LinkEvent, MemoryLinkStore
from meshnode.patient.links import LinkGrant, LinkKind
from meshnode.patient.service import LinkService
from meshnode.patient.sqlite_links import SqliteLinkStore
from meshnode.storage.audit import EventCode
from protocol import patient_link as pl
from protocol.errors import ConfigError, NotFoundError, UnavailableError
from protocol.patient_link import (
    CodeLimitReached,
    CodeRefused,
    LinkGone,
    LinkLocked,
    PatientAccessError,
    PatientLink,
)
from tests.meshnode.notify.helpers import config_for
from tests.meshnode.notify.smtp_server import SmtpServer
from tests.meshnode.patient.helpers import STUDY, Clock, SmsGateway, service, token_of

PATIENT = "ann.patient@example.org"
MOBILE = "+447700900123"
CLIENT = "203.0.113.9"


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[SmtpServer]:
    server = SmtpServer(tmp_path / "smtp").start()
    yield server
    server.stop()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def gateway(clock: Clock) -> Iterator[SmsGateway]:
    g = SmsGateway(clock).start()
    yield g
    g.stop()


@pytest.fixture
def links(smtp: SmtpServer, gateway: SmsGateway, tmp_path: Path, clock: Clock) -> LinkService:
    return service(smtp, gateway, tmp_path, clock)[0]


async def _share(links: LinkService, smtp: SmtpServer, email: str = PATIENT) -> tuple[str, str]:
    link_id = await links.create_share("user:alice", [STUDY], "Ann Patient", email, MOBILE)
    return link_id, token_of(smtp, email)


async def _code(links: LinkService, gateway: SmsGateway, token: str, to: str = "") -> str:
    await links.send_code(token, CLIENT)
    sms = gateway.received[-1]
    assert sms.signed and sms.to == (to or MOBILE)
    return sms.code


async def test_the_email_carries_the_token_in_the_fragment_and_nothing_clinical(
        links: LinkService, smtp: SmtpServer) -> None:
    link_id, token = await _share(links, smtp)
    msg = smtp.received[-1].message
    text = msg.as_string()
    assert f"https://images.rxx.nhs.uk/p/#t={token}" in text  # never in a path or query: no server log, no Referer
    assert "Ann Patient" not in text and STUDY not in text and MOBILE not in text
    assert "Royal Example NHS Trust" in msg["Subject"]
    stored = links.store.link(link_id)
    assert stored is not None and token not in repr(stored)  # only its hash is kept
    assert stored.token_hash == hashlib.sha256(token.encode()).hexdigest()


@pytest.mark.parametrize("forged", ["", "A" * 43, "A" * 42, "../../etc/passwd", "A" * 10_000, "é" * 43])
async def test_guessed_or_forged_tokens_learn_nothing(links: LinkService, smtp: SmtpServer, forged: str) -> None:
    await _share(links, smtp)
    for call in (links.opened(forged, CLIENT), links.send_code(forged, CLIENT), links.verify(forged, "123456", CLIENT)):
        with pytest.raises(LinkGone) as info:
            await call
        assert str(info.value) == str(LinkGone())  # one answer for unknown, expired, revoked


async def test_a_token_differing_in_one_bit_is_unknown(links: LinkService, smtp: SmtpServer) -> None:
    _, token = await _share(links, smtp)
    raw = bytearray(base64.urlsafe_b64decode(token + "="))
    raw[0] ^= 1
    with pytest.raises(LinkGone):
        await links.opened(base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode(), CLIENT)


async def test_a_link_id_is_not_a_token(links: LinkService, smtp: SmtpServer) -> None:
    link_id, _ = await _share(links, smtp)
    with pytest.raises(LinkGone):
        await links.opened(link_id, CLIENT)


async def test_an_upload_token_gives_an_upload_grant_only(links: LinkService, smtp: SmtpServer,
                                                          gateway: SmsGateway) -> None:
    await links.create_upload("user:alice", "Dr Who", "dr.who@example.org", MOBILE)
    token = token_of(smtp, "dr.who@example.org")
    assert (await links.opened(token, CLIENT)).kind is LinkKind.UPLOAD
    grant = await links.verify(token, await _code(links, gateway, token), CLIENT)
    assert grant.kind is LinkKind.UPLOAD and grant.studies == () and not grant.may_forward
    with pytest.raises(PatientAccessError):
        await links.forward(grant, "gp@example.org", "+447700900999", CLIENT)
    for action in ("viewed", "downloaded", "key image"):  # nothing to view on an upload link
        with pytest.raises(PatientAccessError):
            await links.record(grant, action, "", CLIENT)
    await links.record(grant, "uploaded", "3 files", CLIENT)


async def test_the_right_code_works_once(links: LinkService, smtp: SmtpServer, gateway: SmsGateway) -> None:
    _, token = await _share(links, smtp)
    code = await _code(links, gateway, token)
    grant = await links.verify(token, code, CLIENT)
    assert grant.studies == (STUDY,) and grant.person == "Ann Patient" and grant.may_forward
    with pytest.raises(CodeRefused):  # replayed
        await links.verify(token, code, CLIENT)


async def test_wrong_codes_lock_the_link_and_tell_the_staff_user(
        links: LinkService, smtp: SmtpServer, gateway: SmsGateway) -> None:
    link_id, token = await _share(links, smtp)
    code = await _code(links, gateway, token)
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    for left in (2, 1):
        with pytest.raises(CodeRefused) as info:
            await links.verify(token, wrong, CLIENT)
        assert info.value.attempts_left == left
    with pytest.raises(LinkLocked):
        await links.verify(token, wrong, CLIENT)
    # locked: even the right code, and a new code, are refused
    with pytest.raises(LinkLocked):
        await links.verify(token, code, CLIENT)
    with pytest.raises(LinkLocked):
        await links.send_code(token, CLIENT)
    notice = smtp.received[-1]
    assert notice.rcpt_tos == ("alice@rxx.nhs.uk",) and "locked" in notice.message["Subject"]
    assert link_id in notice.message.as_string() and "Ann Patient" not in notice.message.as_string()
    assert (await links.history(link_id))["state"] == "locked"
    # staff unlock: a fresh code is needed (the old one is gone)
    await links.unlock("user:pat", link_id, "phoned, date of birth checked")
    with pytest.raises(CodeRefused):
        await links.verify(token, code, CLIENT)
    assert (await links.verify(token, await _code(links, gateway, token), CLIENT)).link_id == link_id


async def test_the_lock_is_a_security_alert(smtp: SmtpServer, gateway: SmsGateway, tmp_path: Path,
                                             clock: Clock) -> None:
    links, audit = service(smtp, gateway, tmp_path, clock, code_attempts=1)
    link_id, token = await _share(links, smtp)
    code = await _code(links, gateway, token)
    with pytest.raises(LinkLocked):
        await links.verify(token, f"{(int(code) + 1) % 10**6:06d}", CLIENT)
    alert = [e for e in audit.events if e.code is EventCode.SECURITY_ALERT]
    assert len(alert) == 1 and alert[0].actor == f"share:{link_id}"


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_concurrent_wrong_codes_all_count(smtp: SmtpServer, gateway: SmsGateway, tmp_path: Path,
                                                clock: Clock, backend: str) -> None:
    store = MemoryLinkStore() if backend == "memory" else SqliteLinkStore(tmp_path / "node.db")
    links, _ = service(smtp, gateway, tmp_path, clock, store=store, code_attempts=5)
    link_id, token = await _share(links, smtp)
    code = await _code(links, gateway, token)
    outcomes: list[str] = []

    async def guess(n: int) -> None:
        try:
            await links.verify(token, f"{(int(code) + 1 + n) % 10**6:06d}", CLIENT)
            outcomes.append("granted")
        except CodeRefused:
            outcomes.append("refused")
        except LinkLocked:
            outcomes.append("locked")

    async with trio.open_nursery() as nursery:
        for n in range(12):
            nursery.start_soon(guess, n)
    stored = links.store.link(link_id)
    assert stored is not None and stored.wrong_attempts == 5 and stored.locked_at
    assert outcomes.count("refused") == 4 and outcomes.count("locked") == 8 and "granted" not in outcomes
    with pytest.raises(LinkLocked):
        await links.verify(token, code, CLIENT)


async def test_a_code_after_its_minutes_is_refused_and_not_counted(
        links: LinkService, smtp: SmtpServer, gateway: SmsGateway, clock: Clock) -> None:
    link_id, token = await _share(links, smtp)
    code = await _code(links, gateway, token)
    clock.now += 10 * 60
    with pytest.raises(CodeRefused, match="new one") as info:
        await links.verify(token, code, CLIENT)
    assert info.value.attempts_left == 3
    stored = links.store.link(link_id)
    assert stored is not None and stored.wrong_attempts == 0


async def test_resends_are_limited(links: LinkService, smtp: SmtpServer, gateway: SmsGateway) -> None:
    _, token = await _share(links, smtp)
    for _ in range(1 + 5):
        await links.send_code(token, CLIENT)
    with pytest.raises(CodeLimitReached):
        await links.send_code(token, CLIENT)
    assert len(gateway.received) == 6
    assert all(s.signed for s in gateway.received)


async def test_an_earlier_code_stops_working_when_a_new_one_is_sent(
        links: LinkService, smtp: SmtpServer, gateway: SmsGateway) -> None:
    _, token = await _share(links, smtp)
    first = await _code(links, gateway, token)
    second = await _code(links, gateway, token)
    if first != second:
        with pytest.raises(CodeRefused):
            await links.verify(token, first, CLIENT)
    await links.verify(token, second, CLIENT)


async def test_revoked_mid_session_ends_it(links: LinkService, smtp: SmtpServer, gateway: SmsGateway) -> None:
    link_id, token = await _share(links, smtp)
    grant = await links.verify(token, await _code(links, gateway, token), CLIENT)
    assert (await links.current(grant.link_id)).link_id == link_id
    await links.revoke("user:alice", link_id, "sent to the wrong person")
    for call in (links.current(link_id), links.record(grant, "viewed", "", CLIENT), links.opened(token, CLIENT)):
        with pytest.raises(LinkGone):
            await call
    with pytest.raises(LinkGone):
        await links.forward(grant, "gp@example.org", "+447700900999", CLIENT)


async def test_expired_is_gone_with_the_same_answer(links: LinkService, smtp: SmtpServer, clock: Clock) -> None:
    link_id, token = await _share(links, smtp)
    clock.now += 14 * 86400
    with pytest.raises(LinkGone) as info:
        await links.opened(token, CLIENT)
    assert str(info.value) == str(LinkGone())
    with pytest.raises(LinkGone):
        await links.current(link_id)


async def test_a_right_code_racing_a_revoke_the_revoke_wins_after(
        links: LinkService, smtp: SmtpServer, gateway: SmsGateway) -> None:
    link_id, token = await _share(links, smtp)
    code = await _code(links, gateway, token)
    results: list[str] = []

    async def verify() -> None:
        try:
            await links.verify(token, code, CLIENT)
            results.append("granted")
        except LinkGone:
            results.append("gone")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(verify)
        nursery.start_soon(links.revoke, "user:alice", link_id, "withdrawn")
    assert len(results) == 1
    with pytest.raises(LinkGone):  # whoever won the race, every later request sees the revoke
        await links.current(link_id)


async def _grant(links: LinkService, smtp: SmtpServer, gateway: SmsGateway, email: str = PATIENT) -> LinkGrant:
    _, token = await _share(links, smtp, email)
    return await links.verify(token, await _code(links, gateway, token), CLIENT)


async def test_a_forward_cannot_be_forwarded(links: LinkService, smtp: SmtpServer, gateway: SmsGateway) -> None:
    grant = await _grant(links, smtp, gateway)
    child_id = await links.forward(grant, "gp@example.org", "+447700900999", CLIENT)
    token = token_of(smtp, "gp@example.org")
    child_grant = await links.verify(token, await _code(links, gateway, token, "+447700900999"), CLIENT)
    assert child_grant.link_id == child_id and child_grant.created_by == f"share:{grant.link_id}"
    assert not child_grant.may_forward and child_grant.expires_at <= grant.expires_at
    with pytest.raises(PatientAccessError, match="again"):
        await links.forward(child_grant, "other@example.org", "+447700900998", CLIENT)


async def test_forwards_are_limited_and_follow_the_policy(
        smtp: SmtpServer, gateway: SmsGateway, tmp_path: Path, clock: Clock) -> None:
    links, _ = service(smtp, gateway, tmp_path, clock, max_forwards=1)
    grant = await _grant(links, smtp, gateway)
    await links.forward(grant, "gp@example.org", "+447700900999", CLIENT)
    with pytest.raises(PatientAccessError, match="most"):
        await links.forward(grant, "gp2@example.org", "+447700900999", CLIENT)
    off, _ = service(smtp, gateway, tmp_path, clock, allow_forward=False)
    grant = await _grant(off, smtp, gateway, "b@example.org")
    assert not grant.may_forward
    with pytest.raises(PatientAccessError):
        await off.forward(grant, "gp@example.org", "+447700900999", CLIENT)


async def test_a_forward_never_outlives_its_parent_and_dies_with_it(
        links: LinkService, smtp: SmtpServer, gateway: SmsGateway, clock: Clock) -> None:
    parent_id = await links.create_share("user:alice", [STUDY], "Ann", PATIENT, MOBILE, 2)
    token = token_of(smtp, PATIENT)
    grant = await links.verify(token, await _code(links, gateway, token), CLIENT)
    child_id = await links.forward(grant, "gp@example.org", "+447700900999", CLIENT)
    child = links.store.link(child_id)
    parent = links.store.link(parent_id)
    assert child is not None and parent is not None and child.expires_at == parent.expires_at
    await links.revoke("user:alice", parent_id, "patient withdrew consent")
    with pytest.raises(LinkGone):
        await links.current(child_id)
    with pytest.raises(LinkGone):
        await links.forward(grant, "gp3@example.org", "+447700900999", CLIENT)


@pytest.mark.parametrize("email", ["ann@example.org\r\nBcc: all@evil.example", "ann@example.org, x@evil.example",
                                   "<ann@example.org>", "ann@@example.org", "a" * 300 + "@example.org"])
async def test_header_injection_in_addresses_is_refused_and_stores_nothing(
        links: LinkService, smtp: SmtpServer, email: str) -> None:
    with pytest.raises(PatientAccessError):
        await links.create_share("user:alice", [STUDY], "Ann", email, MOBILE)
    with pytest.raises(PatientAccessError):
        await links.create_share("user:alice", [STUDY], "Ann", PATIENT, email)
    assert links.store.links() == [] and smtp.received == []


async def test_the_code_channel_must_be_another_one(links: LinkService) -> None:
    with pytest.raises(PatientAccessError, match="another"):
        await links.create_share("user:alice", [STUDY], "Ann", PATIENT, PATIENT.upper())


async def test_an_unsent_email_withdraws_the_link(links: LinkService, smtp: SmtpServer) -> None:
    smtp.handler.refuse_rcpt.add(PATIENT)
    with pytest.raises(UnavailableError, match="withdrawn"):
        await links.create_share("user:alice", [STUDY], "Ann", PATIENT, MOBILE)
    (row,) = await links.list_links()
    assert row["state"] == "revoked" and row["revoke_reason"] == "email not sent"


async def test_a_failing_sms_gateway_is_a_clear_error(links: LinkService, smtp: SmtpServer,
                                                      gateway: SmsGateway) -> None:
    _, token = await _share(links, smtp)
    gateway.status = 500
    with pytest.raises(UnavailableError, match="try again"):
        await links.send_code(token, CLIENT)


async def test_sms_without_a_gateway_is_refused_at_creation(smtp: SmtpServer, tmp_path: Path,
                                                            clock: Clock) -> None:
    links, _ = service(smtp, None, tmp_path, clock)
    with pytest.raises(PatientAccessError, match="second email"):
        await links.create_share("user:alice", [STUDY], "Ann", PATIENT, MOBILE)
    await links.create_share("user:alice", [STUDY], "Ann", PATIENT, "ann.other@example.net")
    token = token_of(smtp, PATIENT)
    await links.send_code(token, CLIENT)
    assert smtp.received[-1].rcpt_tos == ("ann.other@example.net",)


async def test_only_studies_held_here_can_be_shared(smtp: SmtpServer, gateway: SmsGateway, tmp_path: Path,
                                                    clock: Clock) -> None:
    async def holds(uids: tuple[str, ...]) -> list[str]:
        return [u for u in uids if u != STUDY]

    links, _ = service(smtp, gateway, tmp_path, clock, holds=holds)
    with pytest.raises(NotFoundError, match="does not hold"):
        await links.create_share("user:alice", [STUDY, "1.2.3.4"], "Ann", PATIENT, MOBILE)
    assert links.store.links() == []


async def test_record_takes_only_known_actions_and_audits_with_the_share(
        smtp: SmtpServer, gateway: SmsGateway, tmp_path: Path, clock: Clock) -> None:
    links, audit = service(smtp, gateway, tmp_path, clock)
    grant = await _grant(links, smtp, gateway)
    for action in ("deleted everything", "uploaded"):
        with pytest.raises(PatientAccessError):
            await links.record(grant, action, "", CLIENT)
    await links.record(grant, "downloaded", "media set\r\nInjected: yes", CLIENT)
    event = audit.events[-1]
    assert event.code is EventCode.EXPORT and event.actor == f"share:{grant.link_id}" and STUDY not in event.study
    history = (await links.history(grant.link_id))["history"]
    assert history[-1]["action"] == "downloaded" and "\n" not in history[-1]["detail"]
    assert [h["action"] for h in history][:3] == ["created", "email sent", "code sent"]


async def test_asking_for_new_codes_does_not_reset_the_wrong_count(
        links: LinkService, smtp: SmtpServer, gateway: SmsGateway) -> None:
    # an attacker cannot get code_attempts guesses per code by asking for a new one after each miss
    _, token = await _share(links, smtp)
    for n in range(2):
        code = await _code(links, gateway, token)
        with pytest.raises(CodeRefused):
            await links.verify(token, f"{(int(code) + 1) % 10**6:06d}", CLIENT)
    code = await _code(links, gateway, token)
    with pytest.raises(LinkLocked):
        await links.verify(token, f"{(int(code) + 1) % 10**6:06d}", CLIENT)


# -- the hostile review of 22:07 (notes/i14/reviews/links.md) --------------------------------------------------

def _wrong(code: str) -> str:
    return f"{(int(code) + 1) % 10**6:06d}"


async def _lock(links: LinkService, gateway: SmsGateway, token: str) -> None:
    code = await _code(links, gateway, token)
    for _ in range(2):
        with pytest.raises(CodeRefused):
            await links.verify(token, _wrong(code), CLIENT)
    with pytest.raises(LinkLocked):
        await links.verify(token, _wrong(code), CLIENT)


class FlakyStore(MemoryLinkStore):
    """A store whose next write touching a forwarded share fails (a busy database, a crash between writes)."""

    fail_child = False

    def _trip(self, links: list[PatientLink]) -> None:
        if self.fail_child and any(x.parent_id for x in links):
            self.fail_child = False
            raise sqlite3.OperationalError("database is locked")

    def update_link(self, link: PatientLink, expected_version: int, events: tuple[LinkEvent, ...] = ()) -> bool:
        self._trip([link])
        return super().update_link(link, expected_version, events)

    def update_links(self, changes: tuple[tuple[PatientLink, int, tuple[LinkEvent, ...]], ...]) -> bool:
        self._trip([c[0] for c in changes])
        return super().update_links(changes)


async def test_major2_a_revoke_takes_its_forwards_all_or_nothing(
        smtp: SmtpServer, gateway: SmsGateway, tmp_path: Path, clock: Clock) -> None:
    store = FlakyStore()
    links, _ = service(smtp, gateway, tmp_path, clock, store=store)
    grant = await _grant(links, smtp, gateway)
    child_id = await links.forward(grant, "gp@example.org", "+447700900999", CLIENT)
    store.fail_child = True
    with pytest.raises(sqlite3.OperationalError):
        await links.revoke("user:alice", grant.link_id, "patient withdrew consent")
    parent, child = store.link(grant.link_id), store.link(child_id)
    assert parent is not None and child is not None
    assert bool(parent.revoked_at) == bool(child.revoked_at)  # never the parent alone
    await links.revoke("user:alice", grant.link_id, "patient withdrew consent")
    child = store.link(child_id)
    assert child is not None and child.revoked_at


async def test_major2_a_forward_of_a_revoked_share_is_gone_even_if_not_revoked_itself(
        links: LinkService, smtp: SmtpServer, gateway: SmsGateway) -> None:
    grant = await _grant(links, smtp, gateway)
    child_id = await links.forward(grant, "gp@example.org", "+447700900999", CLIENT)
    token = token_of(smtp, "gp@example.org")
    parent = links.store.link(grant.link_id)
    assert parent is not None  # only the parent revoked (as left by a crash between two writes)
    assert links.store.update_link(replace(parent, revoked_at=parent.created_at + 1, version=parent.version + 1),
                                   parent.version)
    for call in (links.current(child_id), links.opened(token, CLIENT), links.send_code(token, CLIENT)):
        with pytest.raises(LinkGone):
            await call


async def test_major3_repeated_opens_do_not_bury_the_history(links: LinkService, smtp: SmtpServer,
                                                         gateway: SmsGateway) -> None:
    link_id, token = await _share(links, smtp)
    for _ in range(1500):
        await links.opened(token, CLIENT)
    for n in range(1100):
        await links.opened(token, f"198.51.100.{n % 250}:{n}")
    await links.revoke("user:alice", link_id, "intercepted email")
    actions = [h["action"] for h in (await links.history(link_id))["history"]]
    assert "revoked" in actions and "email sent" in actions
    assert len(actions) <= 1000


async def test_major3_opens_are_coalesced_per_client_and_hour(links: LinkService, smtp: SmtpServer,
                                                          clock: Clock) -> None:
    link_id, token = await _share(links, smtp)
    for _ in range(50):
        await links.opened(token, CLIENT)
    clock.now += 3601
    await links.opened(token, CLIENT)
    history = (await links.history(link_id))["history"]
    assert [h["action"] for h in history].count("opened") == 2


async def test_major4_a_lock_of_a_link_made_by_the_control_api_tells_the_org_address(
        links: LinkService, smtp: SmtpServer, gateway: SmsGateway) -> None:
    link_id = await links.create_share("control:admin", [STUDY], "Ann Patient", PATIENT, MOBILE)
    await _lock(links, gateway, token_of(smtp, PATIENT))
    notice = smtp.received[-1]
    assert notice.rcpt_tos == ("pacs-team@rxx.nhs.uk",)
    assert link_id in notice.message.get_content() and "Ann" not in notice.message.as_string()


async def test_major4_nobody_to_tell_is_logged_without_patient_data(
        smtp: SmtpServer, gateway: SmsGateway, tmp_path: Path, clock: Clock,
        caplog: pytest.LogCaptureFixture) -> None:
    links, _ = service(smtp, gateway, tmp_path, clock, notify=config_for(smtp, tmp_path, org_address=""))
    link_id = await links.create_share("control:admin", [STUDY], "Ann Patient", PATIENT, MOBILE)
    sent = len(smtp.received)
    with caplog.at_level(logging.WARNING):
        await _lock(links, gateway, token_of(smtp, PATIENT))
    assert len(smtp.received) == sent
    assert any(link_id in r.getMessage() and "nobody" in r.getMessage() for r in caplog.records)
    assert PATIENT not in caplog.text and "Ann" not in caplog.text


async def test_major5_a_forward_tells_the_patient_and_the_lock_notice_lists_it(
        links: LinkService, smtp: SmtpServer, gateway: SmsGateway) -> None:
    grant = await _grant(links, smtp, gateway)
    child_id = await links.forward(grant, "gp.smith@example.org", "+447700900999", CLIENT)
    notice = [r for r in smtp.received if r.rcpt_tos == (PATIENT,)][-1].message
    text = notice.get_content()
    assert "passed on" in text and "g***@example.org" in text and "gp.smith" not in notice.as_string()
    history = [h["action"] for h in (await links.history(grant.link_id))["history"]]
    assert "forward notice sent" in history
    # the parent locked later: the staff notice names the live forward to revoke
    token = token_of(smtp, PATIENT)
    await _lock(links, gateway, token)
    lock_notice = smtp.received[-1]
    assert lock_notice.rcpt_tos == ("alice@rxx.nhs.uk",) and child_id in lock_notice.message.get_content()


async def test_major6_reasons_and_record_details_stay_out_of_the_audit(
        smtp: SmtpServer, gateway: SmsGateway, tmp_path: Path, clock: Clock) -> None:
    links, audit = service(smtp, gateway, tmp_path, clock)
    grant = await _grant(links, smtp, gateway)
    await links.forward(grant, "gp@example.org", "+447700900999", CLIENT)
    await links.record(grant, "downloaded", "Ann Patient's MRI for Mr Jones", CLIENT)
    await links.revoke("user:alice", grant.link_id, "Ann Patient (NHS 943 476 5919) moved to Leeds")
    for event in audit.events:
        assert "Ann" not in event.detail and "943" not in event.detail and "Jones" not in event.detail, event
    history = (await links.history(grant.link_id))["history"]
    assert any("943 476 5919" in h["detail"] for h in history)  # staff still see why


async def test_minor1_relay_text_never_reaches_the_log(links: LinkService, smtp: SmtpServer, gateway: SmsGateway,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    def refuse(config: NotifyConfig, message: bytes, to: str) -> None:
        raise smtp_mod.EmailError(f"message refused: 554 5.7.1 <{to}> rejected for policy", permanent=True)

    links.send_email = refuse
    with caplog.at_level(logging.DEBUG), pytest.raises(UnavailableError):
        await links.create_share("user:alice", [STUDY], "Ann", PATIENT, "ann.two@example.net")
    assert PATIENT not in caplog.text
    assert any("EmailError" in r.getMessage() for r in caplog.records)


async def test_minor2_an_email_that_cannot_be_built_withdraws_the_link_before_any_export(
        smtp: SmtpServer, gateway: SmsGateway, tmp_path: Path, clock: Clock) -> None:
    links, audit = service(smtp, gateway, tmp_path, clock)
    links.org_name = "Evil Trust\r\nBcc: all@evil.example"
    with pytest.raises(UnavailableError, match="withdrawn"):
        await links.create_share("user:alice", [STUDY], "Ann", PATIENT, MOBILE)
    (row,) = await links.list_links()
    assert row["state"] == "revoked" and smtp.received == []
    assert EventCode.EXPORT not in [e.code for e in audit.events]


async def test_minor3_an_undelivered_code_does_not_use_the_budget(links: LinkService, smtp: SmtpServer,
                                                              gateway: SmsGateway) -> None:
    link_id, token = await _share(links, smtp)
    gateway.status = 503
    for _ in range(8):
        with pytest.raises(UnavailableError):
            await links.send_code(token, CLIENT)
    failed = gateway.received[-1].code
    link = links.store.link(link_id)
    assert link is not None and link.codes_sent == 0 and not link.code_hash
    gateway.status = 200
    with pytest.raises(CodeRefused, match="no code"):  # the undelivered code is dropped
        await links.verify(token, failed, CLIENT)
    await links.verify(token, await _code(links, gateway, token), CLIENT)


async def test_minor4_a_forward_whose_email_failed_does_not_count(
        smtp: SmtpServer, gateway: SmsGateway, tmp_path: Path, clock: Clock) -> None:
    links, _ = service(smtp, gateway, tmp_path, clock, max_forwards=1)
    grant = await _grant(links, smtp, gateway)
    smtp.handler.refuse_rcpt.add("typo@example.org")
    with pytest.raises(UnavailableError):
        await links.forward(grant, "typo@example.org", "+447700900999", CLIENT)
    grant = await links.current(grant.link_id)
    assert grant.may_forward
    await links.forward(grant, "gp@example.org", "+447700900999", CLIENT)


async def test_minor5_codes_opens_refused_tries_and_emails_are_audited(
        smtp: SmtpServer, gateway: SmsGateway, tmp_path: Path, clock: Clock) -> None:
    links, audit = service(smtp, gateway, tmp_path, clock)
    _, token = await _share(links, smtp)
    await links.opened(token, CLIENT)
    with pytest.raises(CodeRefused):
        await links.verify(token, "123456", CLIENT)  # no live code
    await _lock(links, gateway, token)
    with pytest.raises(LinkLocked):
        await links.verify(token, "123456", CLIENT)
    actions = audit.actions()
    for wanted in ("patient-link-email-sent", "patient-link-opened", "patient-link-code-sent",
                   "patient-link-no-code", "patient-link-tried-locked"):
        assert wanted in actions, (wanted, actions)


@pytest.mark.parametrize("bad", ["0" * 32 + "\n", "0" * 31 + "\n"])
def test_minor6_a_trailing_newline_is_not_a_link_id(bad: str) -> None:
    with pytest.raises(LinkGone):
        pl.check_link_id(bad)


def test_minor6_a_trailing_newline_is_not_a_uid() -> None:
    with pytest.raises(PatientAccessError):
        pl.check_studies(["1.2.3\n"])
    with pytest.raises(PatientAccessError):
        pl.check_studies(["1.2.3\n\n"])


@pytest.mark.parametrize(("key", "url"), [("sms_gateway_url", "http://sms.example.org/send"),
                                          ("public_url", "http://images.example.org")])
def test_minor7_plain_http_to_another_host_is_refused(key: str, url: str) -> None:
    values = {"public_url": "https://images.example.org", "sms_gateway_url": "https://sms.example.org/send", key: url}
    text = ('[node]\norg = "RXX"\n[notify]\nhost = "smtp.example.org"\nfrom_address = "mesh@example.org"\n'
            'org_address = "pacs@example.org"\n'
            '[patient_access]\nenabled = true\nsms_secret = "0123456789abcdef0"\n'
            + "".join(f'{k} = "{v}"\n' for k, v in values.items()))
    with pytest.raises(ConfigError, match="https"):
        parse_config(text)
    parse_config(text.replace(url, "http://127.0.0.1:9000/send"))


async def test_minor7_minor8_the_sms_has_a_unique_id_and_a_warning(links: LinkService, smtp: SmtpServer,
                                                           gateway: SmsGateway) -> None:
    _, token = await _share(links, smtp)
    await links.send_code(token, CLIENT)
    await links.send_code(token, CLIENT)
    first, second = gateway.bodies[-2:]
    assert first["id"] and first["id"] != second["id"]
    assert "Never tell anyone this code" in gateway.received[-1].text


async def test_minor8_a_forwarded_email_says_the_patient_passed_it_on(links: LinkService, smtp: SmtpServer,
                                                                  gateway: SmsGateway) -> None:
    grant = await _grant(links, smtp, gateway)
    await links.forward(grant, "gp@example.org", "+447700900999", CLIENT)
    text = [r for r in smtp.received if r.rcpt_tos == ("gp@example.org",)][-1].message.get_content()
    assert "passed on to you by the patient" in text and "Ann" not in text


async def test_minor10_creating_links_is_capped_per_user_and_hour(
        smtp: SmtpServer, gateway: SmsGateway, tmp_path: Path, clock: Clock) -> None:
    links, _ = service(smtp, gateway, tmp_path, clock, links_per_hour=3)
    for n in range(3):
        await links.create_share("user:alice", [STUDY], "Ann", f"p{n}@example.org", MOBILE)
    with pytest.raises(PatientAccessError, match="hour"):
        await links.create_share("user:alice", [STUDY], "Ann", "p9@example.org", MOBILE)
    await links.create_share("user:bob", [STUDY], "Ann", "p9@example.org", MOBILE)  # per user
    clock.now += 3601
    await links.create_share("user:alice", [STUDY], "Ann", "p9@example.org", MOBILE)


def test_minor10_sqlite_and_memory_refuse_a_bad_row_the_same_way(tmp_path: Path) -> None:
    link, _ = pl.create(kind=pl.SHARE, studies=[STUDY], person="Ann", email=PATIENT, code_to=MOBILE,
                        created_by="user:alice", days=None, policy=pl.LinkPolicy(), now=1.0,
                        draw=lambda n: bytes(range(n)))
    bad = replace(link, kind="other")
    for store in (MemoryLinkStore(), SqliteLinkStore(tmp_path / "node.db")):
        assert store.insert_link(link)
        assert not store.insert_link(link)  # a duplicate: False
        with pytest.raises(Exception) as info:
            store.insert_link(replace(bad, link_id="1" * 32, token_hash="2" * 64))
        assert isinstance(info.value, (ValueError, sqlite3.IntegrityError)), info.value


async def test_minor10_the_staff_list_pages(links: LinkService, smtp: SmtpServer, clock: Clock) -> None:
    made = []
    for n in range(5):
        clock.now += 1
        made.append(await links.create_share("user:alice", [STUDY], "Ann", f"p{n}@example.org", MOBILE))
    first = [r["id"] for r in await links.list_links(limit=2)]
    second = [r["id"] for r in await links.list_links(limit=2, offset=2)]
    assert first + second == made[::-1][:4]


def test_minor11_the_link_service_does_not_import_the_web_layer() -> None:
    source = Path(service_module.__file__).read_text()
    assert "meshnode.web" not in source


async def test_minor2_a_link_left_unsent_by_a_crash_shows_as_not_sent(links: LinkService, smtp: SmtpServer) -> None:
    sent_id, _ = await _share(links, smtp)
    # a crash between storing a link and sending its email: only "created" in its history
    link, _ = pl.create(kind=pl.SHARE, studies=[STUDY], person="Ann", email="b@example.org", code_to=MOBILE,
                        created_by="user:alice", days=None, policy=pl.LinkPolicy(), now=links.clock(),
                        draw=links.draw)
    assert links.store.insert_link(link, (LinkEvent(link.link_id, links.clock(), "created", "user:alice"),))
    rows = {r["id"]: r for r in await links.list_links()}
    assert rows[sent_id]["email_sent"] is True and rows[link.link_id]["email_sent"] is False
    assert (await links.history(link.link_id))["email_sent"] is False
