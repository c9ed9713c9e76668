"""DirectoryService against a real SQLite file: what it accepts, what it refuses, what it keeps."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol.directory_messages import (
    Accepted,
    Entries,
    GetIdentity,
    GetRoster,
    IdentityReply,
    ListOrgs,
    LookupOrg,
    LookupPeer,
    PublishRoster,
    Register,
    RosterReply,
    RosterUnchanged,
    WatchRoster,
)
from protocol.errors import (
    CertificateExpiredError,
    CertificateRevokedError,
    DecodeError,
    RevisionRollbackError,
    RosterRollbackError,
    UnauthorisedError,
    UnavailableError,
    UnknownIssuerError,
    DocumentExpiredError,
    SignatureError,
)
from tests.protocol.factories import (
    AUTHORITY,
    AUTHORITY_NEW,
    DAY,
    NODE_A,
    NODE_B,
    NOW,
    ROGUE,
    make_address_record,
    serial,
    sign_certificate,
    sign_roster,
)
from protocol.certificate import Certificate
from protocol.document import open_document
from protocol.keys import SigningKey
from tools.directory.service import DirectoryService
from tools.directory.store import DirectoryStore

DIRECTORY_KEY_CERT = b"directory-certificate-bytes"


def open_service(path: Path, now: float = NOW) -> DirectoryService:
    return DirectoryService(DirectoryStore(path / "directory.db"), [AUTHORITY.public_key], DIRECTORY_KEY_CERT, now)


@pytest.fixture
def service(tmp_path: Path) -> DirectoryService:
    svc = open_service(tmp_path)
    assert svc.handle("x", PublishRoster(sign_roster(1).encode()), NOW) == Accepted()
    return svc


def registration(
    node: SigningKey = NODE_A, *, seq: int = 1, addrs: tuple[str, ...] = ("/ip4/127.0.0.1/tcp/4001",),
    **cert_kw: object,
) -> Register:
    cert = sign_certificate(node, **cert_kw)
    record = make_address_record(node, seq=seq, addrs=addrs).sign(node)
    return Register(cert.encode(), record.encode())


def test_register_then_lookup_by_org_and_peer(service: DirectoryService) -> None:
    req = registration()
    assert service.handle(NODE_A.peer_id, req, NOW) == Accepted()
    by_org = service.handle("anyone", LookupOrg("RGT"), NOW)
    assert isinstance(by_org, Entries) and len(by_org.entries) == 1
    assert by_org.entries[0].certificate == req.certificate and by_org.entries[0].record == req.record
    by_peer = service.handle("anyone", LookupPeer(NODE_A.peer_id), NOW)
    assert by_peer == by_org
    assert service.handle("anyone", LookupOrg("RXX"), NOW) == Entries(())


def test_organisations_are_listed_once_each_in_code_order_and_paged(service: DirectoryService) -> None:
    from tests.protocol.factories import NODE_A2
    for node, org, n in ((NODE_B, "RXX", 2), (NODE_A, "RGT", 1), (NODE_A2, "RGT", 3)):
        service.handle(node.peer_id, registration(node, org=org, serial_no=n), NOW)
    listed = service.handle("anyone", ListOrgs(), NOW)
    assert isinstance(listed, Entries) and [e.record for e in listed.entries] == [None, None]
    codes = [open_document(e.certificate, Certificate).document.org_code for e in listed.entries]
    assert codes == ["RGT", "RXX"]
    assert service.handle("anyone", ListOrgs("RGT"), NOW) == Entries(listed.entries[1:])
    assert service.handle("anyone", ListOrgs("RXX"), NOW) == Entries(())
    # an expired certificate is not listed
    assert service.handle("anyone", ListOrgs(), NOW + 400 * DAY) == Entries(())


def test_identity_and_roster_are_served(service: DirectoryService) -> None:
    assert service.handle("x", GetIdentity(), NOW) == IdentityReply(DIRECTORY_KEY_CERT)
    reply = service.handle("x", GetRoster(), NOW)
    assert isinstance(reply, RosterReply) and reply.roster == sign_roster(1).encode()


def test_register_someone_elses_record_is_refused(service: DirectoryService) -> None:
    with pytest.raises(UnauthorisedError):
        service.handle(NODE_B.peer_id, registration(NODE_A), NOW)
    assert service.handle("x", LookupOrg("RGT"), NOW) == Entries(())


@pytest.mark.parametrize(
    ("cert_kw", "error"),
    [
        ({"not_after": NOW - 2 * DAY, "not_before": NOW - 30 * DAY}, CertificateExpiredError),
        ({"issuer": ROGUE}, UnknownIssuerError),
    ],
)
def test_register_with_invalid_certificate_changes_nothing(
    service: DirectoryService, cert_kw: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        service.handle(NODE_A.peer_id, registration(**cert_kw), NOW)
    assert service.handle("x", LookupOrg("RGT"), NOW) == Entries(())


def test_register_revoked_certificate_refused(tmp_path: Path) -> None:
    svc = open_service(tmp_path)
    svc.handle("x", PublishRoster(sign_roster(1, revoked=[serial(1)]).encode()), NOW)
    with pytest.raises(CertificateRevokedError):
        svc.handle(NODE_A.peer_id, registration(serial_no=1), NOW)
    assert svc.handle("x", LookupOrg("RGT"), NOW) == Entries(())


def test_replayed_older_record_refused_and_newer_kept(service: DirectoryService) -> None:
    newer = registration(seq=5)
    service.handle(NODE_A.peer_id, newer, NOW)
    for stale in (registration(seq=4), registration(seq=5, addrs=("/ip4/10.0.0.1/tcp/1",))):
        with pytest.raises(RevisionRollbackError):
            service.handle(NODE_A.peer_id, stale, NOW)
    # the very same record again is idempotent
    assert service.handle(NODE_A.peer_id, newer, NOW) == Accepted()
    entries = service.handle("x", LookupOrg("RGT"), NOW)
    assert isinstance(entries, Entries) and entries.entries[0].record == newer.record


def test_expired_or_forged_record_refused(service: DirectoryService) -> None:
    cert = sign_certificate(NODE_A).encode()
    expired = make_address_record(NODE_A, expires_at=NOW - DAY).sign(NODE_A).encode()
    with pytest.raises(DocumentExpiredError):
        service.handle(NODE_A.peer_id, Register(cert, expired), NOW)
    good = make_address_record(NODE_A).sign(NODE_A).encode()
    forged = good[:-1] + bytes([good[-1] ^ 1])
    with pytest.raises(SignatureError):
        service.handle(NODE_A.peer_id, Register(cert, forged), NOW)
    with pytest.raises(DecodeError):
        service.handle(NODE_A.peer_id, Register(cert, good[:-3]), NOW)
    assert service.handle("x", LookupOrg("RGT"), NOW) == Entries(())


def test_no_roster_means_no_registration(tmp_path: Path) -> None:
    svc = open_service(tmp_path)
    with pytest.raises(UnavailableError):
        svc.handle(NODE_A.peer_id, registration(), NOW)
    assert svc.handle("x", GetRoster(), NOW) == RosterReply(None)


def test_roster_rollback_refused_and_survives_restart(tmp_path: Path) -> None:
    svc = open_service(tmp_path)
    v2 = sign_roster(2).encode()
    svc.handle("x", PublishRoster(v2), NOW)
    for old in (sign_roster(1).encode(), sign_roster(2, revoked=[serial(9)]).encode()):
        with pytest.raises(RosterRollbackError):
            svc.handle("x", PublishRoster(old), NOW)
    svc.store.close()
    restarted = open_service(tmp_path)
    assert restarted.handle("x", GetRoster(), NOW) == RosterReply(v2)
    with pytest.raises(RosterRollbackError):
        restarted.handle("x", PublishRoster(sign_roster(1).encode()), NOW)
    assert restarted.handle("x", PublishRoster(sign_roster(3).encode()), NOW) == Accepted()


def test_roster_from_untrusted_key_refused(service: DirectoryService) -> None:
    with pytest.raises(UnknownIssuerError):
        service.handle("x", PublishRoster(sign_roster(7, signer=ROGUE).encode()), NOW)
    reply = service.handle("x", GetRoster(), NOW)
    assert isinstance(reply, RosterReply) and reply.roster == sign_roster(1).encode()


def test_watch_answers_with_the_roster_only_when_it_is_newer(service: DirectoryService) -> None:
    assert service.roster_version() == 1
    assert service.handle("x", WatchRoster(1), NOW) == RosterUnchanged(1)
    assert service.handle("x", WatchRoster(5), NOW) == RosterUnchanged(1)  # a watcher ahead of the directory
    assert service.handle("x", WatchRoster(0), NOW) == RosterReply(sign_roster(1).encode())
    v2 = sign_roster(2, revoked=[serial(1)]).encode()
    service.handle("x", PublishRoster(v2), NOW)
    assert service.handle("x", WatchRoster(1), NOW) == RosterReply(v2)


def test_rotated_roster_survives_a_directory_restart(tmp_path: Path) -> None:
    """The directory keeps the rotation chain: after a restart the roster signed by the new key still verifies."""
    svc = open_service(tmp_path)
    both = (AUTHORITY.public_key, AUTHORITY_NEW.public_key)
    svc.handle("x", PublishRoster(sign_roster(1, authorities=both).encode()), NOW)
    rotated = sign_roster(2, authorities=(AUTHORITY_NEW.public_key,), signer=AUTHORITY_NEW).encode()
    svc.handle("x", PublishRoster(rotated), NOW)
    svc.store.close()
    restarted = open_service(tmp_path)
    assert restarted.roster_version() == 2
    with pytest.raises(UnknownIssuerError):
        restarted.handle("x", PublishRoster(sign_roster(3).encode()), NOW)  # the dropped key
    assert restarted.handle("x", PublishRoster(
        sign_roster(3, authorities=(AUTHORITY_NEW.public_key,), signer=AUTHORITY_NEW).encode()), NOW) == Accepted()
