"""Trust decisions: certificate validity, the roster guard, and who may sign what.

Every refusal is checked for its exact error class and for leaving state alone.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.address_record import AddressRecord
from protocol.certificate import Role
from protocol.document import DEFAULT_SKEW, Signed, open_document
from protocol.errors import (
    CertificateExpiredError,
    CertificateNotYetValidError,
    CertificateRevokedError,
    DocumentError,
    DocumentExpiredError,
    MeshError,
    RoleError,
    RosterExpiredError,
    RosterNotYetValidError,
    RosterRollbackError,
    SchemaError,
    UnknownIssuerError,
    WrongOrganisationError,
)
from protocol.manifest import Manifest, verify_manifest
from protocol.recall import RecallAction, verify_recall
from protocol.receipt import verify_receipt
from protocol.keys import SigningKey
from protocol.roster import MemoryRosterVersionStore, RosterGuard, verify_roster
from protocol.trust import check_certificate, check_node_signature, require_role

from tests.protocol import factories as f
from tests.protocol.assertions import raises_exactly

NOW = f.NOW
SKEW = DEFAULT_SKEW


# --- certificates ---------------------------------------------------------------------


def test_valid_certificate() -> None:
    cert = check_certificate(f.sign_certificate(), f.make_roster(), NOW)
    assert cert.org_code == "RGT" and cert.peer_id == f.NODE_A.peer_id


NB, NA = NOW - f.DAY, NOW + f.DAY


@pytest.mark.parametrize(
    ("at", "error"),
    [
        (NB, None),
        (NA, None),
        (NB - SKEW, None),  # just inside the tolerance before not_before
        (NB - SKEW - 1, CertificateNotYetValidError),  # just outside
        (NB - SKEW - 0.001, CertificateNotYetValidError),
        (NB - 10 * f.DAY, CertificateNotYetValidError),
        (NA + SKEW, None),  # just inside the tolerance after not_after
        (NA + SKEW + 1, CertificateExpiredError),  # just outside
        (NA + SKEW + 0.001, CertificateExpiredError),
        (NA + 10 * f.DAY, CertificateExpiredError),
    ],
)
def test_certificate_validity_window_and_skew(at: float, error: type[MeshError] | None) -> None:
    signed = f.sign_certificate(not_before=NB, not_after=NA)
    if error is None:
        check_certificate(signed, f.make_roster(), at)
    else:
        with raises_exactly(error):
            check_certificate(signed, f.make_roster(), at)


@settings(max_examples=100, deadline=None)
@given(st.integers(-3 * f.DAY, 3 * f.DAY), st.integers(0, 3600))
def test_certificate_validity_property(offset: int, skew: int) -> None:
    signed = f.sign_certificate(not_before=NB, not_after=NA)
    at = NOW + offset
    if at + skew < NB:
        with raises_exactly(CertificateNotYetValidError):
            check_certificate(signed, f.make_roster(), at, skew=skew)
    elif at - skew > NA:
        with raises_exactly(CertificateExpiredError):
            check_certificate(signed, f.make_roster(), at, skew=skew)
    else:
        check_certificate(signed, f.make_roster(), at, skew=skew)


def test_certificate_from_issuer_not_in_roster() -> None:
    signed = f.sign_certificate(issuer=f.ROGUE)
    assert open_document(signed.encode(), type(signed.document)).document == signed.document  # well-formed
    with raises_exactly(UnknownIssuerError):
        check_certificate(signed, f.make_roster(), NOW)


def test_certificate_from_a_rotated_out_issuer() -> None:
    signed = f.sign_certificate(issuer=f.AUTHORITY)
    with raises_exactly(UnknownIssuerError):
        check_certificate(signed, f.make_roster(version=3, authorities=[f.AUTHORITY_NEW.public_key]), NOW)


def test_revoked_certificate() -> None:
    signed = f.sign_certificate(serial_no=7)
    with raises_exactly(CertificateRevokedError):
        check_certificate(signed, f.make_roster(revoked=[f.serial(7)]), NOW)
    check_certificate(signed, f.make_roster(revoked=[f.serial(8)]), NOW)
    # Revocation is judged by the newest roster even when validity is judged by an older one.
    with raises_exactly(CertificateRevokedError):
        check_certificate(signed, f.make_roster(), NOW, revocation_roster=f.make_roster(version=2, revoked=[f.serial(7)]))


def test_revocation_wins_over_expiry_and_issuer_checks_come_first() -> None:
    expired_and_revoked = f.sign_certificate(serial_no=7, not_before=NOW - 10 * f.DAY, not_after=NOW - 5 * f.DAY)
    with raises_exactly(CertificateRevokedError):
        check_certificate(expired_and_revoked, f.make_roster(revoked=[f.serial(7)]), NOW)
    rogue_and_revoked = f.sign_certificate(serial_no=7, issuer=f.ROGUE)
    with raises_exactly(UnknownIssuerError):
        check_certificate(rogue_and_revoked, f.make_roster(revoked=[f.serial(7)]), NOW)


def test_roles() -> None:
    cert = f.make_certificate(roles=[Role.ACUTE_TRUST.value, Role.STROKE_NETWORK.value])
    require_role(cert, Role.STROKE_NETWORK)
    with raises_exactly(RoleError):
        require_role(cert, Role.DIRECTORY)


# --- roster guard ---------------------------------------------------------------------


def snapshot(guard: RosterGuard) -> tuple[object, int, frozenset[object]]:
    return guard.current, guard.store.highest_roster_version(), guard.trusted_keys


def refused(guard: RosterGuard, data: bytes, error: type[MeshError], now: float = NOW) -> None:
    before = snapshot(guard)
    with raises_exactly(error):
        guard.accept(data, now)
    assert snapshot(guard) == before


def test_accept_first_roster() -> None:
    guard = f.new_guard()
    signed = guard.accept(f.sign_roster(1).encode(), NOW)
    assert guard.current == signed
    assert guard.store.highest_roster_version() == 1
    assert guard.roster(NOW) == signed.document


def test_rollback_older_and_equal_versions() -> None:
    guard = f.new_guard()
    guard.accept(f.sign_roster(5).encode(), NOW)
    refused(guard, f.sign_roster(5).encode(), RosterRollbackError)  # equal, even byte-identical
    refused(guard, f.sign_roster(5, revoked=[f.serial(1)]).encode(), RosterRollbackError)  # equal, different
    refused(guard, f.sign_roster(4).encode(), RosterRollbackError)  # older
    refused(guard, f.sign_roster(1).encode(), RosterRollbackError)
    guard.accept(f.sign_roster(6).encode(), NOW)
    assert guard.store.highest_roster_version() == 6


def test_rollback_survives_restart_through_the_store() -> None:
    store = MemoryRosterVersionStore()
    first = RosterGuard([f.AUTHORITY.public_key], store)
    v3 = f.sign_roster(3).encode()
    first.accept(v3, NOW)
    second = RosterGuard([f.AUTHORITY.public_key], store)  # restart: nothing in memory but the store
    refused(second, f.sign_roster(2).encode(), RosterRollbackError)
    before = snapshot(second)
    with raises_exactly(RosterRollbackError):
        second.restore(f.sign_roster(2).encode(), NOW)
    assert snapshot(second) == before
    assert second.restore(v3, NOW).document.version == 3  # the cached current one is fine
    assert second.current is not None
    refused(second, v3, RosterRollbackError)  # once current, the same version is not news
    # without a usable cache, the anchor-signed roster accepted last is adopted again from the wire
    third = RosterGuard([f.AUTHORITY.public_key], store)
    refused(third, f.sign_roster(2).encode(), RosterRollbackError)
    assert third.accept(v3, NOW).document.version == 3


@pytest.mark.parametrize(
    ("issued_at", "expires_at", "error"),
    [
        (NOW - 10 * f.DAY, NOW - SKEW - 1, RosterExpiredError),  # just outside the tolerance
        (NOW - 10 * f.DAY, NOW - f.DAY, RosterExpiredError),
        (NOW + SKEW + 1, NOW + f.DAY, RosterNotYetValidError),
        (NOW - 10 * f.DAY, NOW - SKEW, None),  # just inside
        (NOW + SKEW, NOW + f.DAY, None),
    ],
)
def test_roster_validity_window(issued_at: int, expires_at: int, error: type[MeshError] | None) -> None:
    guard = f.new_guard()
    data = f.sign_roster(1, issued_at=issued_at, expires_at=expires_at).encode()
    if error is None:
        guard.accept(data, NOW)
    else:
        refused(guard, data, error)


def test_current_roster_fails_closed_once_expired() -> None:
    guard = f.new_guard()
    with raises_exactly(RosterExpiredError):
        guard.roster(NOW)
    guard.accept(f.sign_roster(1, expires_at=NOW + f.DAY).encode(), NOW)
    guard.roster(NOW + f.DAY + SKEW)
    with raises_exactly(RosterExpiredError):
        guard.roster(NOW + f.DAY + SKEW + 1)


def test_roster_signed_by_untrusted_key() -> None:
    guard = f.new_guard()
    refused(guard, f.sign_roster(1, signer=f.ROGUE).encode(), UnknownIssuerError)
    # Even listing the real authority in it does not help.
    refused(
        guard,
        f.sign_roster(1, signer=f.ROGUE, authorities=[f.AUTHORITY.public_key, f.ROGUE.public_key]).encode(),
        UnknownIssuerError,
    )
    with raises_exactly(UnknownIssuerError):
        verify_roster(f.sign_roster(1, signer=f.ROGUE).encode(), [f.AUTHORITY.public_key], NOW)


def test_key_rotation() -> None:
    old, new = f.AUTHORITY, f.AUTHORITY_NEW
    guard = f.new_guard(old)
    guard.accept(f.sign_roster(1, authorities=[old.public_key]).encode(), NOW)
    # The new key is not trusted before a roster signed by a trusted key introduces it.
    refused(guard, f.sign_roster(2, signer=new, authorities=[new.public_key]).encode(), UnknownIssuerError)
    guard.accept(f.sign_roster(2, signer=old, authorities=[old.public_key, new.public_key]).encode(), NOW)
    assert new.public_key in guard.trusted_keys
    v3 = guard.accept(f.sign_roster(3, signer=new, authorities=[new.public_key]).encode(), NOW)
    assert v3.document.authorities == (new.public_key,)
    # Certificates from the new authority are now valid; those of the old one are not.
    assert check_certificate(f.sign_certificate(issuer=new), guard.roster(NOW), NOW).org_code == "RGT"
    with raises_exactly(UnknownIssuerError):
        check_certificate(f.sign_certificate(issuer=old), guard.roster(NOW), NOW)


def test_roster_signed_by_a_current_authority_not_an_anchor() -> None:
    guard = f.new_guard(f.AUTHORITY)
    guard.accept(f.sign_roster(1, authorities=[f.AUTHORITY.public_key, f.AUTHORITY_NEW.public_key]).encode(), NOW)
    guard.accept(f.sign_roster(2, signer=f.AUTHORITY_NEW).encode(), NOW)
    assert guard.store.highest_roster_version() == 2


def test_guard_needs_an_anchor() -> None:
    with raises_exactly(SchemaError):
        RosterGuard([], MemoryRosterVersionStore())


# --- node-signed documents ------------------------------------------------------------


CERT_A = f.sign_certificate(f.NODE_A, org="RGT", serial_no=1)
CERT_A2 = f.sign_certificate(f.NODE_A2, org="RGT", serial_no=2)
CERT_B = f.sign_certificate(f.NODE_B, org="RXX", serial_no=3)
CERT_C = f.sign_certificate(f.NODE_C, org="TELE", serial_no=4, roles=[Role.TELERADIOLOGY.value])


def opened_manifest(manifest: Manifest | None = None, key: SigningKey = f.NODE_A) -> Signed[Manifest]:
    return open_document((manifest or f.make_manifest()).sign(key).encode(), Manifest)


def test_valid_manifest() -> None:
    signed = opened_manifest()
    assert verify_manifest(signed, CERT_A, f.make_roster(), NOW) == CERT_A.document


def test_manifest_signed_by_a_node_of_another_org() -> None:
    # NODE_C holds a valid TELE certificate and signs a manifest claiming to be from RGT.
    signed = opened_manifest(f.make_manifest(f.NODE_C, sender_org="RGT"), f.NODE_C)
    with raises_exactly(WrongOrganisationError):
        verify_manifest(signed, CERT_C, f.make_roster(), NOW)


def test_manifest_verified_against_a_certificate_the_signer_does_not_hold() -> None:
    signed = opened_manifest(f.make_manifest(f.NODE_A2), f.NODE_A2)
    with raises_exactly(DocumentError):
        verify_manifest(signed, CERT_A, f.make_roster(), NOW)
    verify_manifest(signed, CERT_A2, f.make_roster(), NOW)


def test_manifest_whose_sender_peer_is_not_the_signer() -> None:
    data = f.resign(Manifest.LABEL, f.make_manifest(f.NODE_A).to_body(), f.NODE_A2)  # same org, other node
    with raises_exactly(DocumentError, match="sender peer"):
        open_document(data, Manifest)


@pytest.mark.parametrize(
    ("expires_at", "error"),
    [
        (NOW - SKEW, None),
        (NOW - SKEW - 1, DocumentExpiredError),
        (NOW - 2 * f.DAY, DocumentExpiredError),
    ],
)
def test_manifest_expiry(expires_at: int, error: type[MeshError] | None) -> None:
    signed = opened_manifest(f.make_manifest(created_at=NOW - 3 * f.DAY, expires_at=expires_at))
    if error is None:
        verify_manifest(signed, CERT_A, f.make_roster(), NOW)
    else:
        with raises_exactly(error):
            verify_manifest(signed, CERT_A, f.make_roster(), NOW)


def test_manifest_from_the_future() -> None:
    verify_manifest(opened_manifest(f.make_manifest(created_at=NOW + SKEW)), CERT_A, f.make_roster(), NOW)
    with raises_exactly(DocumentError, match="future"):
        verify_manifest(opened_manifest(f.make_manifest(created_at=NOW + SKEW + 1)), CERT_A, f.make_roster(), NOW)


def test_manifest_certificate_problems() -> None:
    signed = opened_manifest()
    with raises_exactly(CertificateRevokedError):
        verify_manifest(signed, CERT_A, f.make_roster(revoked=[CERT_A.document.serial]), NOW)
    with raises_exactly(UnknownIssuerError):
        verify_manifest(signed, f.sign_certificate(issuer=f.ROGUE), f.make_roster(), NOW)
    expired_before_creation = f.sign_certificate(not_before=NOW - 30 * f.DAY, not_after=NOW - 2 * f.DAY)
    with raises_exactly(CertificateExpiredError):
        verify_manifest(signed, expired_before_creation, f.make_roster(), NOW)
    with raises_exactly(RosterExpiredError):
        verify_manifest(signed, CERT_A, f.make_roster(issued_at=NOW - 30 * f.DAY, expires_at=NOW - f.DAY), NOW)


def test_receipt() -> None:
    signed = open_document(f.make_receipt().sign(f.NODE_B).encode(), type(f.make_receipt()))
    assert verify_receipt(signed, CERT_B, f.make_roster(), NOW) == CERT_B.document
    # A node of another org cannot sign a receipt for RXX.
    forged = open_document(f.make_receipt(f.NODE_C, org="RXX").sign(f.NODE_C).encode(), type(f.make_receipt()))
    with raises_exactly(WrongOrganisationError):
        verify_receipt(forged, CERT_C, f.make_roster(), NOW)
    with raises_exactly(DocumentError):
        verify_receipt(signed, CERT_C, f.make_roster(), NOW)  # certificate of another node
    future = open_document(f.make_receipt(at=NOW + SKEW + 1).sign(f.NODE_B).encode(), type(f.make_receipt()))
    with raises_exactly(DocumentError, match="future"):
        verify_receipt(future, CERT_B, f.make_roster(), NOW)


def test_recall() -> None:
    recall = f.make_recall()
    signed = open_document(recall.sign(f.NODE_A2).encode(), type(recall))  # any RGT node may recall
    assert verify_recall(signed, CERT_A2, f.make_roster(), NOW) == CERT_A2.document
    by_recipient = open_document(recall.sign(f.NODE_B).encode(), type(recall))
    with raises_exactly(WrongOrganisationError):
        verify_recall(by_recipient, CERT_B, f.make_roster(), NOW)
    with raises_exactly(DocumentError):
        verify_recall(by_recipient, CERT_A, f.make_roster(), NOW)  # presents someone else's certificate
    future = f.make_recall(action=RecallAction.WITHDRAW, at=NOW + SKEW + 1)
    with raises_exactly(DocumentError, match="future"):
        verify_recall(open_document(future.sign(f.NODE_A).encode(), type(future)), CERT_A, f.make_roster(), NOW)


def test_check_node_signature_judges_the_certificate_at_the_document_time_and_now() -> None:
    cert = f.sign_certificate(not_before=NOW - 10 * f.DAY, not_after=NOW + 5 * f.DAY)
    assert check_node_signature(
        f.NODE_A.public_key, cert, f.make_roster(), org_code="RGT", at=NOW - 6 * f.DAY, now=NOW
    ) == cert.document
    with raises_exactly(CertificateNotYetValidError):
        check_node_signature(f.NODE_A.public_key, cert, f.make_roster(), org_code="RGT", at=NOW - 11 * f.DAY, now=NOW)
    # an expired (not revoked) key cannot keep signing by backdating its documents
    expired = f.sign_certificate(not_before=NOW - 10 * f.DAY, not_after=NOW - 5 * f.DAY)
    with raises_exactly(CertificateExpiredError):
        check_node_signature(f.NODE_A.public_key, expired, f.make_roster(), org_code="RGT", at=NOW - 6 * f.DAY, now=NOW)


def test_address_record() -> None:
    record = f.make_address_record(expires_at=NOW + f.HOUR)
    signed = open_document(record.sign(f.NODE_A).encode(), AddressRecord)
    signed.document.check_live(NOW + f.HOUR + SKEW)
    with raises_exactly(DocumentExpiredError):
        signed.document.check_live(NOW + f.HOUR + SKEW + 1)
    with raises_exactly(DocumentError, match="not signed by the peer"):
        open_document(f.resign(AddressRecord.LABEL, record.to_body(), f.NODE_B), AddressRecord)
