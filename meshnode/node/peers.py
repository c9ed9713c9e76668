"""Who is on the other end of a connection, and may they still be served?

A peer is known once it has presented its certificate (hello protocol) and
that certificate verified under the current roster. Every request is
authorised again against the roster in force at that moment, so a new roster
that revokes a peer takes effect on its very next request; `revalidate`
returns the peers to disconnect when a roster arrives.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from protocol.certificate import Certificate
from protocol.document import DEFAULT_SKEW, Signed
from protocol.errors import CertificateError, CertificateMismatchError, RosterError, UnauthorisedError
from protocol.roster import RosterGuard
from protocol.trust import check_certificate

log = logging.getLogger(__name__)


@dataclass
class KnownPeer:
    certificate: Signed[Certificate]
    first_seen: float
    last_seen: float

    @property
    def org(self) -> str:
        return self.certificate.document.org_code


class PeerRegistry:
    def __init__(self, guard: RosterGuard, *, skew: int = DEFAULT_SKEW) -> None:
        self.guard = guard
        self.skew = skew
        self._peers: dict[str, KnownPeer] = {}

    def learn(self, peer_id: str, certificate: Signed[Certificate], now: float) -> Certificate:
        """Accept a peer's certificate if it is its own and valid now; raise otherwise."""
        cert = self._check(certificate, now)
        if cert.peer_id != peer_id:
            raise CertificateMismatchError(f"the presented certificate {cert.serial} belongs to another peer")
        known = self._peers.get(peer_id)
        self._peers[peer_id] = KnownPeer(certificate, known.first_seen if known else now, now)
        return cert

    def _check(self, certificate: Signed[Certificate], now: float) -> Certificate:
        roster = self.guard.roster(now)
        return check_certificate(certificate, roster, now, skew=self.skew)

    def authorise(self, peer_id: str, now: float) -> Certificate:
        """The peer's certificate if it is valid right now; UnauthorisedError otherwise."""
        known = self._peers.get(peer_id)
        if known is None:
            raise UnauthorisedError("unknown peer: present a certificate first")
        try:
            cert = self._check(known.certificate, now)
        except (CertificateError, RosterError) as exc:
            self._peers.pop(peer_id, None)
            log.warning("peer %s (%s) no longer authorised: %s", peer_id, known.org, exc)
            raise UnauthorisedError("certificate not valid under the current roster") from None
        known.last_seen = now
        return cert

    def certificate_of(self, peer_id: str) -> Signed[Certificate] | None:
        known = self._peers.get(peer_id)
        return known.certificate if known else None

    def revalidate(self, now: float) -> list[str]:
        """Drop every peer whose certificate is no longer valid; return them (to disconnect)."""
        dropped = []
        for peer_id in list(self._peers):
            try:
                self.authorise(peer_id, now)
            except UnauthorisedError:
                dropped.append(peer_id)
        return dropped

    def peers(self) -> dict[str, KnownPeer]:
        return dict(self._peers)
