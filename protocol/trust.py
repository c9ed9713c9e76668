"""Is this certificate valid, and is this document signed by the org it claims?"""

from __future__ import annotations

from protocol.certificate import Certificate, Role
from protocol.document import DEFAULT_SKEW, Signed
from protocol.errors import (
    CertificateExpiredError,
    CertificateNotYetValidError,
    CertificateRevokedError,
    DocumentError,
    RoleError,
    UnknownIssuerError,
    WrongOrganisationError,
)
from protocol.keys import PublicKey
from protocol.roster import Roster


def check_certificate(
    signed: Signed[Certificate],
    roster: Roster,
    at: float,
    *,
    skew: int = DEFAULT_SKEW,
    revocation_roster: Roster | None = None,
) -> Certificate:
    """Raise unless the certificate is issued by a roster authority, unrevoked, valid at `at`.

    `at` is usually now; for a signed document it is the time the document
    claims to have been made. Revocation is always judged by the newest
    roster (revocation_roster, defaulting to roster).
    """
    cert = signed.document
    authority = roster.authority(cert.issuer)
    if authority != signed.signer:
        raise UnknownIssuerError("certificate signed by a key other than its named issuer")
    if (revocation_roster or roster).is_revoked(cert.serial):
        raise CertificateRevokedError(f"certificate {cert.serial} is revoked")
    if at + skew < cert.not_before:
        raise CertificateNotYetValidError(f"certificate {cert.serial} not valid before {cert.not_before}")
    if at - skew > cert.not_after:
        raise CertificateExpiredError(f"certificate {cert.serial} expired at {cert.not_after}")
    return cert


def require_role(cert: Certificate, role: Role) -> None:
    if not cert.has_role(role):
        raise RoleError(f"certificate {cert.serial} ({cert.org_code}) lacks role {role.value}")


def check_node_signature(
    signer: PublicKey,
    signed_cert: Signed[Certificate],
    roster: Roster,
    *,
    org_code: str,
    at: float,
    now: float,
    skew: int = DEFAULT_SKEW,
) -> Certificate:
    """A node-signed document: its signer holds this certificate, of org_code, valid at `at` and now.

    The roster must be current at `now`; revocation is judged by it.
    """
    roster.check_current(now, skew)
    cert = check_certificate(signed_cert, roster, at, skew=skew)
    # ...and still valid now: an expired key must not keep signing by backdating.
    check_certificate(signed_cert, roster, now, skew=skew)
    if cert.node_key != signer:
        raise DocumentError("document signer does not hold the presented certificate")
    if cert.org_code != org_code:
        raise WrongOrganisationError(
            f"document for org {org_code} signed by a node of org {cert.org_code}"
        )
    return cert
