"""Attacks on the arrival email (meshnode.notify): a sender trying to inject headers or pick the recipient,
a poisoned user record, a relay that strips STARTTLS or presents a certificate nobody vouches for."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from email.parser import BytesParser
from email.policy import SMTP as SMTP_POLICY

from meshnode.notify.message import Arrival, arrival_message
from meshnode.notify.recipient import Recipient, RecipientKind, notify_address, resolve_recipient
from meshnode.storage.memory_metadata import MemoryMetadataStore
from meshnode.storage.sqlite_users import SqliteUserStore
from meshnode.storage.users import MemoryUserStore, User
from protocol.document import open_document
from protocol.errors import SchemaError
from protocol.manifest import Manifest
from tests.meshnode.notify.helpers import IDENTIFIERS, NOTE, Audit, StaffUser, arrived, config_for, notifier, received
from tests.meshnode.notify.smtp_server import SmtpServer
from tests.protocol import factories as f
from tests.protocol.assertions import raises_exactly

INJECTION = "dr.jones\r\nBcc: everyone@evil.example\r\nSubject: reset your password"
HEADERS = {"From", "To", "Subject", "Date", "Message-ID", "Auto-Submitted", "Content-Type",
           "Content-Transfer-Encoding", "MIME-Version"}


def test_a_manifest_with_cr_lf_in_attention_or_note_never_opens() -> None:
    for key in ("attention", "note"):
        body = f.make_manifest().to_body()
        body[key] = INJECTION
        with raises_exactly(SchemaError, match=key):
            open_document(f.resign(Manifest.LABEL, body, f.NODE_A), Manifest)


def test_even_a_line_break_that_got_past_the_decoder_stays_in_the_body() -> None:
    # built directly (the decoder refuses it): the sender's text goes only into the body, never a header
    arrival = Arrival("bafymanifest", "RGT", "Evil\r\nBcc: x@evil.example", "urgent", "care", 1, 2, INJECTION,
                      True, 1_767_225_600)
    data = arrival_message(arrival, Recipient("pacs-team@rxx.nhs.uk", RecipientKind.ORGANISATION),
                           from_address="imaging-mesh@rxx.nhs.uk", own_org="RXX", public_url="").as_bytes()
    msg = BytesParser(policy=SMTP_POLICY).parsebytes(data)
    assert set(msg.keys()) == HEADERS
    assert msg["To"] == "pacs-team@rxx.nhs.uk" and msg["Subject"] == "[dicom-mesh] URGENT study from RGT has arrived"
    assert b"evil.example" not in data.split(b"\r\n\r\n", 1)[0]  # not in the headers


@pytest.mark.parametrize("email", ["a.jones@rxx.nhs.uk\r\nBcc: everyone@evil.example",
                                   "a.jones@rxx.nhs.uk, everyone@evil.example",
                                   "Dr Jones <everyone@evil.example>", "a.jones@rxx.nhs.uk\n"])
def test_a_poisoned_address_on_a_user_record_is_not_used(email: str) -> None:
    users = MemoryUserStore()
    users.add_user(StaffUser("dr.jones", ("clinician",), 0, email=email))
    assert notify_address(users, "dr.jones") is None
    assert resolve_recipient(users, "dr.jones", org_address="pacs-team@rxx.nhs.uk",
                             allowed_domains=("rxx.nhs.uk",)).kind is RecipientKind.ORGANISATION


def test_a_user_store_without_email_addresses_falls_back(tmp_path: Path) -> None:
    # the node's SQLite user store before the portal's sign-in change adds addresses: no `email` column
    users = SqliteUserStore(tmp_path / "node.db")
    try:
        users.add_user(User("dr.jones", ("clinician",), 0))
        users.add_user(User("k.lee@rxx.nhs.uk", ("clinician",), 0))
        assert notify_address(users, "dr.jones") is None
        org = "pacs-team@rxx.nhs.uk"
        assert resolve_recipient(users, "dr.jones", org_address=org, allowed_domains=("rxx.nhs.uk",)) == \
            Recipient(org, RecipientKind.ORGANISATION)
        assert resolve_recipient(users, "k.lee@rxx.nhs.uk", org_address=org, allowed_domains=("rxx.nhs.uk",)) == \
            Recipient("k.lee@rxx.nhs.uk", RecipientKind.ALLOW_LISTED)
        # another organisation's person, named by the sender: never emailed by this node
        assert resolve_recipient(users, "bob@rgt.nhs.uk", org_address=org, allowed_domains=("rxx.nhs.uk",)) == \
            Recipient(org, RecipientKind.ORGANISATION)
        assert resolve_recipient(users, "k.lee@rxx.nhs.uk", org_address=org, allowed_domains=()) == \
            Recipient(org, RecipientKind.ORGANISATION)
    finally:
        users.close()


async def _attempted(tmp_path: Path, server: SmtpServer, **config: object) -> list[str]:
    """Queue one arrival email and let the notifier try it until it has failed twice; return its errors."""
    store = MemoryMetadataStore()
    service = notifier(config_for(server, tmp_path, **config), store, MemoryUserStore(), Audit())
    await service.on_event(arrived(received(store)))
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        with trio.fail_after(30):
            while service.failures < 2:
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    assert (await service.counts()).get("delivered", 0) == 0
    return [r.last_error for r in service.driver.records()]


async def test_a_relay_without_starttls_gets_nothing(tmp_path: Path) -> None:
    # an attacker in the path strips STARTTLS from the EHLO answer: the node does not fall back to clear text
    server = SmtpServer(tmp_path / "smtp", starttls=False).start()
    try:
        errors = await _attempted(tmp_path, server)
    finally:
        server.stop()
    assert server.received == [] and "does not offer STARTTLS" in errors[0]


async def test_a_relay_whose_certificate_nobody_vouches_for_gets_nothing(tmp_path: Path) -> None:
    server = SmtpServer(tmp_path / "smtp").start()
    other = SmtpServer(tmp_path / "other")  # another CA: the node trusts that one, not the server's
    try:
        errors = await _attempted(tmp_path, server, ca=other.pki.ca_cert)
    finally:
        server.stop()
    assert server.received == [] and "CERTIFICATE_VERIFY_FAILED" in errors[0]


async def test_the_note_and_the_summary_never_reach_the_email(tmp_path: Path) -> None:
    server = SmtpServer(tmp_path / "smtp").start()
    store = MemoryMetadataStore()
    try:
        service = notifier(config_for(server, tmp_path), store, MemoryUserStore(), Audit())
        await service.on_event(arrived(received(store, attention="nobody.here", note=NOTE)))
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            with trio.fail_after(30):
                while not server.received:
                    await trio.sleep(0.02)
            nursery.cancel_scope.cancel()
    finally:
        server.stop()
    text = server.received[0].data.decode("utf-8", "replace")
    assert all(i not in text for i in IDENTIFIERS)
