"""Arrival emails through a real SMTP server (aiosmtpd, STARTTLS required, login) and the node's durable
retry queue (SQLite and memory): who gets it, what it says (no patient identifiers), retries, restarts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from meshnode.node.events import StudyEventKind
from meshnode.notify.notifier import Notifier
from meshnode.storage.memory_metadata import MemoryMetadataStore
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.dbthread import DatabaseThread
from meshnode.storage.sqlite_metadata import SqliteMetadataStore
from meshnode.storage.users import MemoryUserStore
from protocol.manifest import Priority
from tests.meshnode.notify.helpers import (IDENTIFIERS, Audit, StaffUser, arrived, config_for, notifier,
                                           received)
from tests.meshnode.notify.smtp_server import SmtpServer


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataStore]:
    s: MetadataStore = SqliteMetadataStore(tmp_path / "node.db") if request.param == "sqlite" else MemoryMetadataStore()
    yield s
    s.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[SmtpServer]:
    s = SmtpServer(tmp_path / "smtp", users={"pacs-gw": "s3cret-password"}).start()
    yield s
    s.stop()


@pytest.fixture
def users() -> MemoryUserStore:
    u = MemoryUserStore()
    u.add_user(StaffUser("dr.jones", ("clinician",), 0, email="a.jones@rxx.nhs.uk"))
    u.add_user(StaffUser("dr.gone", ("clinician",), 0, disabled=True, email="gone@rxx.nhs.uk"))
    return u


async def until(notifier: Notifier, state: str, n: int = 1, timeout: float = 30) -> dict[str, int]:
    with trio.fail_after(timeout):
        while (counts := await notifier.counts()).get(state, 0) < n:
            await trio.sleep(0.02)
    return counts


async def test_the_named_user_gets_an_email_over_starttls_with_no_patient_identifiers(
        store: MetadataStore, server: SmtpServer, users: MemoryUserStore, tmp_path: Path) -> None:
    audit = Audit()
    service = notifier(config_for(server, tmp_path), store, users, audit)
    signed = received(store, attention="dr.jones")
    await service.on_event(arrived(signed))
    assert await service.counts() == {"pending": 1}  # durable before the event's publisher goes on
    await service.on_event(arrived(signed))  # the same arrival again: one email
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        await until(service, "delivered")
        nursery.cancel_scope.cancel()
    [mail] = server.received
    assert mail.tls and mail.login == "pacs-gw"
    assert mail.rcpt_tos == ("a.jones@rxx.nhs.uk",) and mail.mail_from == "imaging-mesh@rxx.nhs.uk"
    msg = mail.message
    assert msg["To"] == "a.jones@rxx.nhs.uk" and msg["From"] == "imaging-mesh@rxx.nhs.uk"
    assert msg["Subject"] == "[dicom-mesh] URGENT study from RGT has arrived"
    assert msg["Auto-Submitted"] == "auto-generated"
    body = msg.get_content()
    assert f"https://gw.rxx.nhs.uk/ui/#inbox?manifest={signed.cid}" in body
    assert "Guy's and St Thomas' NHS Foundation Trust (RGT)" in body
    assert "Instances: 3" in body and "Series: 2" in body and "For the attention of: a.jones@rxx.nhs.uk" in body
    assert "The sender added a note" in body
    for identifier in IDENTIFIERS:  # neither in the headers, nor the body, nor anywhere in the bytes
        assert identifier not in mail.data.decode("utf-8", "replace"), identifier
        assert identifier.lower() not in body.lower(), identifier
    assert audit.actions() == ["email-queued", "email-sent"]
    assert "a.jones@rxx.nhs.uk" in audit.events[0].detail and audit.events[0].study != signed.document.study_uid
    assert all(i not in e.detail for e in audit.events for i in IDENTIFIERS)


@pytest.mark.parametrize(("attention", "to"), [
    ("", "pacs-team@rxx.nhs.uk"),  # nobody named: the organisation
    ("a.jones@rxx.nhs.uk", "a.jones@rxx.nhs.uk"),  # a user named by the address on record
    ("dr.gone", "pacs-team@rxx.nhs.uk"),  # a disabled user: the organisation
    ("nobody", "pacs-team@rxx.nhs.uk"),  # no such user
    ("k.lee@rxx.nhs.uk", "k.lee@rxx.nhs.uk"),  # not a user, but an address in an allow-listed domain
    ("mallory@evil.example", "pacs-team@rxx.nhs.uk"),  # the sender cannot make this node email anyone
    ("bob@rgt.nhs.uk", "pacs-team@rxx.nhs.uk"),  # a person of the sending organisation: not emailed
    ("k.lee@rxx.nhs.uk.evil.example", "pacs-team@rxx.nhs.uk"),
    ("k.lee@mail.rxx.nhs.uk", "pacs-team@rxx.nhs.uk"),  # the allow-list is of exact domains
])
async def test_who_gets_it(store: MetadataStore, server: SmtpServer, users: MemoryUserStore, tmp_path: Path,
                           attention: str, to: str) -> None:
    service = notifier(config_for(server, tmp_path), store, users, Audit())
    await service.on_event(arrived(received(store, attention=attention)))
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        await until(service, "delivered")
        nursery.cancel_scope.cancel()
    assert [m.rcpt_tos for m in server.received] == [(to,)]


async def test_only_arrivals_of_the_configured_priorities(store: MetadataStore, users: MemoryUserStore,
                                                          tmp_path: Path) -> None:
    service = notifier(config_for(None, tmp_path, priorities=("stat",)), store, users, Audit())
    urgent = received(store, priority=Priority.URGENT)
    await service.on_event(arrived(urgent))
    await service.on_event(arrived(urgent, StudyEventKind.ANNOUNCED))
    await service.on_event(arrived(urgent, StudyEventKind.DELIVERED, direction="sent"))
    assert await service.counts() == {}
    store2 = MemoryMetadataStore()
    stat = received(store2, priority=Priority.STAT)
    service2 = notifier(config_for(None, tmp_path, priorities=("stat",)), store2, users, Audit())
    await service2.on_event(arrived(stat))
    assert await service2.counts() == {"pending": 1}


async def test_smtp_down_then_up(store: MetadataStore, users: MemoryUserStore, tmp_path: Path) -> None:
    server = SmtpServer(tmp_path / "smtp")  # not started: connections refused
    audit = Audit()
    service = notifier(config_for(server, tmp_path), store, users, audit)
    await service.on_event(arrived(received(store, attention="dr.jones")))
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            with trio.fail_after(30):
                while service.failures < 3:  # tried and failed, still pending
                    await trio.sleep(0.02)
            assert (await service.counts()).get("delivered", 0) == 0 and server.received == []
            server.start()
            await until(service, "delivered")
            nursery.cancel_scope.cancel()
    finally:
        server.stop()
    assert [m.rcpt_tos for m in server.received] == [("a.jones@rxx.nhs.uk",)]
    assert audit.actions() == ["email-queued", "email-sent"]
    assert f"after {service.failures + 1} attempt(s)" in audit.events[1].detail


async def test_a_queued_email_survives_a_restart(tmp_path: Path, server: SmtpServer,
                                                 users: MemoryUserStore) -> None:
    store = SqliteMetadataStore(tmp_path / "node.db")
    service = notifier(config_for(server, tmp_path), store, users, Audit())
    await service.on_event(arrived(received(store)))  # queued; the node stops before it is sent
    store.close()
    store = SqliteMetadataStore(tmp_path / "node.db")
    try:
        service = notifier(config_for(server, tmp_path), store, users, Audit())
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            await until(service, "delivered")
            nursery.cancel_scope.cancel()
    finally:
        store.close()
    assert [m.rcpt_tos for m in server.received] == [("pacs-team@rxx.nhs.uk",)]


async def test_a_refused_recipient_fails_for_good_at_once(store: MetadataStore, server: SmtpServer,
                                                          users: MemoryUserStore, tmp_path: Path) -> None:
    server.handler.refuse_rcpt.add("pacs-team@rxx.nhs.uk")
    audit = Audit()
    service = notifier(config_for(server, tmp_path), store, users, audit)
    await service.on_event(arrived(received(store)))
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        await until(service, "failed")
        nursery.cancel_scope.cancel()
    assert service.failures == 1 and server.received == []
    assert audit.actions() == ["email-queued", "email-failed"] and "550" in audit.events[1].detail


async def test_one_sending_organisation_cannot_flood_an_address(store: MetadataStore, users: MemoryUserStore,
                                                               tmp_path: Path) -> None:
    """Review 2 finding 10: at most per_sender_per_hour arrival emails per sending organisation in an hour;
    the rest are audited, not queued; an hour later emails go out again."""
    now = [1_767_225_600.0]
    audit = Audit()
    service = Notifier(config_for(None, tmp_path, per_sender_per_hour=3), DatabaseThread(store), users, "RXX",
                       "", audit, lambda: now[0])
    for i in range(5):
        await service.on_event(arrived(received(store, note=f"note {i}")))
        now[0] += 60
    assert await service.counts() == {"pending": 3}
    assert audit.actions() == ["email-queued"] * 3 + ["email-capped"] * 2
    now[0] += 3600
    await service.on_event(arrived(received(store, note="later")))
    assert await service.counts() == {"pending": 4}
