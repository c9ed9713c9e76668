"""The directory's request logic, independent of the transport.

The directory holds identity only: certificates, signed address records and
the roster. It checks what it is given (so it does not fill up with junk),
but nothing depends on it for integrity: clients verify every byte again.
"""

from __future__ import annotations

import logging
from collections.abc import Collection

from protocol.address_record import AddressRecord
from protocol.certificate import Certificate
from protocol.directory_messages import (
    MAX_ENTRIES,
    Accepted,
    Entries,
    Entry,
    GetIdentity,
    GetRoster,
    IdentityReply,
    ListOrgs,
    LookupOrg,
    LookupPeer,
    PublishRoster,
    Register,
    Request,
    Response,
    RosterReply,
    RosterUnchanged,
    WatchRoster,
)
from protocol.document import DEFAULT_SKEW, open_document
from protocol.errors import (
    MeshError,
    RevisionRollbackError,
    RosterError,
    StorageError,
    UnauthorisedError,
    UnavailableError,
)
from protocol.keys import PublicKey
from protocol.roster import Roster, RosterGuard
from protocol.trust import check_certificate
from tools.directory.store import DirectoryStore, StoredCertificate

log = logging.getLogger(__name__)


class DirectoryService:
    def __init__(
        self,
        store: DirectoryStore,
        anchors: Collection[PublicKey],
        identity_certificate: bytes,
        now: float,
        *,
        skew: int = DEFAULT_SKEW,
    ) -> None:
        self.store = store
        self.skew = skew
        self.guard = RosterGuard(anchors, store, skew=skew)
        self.identity_certificate = identity_certificate
        stored = store.roster_chain()
        if stored is not None:
            try:
                self.guard.restore(stored, now)
            except RosterError as exc:
                log.warning("stored roster not usable (%s); waiting for a new one", exc)

    def handle(self, remote_peer: str, request: Request, now: float) -> Response:
        """Answer one request. Raises MeshError subclasses for refusals."""
        if isinstance(request, LookupOrg):
            return self._entries(self.store.certificates_of_org(request.org, int(now), MAX_ENTRIES))
        if isinstance(request, ListOrgs):  # certificates only: a type-ahead needs names, not addresses
            current = self.guard.current
            revoked = current.document.revoked if current is not None else frozenset()
            certs = self.store.certificates_by_org(request.after, int(now), MAX_ENTRIES, revoked)
            return Entries(tuple(Entry(c.raw, None) for c in certs))
        if isinstance(request, LookupPeer):
            return self._entries(self.store.certificates_of_peer(request.peer_id, int(now), MAX_ENTRIES))
        if isinstance(request, GetRoster):
            return RosterReply(self.store.roster())
        if isinstance(request, GetIdentity):
            return IdentityReply(self.identity_certificate)
        if isinstance(request, WatchRoster):
            # The waiting is the driver's (it holds the stream until roster_version() moves);
            # here the answer: the roster if it is newer than the watcher's, else "unchanged".
            version = self.roster_version()
            return RosterReply(self.store.roster()) if version > request.after else RosterUnchanged(version)
        if isinstance(request, Register):
            return self._register(remote_peer, request, now)
        return self._publish_roster(request, now)

    def roster_version(self) -> int:
        """The version of the roster served now (0: none yet); cheap, read without the worker thread."""
        current = self.guard.current
        return current.document.version if current is not None else 0

    def _roster(self, now: float) -> Roster:
        try:
            return self.guard.roster(now)
        except RosterError as exc:
            raise UnavailableError(f"the directory has no current roster ({exc})") from None

    def _entries(self, certs: list[StoredCertificate]) -> Entries:
        """Revoked certificates are served too: clients judge them against the
        roster themselves and can then say *why* a node is refused."""
        entries = []
        for stored in certs:
            record = self.store.record(stored.peer_id)
            entries.append(Entry(stored.raw, record.raw if record else None))
        return Entries(tuple(entries))

    def _register(self, remote_peer: str, request: Register, now: float) -> Accepted:
        roster = self._roster(now)
        signed_cert = open_document(request.certificate, Certificate)
        cert = check_certificate(signed_cert, roster, now, skew=self.skew)
        signed_record = open_document(request.record, AddressRecord)
        record = signed_record.document
        record.check_live(now, self.skew)
        if not (record.peer_id == cert.peer_id == remote_peer):
            raise UnauthorisedError("a node may register only its own certificate and address")
        previous = self.store.record(record.peer_id)
        if previous is not None:
            if record.seq < previous.seq or (record.seq == previous.seq and request.record != previous.raw):
                raise RevisionRollbackError(
                    f"address record seq {record.seq} is not newer than {previous.seq}"
                )
        self.store.save_registration(
            cert.serial, cert.peer_id, cert.org_code, cert.not_after, request.certificate,
            record.seq, record.expires_at, request.record,
        )
        log.info("registered %s for org %s (seq %d)", cert.peer_id, cert.org_code, record.seq)
        return Accepted()

    def _publish_roster(self, request: PublishRoster, now: float) -> Accepted:
        previous = self.guard.current, self.guard.links
        signed = self.guard.accept(request.roster, now)
        try:
            self.store.save_roster(signed.document.version, request.roster, self.guard.cache_bytes())
        except StorageError:
            self.guard.current, self.guard.links = previous
            raise
        log.info(
            "accepted roster v%d (%d revoked serials)", signed.document.version, len(signed.document.revoked)
        )
        return Accepted()


def refusal_log_level(exc: MeshError) -> int:
    return logging.WARNING if isinstance(exc, (UnauthorisedError, RosterError)) else logging.INFO
