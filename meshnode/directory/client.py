"""Client of the directory: resolve organisations to verified peers, keep the roster fresh.

The directory is not trusted for integrity. Every certificate is checked
against the roster, every address record against the certificate's key,
every roster against the trusted authority keys and the highest version
ever accepted. A lying directory can only deny service; replays of older
rosters or address records are refused and the cached newer ones kept.

While the directory is unreachable the client answers from its cache, still
verifying everything, until the cached roster expires; then it fails closed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from common.directory_transport import DirectoryTransport, call_directory, publish_roster
from meshnode.directory.cache import DirectoryCache
from protocol.address_record import AddressRecord
from protocol.certificate import Certificate
from protocol.directory_messages import (
    MAX_ENTRIES,
    Accepted,
    Entries,
    Entry,
    GetRoster,
    ListOrgs,
    LookupOrg,
    LookupPeer,
    Register,
    Request,
    Response,
    RosterReply,
    RosterUnchanged,
    WatchRoster,
)
from protocol.document import DEFAULT_SKEW, Signed, open_document
from protocol.errors import (
    DocumentError,
    MeshError,
    NotFoundError,
    RemoteProtocolError,
    RosterError,
    RosterExpiredError,
    RosterRollbackError,
    UnavailableError,
)
from protocol.keys import SigningKey
from protocol.roster import Roster, RosterGuard
from protocol.trust import check_certificate

log = logging.getLogger(__name__)

#: at most this many pages of ListOrgs (MAX_ENTRIES organisations each) in one listing
MAX_ORG_PAGES = 64


@dataclass(frozen=True)
class DirectoryOrg:
    """An organisation as its verified certificate names it."""

    code: str
    name: str


@dataclass(frozen=True)
class ResolvedPeer:
    certificate: Signed[Certificate]
    record: Signed[AddressRecord] | None

    @property
    def peer_id(self) -> str:
        return self.certificate.document.peer_id

    @property
    def org_code(self) -> str:
        return self.certificate.document.org_code

    @property
    def addrs(self) -> tuple[str, ...]:
        return self.record.document.addrs if self.record else ()


@dataclass(frozen=True)
class Rejection:
    peer_id: str
    reason: str
    error: MeshError


@dataclass(frozen=True)
class Resolution:
    query: str
    peers: tuple[ResolvedPeer, ...]
    rejected: tuple[Rejection, ...]
    from_cache: bool
    roster_version: int

    def require(self) -> tuple[ResolvedPeer, ...]:
        """The verified peers, or an error explaining why there are none."""
        if self.peers:
            return self.peers
        if self.rejected:
            first = self.rejected[0].error
            raise type(first)(f"no valid node for {self.query}: " + "; ".join(r.reason for r in self.rejected))
        raise NotFoundError(f"the directory knows no node for {self.query}")


class DirectoryClient:
    def __init__(
        self,
        transport: DirectoryTransport,
        guard: RosterGuard,
        cache: DirectoryCache,
        *,
        directory_peer_id: str | None = None,
        skew: int = DEFAULT_SKEW,
        clock: Callable[[], float] = time.time,
        watch_transport: DirectoryTransport | None = None,
    ) -> None:
        self._transport = transport
        # a roster watch is held open up to WATCH_WAIT seconds: its transport allows that long
        self._watch_transport = watch_transport or transport
        self.guard = guard
        self.cache = cache
        self.directory_peer_id = directory_peer_id
        self.skew = skew
        self.clock = clock
        self.last_roster_from_cache = False
        #: Why the cached roster was refused at start (None: used, or none cached), for the node to audit.
        self.cache_refused: MeshError | None = None
        cached = cache.roster()
        if cached is not None:
            try:
                guard.restore(cached, clock())
            except MeshError as exc:
                # Local state is verified like the wire (anchors, rotation chain, highest version);
                # a refused cache changes nothing and the roster is fetched from the directory.
                log.warning("cached roster refused, fetching it from the directory: %s: %s", exc.name, exc)
                self.cache_refused = exc

    async def _call(self, request: Request) -> Response:
        return await call_directory(self._transport, request)

    # -- roster ------------------------------------------------------------

    async def refresh_roster(self) -> Roster:
        """Fetch the directory's roster and adopt it if it is newer and valid.

        When the directory cannot be reached, the current (cached) roster is
        used until it expires; after that this fails closed.
        """
        now = self.clock()
        try:
            response = await self._call(GetRoster())
        except (UnavailableError, RemoteProtocolError) as exc:
            self.last_roster_from_cache = True
            log.warning("directory unreachable for roster refresh: %s", exc)
            try:
                return self.guard.roster(now)
            except RosterError as roster_exc:
                raise RosterExpiredError(
                    f"the directory is unreachable ({exc}) and no unexpired roster is cached ({roster_exc})"
                ) from None
        if not isinstance(response, RosterReply):
            raise RemoteProtocolError("directory answered a roster request with something else")
        self.last_roster_from_cache = False
        return self._adopt(response, now)

    async def watch_roster(self) -> Roster | None:
        """Wait (up to WATCH_WAIT seconds) for the directory to publish a roster newer than ours.

        Returns the new roster once verified and adopted like any other, or None
        when the watch ended without news. Raises like refresh_roster, and with
        the directory's refusal if it does not know watches (an older directory).
        """
        current = self.guard.current
        after = current.document.version if current is not None else 0
        response = await call_directory(self._watch_transport, WatchRoster(after))
        if isinstance(response, RosterUnchanged):
            return None
        if not isinstance(response, RosterReply):
            raise RemoteProtocolError("directory answered a roster watch with something else")
        self.last_roster_from_cache = False
        before = self.guard.current
        roster = self._adopt(response, self.clock())
        return None if before is self.guard.current else roster

    def _adopt(self, response: RosterReply, now: float) -> Roster:
        if response.roster is None:
            raise UnavailableError("the directory has no roster yet")
        current = self.guard.current
        if current is not None and response.roster == current.encode():
            return self.guard.roster(now)
        try:
            signed = self.guard.accept(response.roster, now)
        except RosterRollbackError as exc:
            log.warning("directory served an old roster (replay refused): %s", exc)
            raise
        self.cache.save_roster(self.guard.cache_bytes())
        log.info("accepted roster v%d", signed.document.version)
        return signed.document

    # -- lookups -------------------------------------------------------------

    async def resolve_org(self, org: str) -> Resolution:
        """Verified nodes of an organisation, from the directory or (if down) the cache."""
        return await self._resolve("org", org, LookupOrg(org), expected_org=org)

    async def list_orgs(self) -> list[DirectoryOrg]:
        """Every organisation the directory lists (code order), each named by the first of its certificates
        that verifies against the roster now (the directory may list several per org: a code may repeat); one
        with none that verifies is left out. The directory may leave organisations out
        (it can deny service) but cannot invent or rename one."""
        roster = await self.refresh_roster()
        now = self.clock()
        out: list[DirectoryOrg] = []
        listed: set[str] = set()
        after = ""
        for _ in range(MAX_ORG_PAGES):
            response = await self._call(ListOrgs(after))
            if not isinstance(response, Entries):
                raise RemoteProtocolError("directory answered an organisation listing with something else")
            for entry in response.entries:
                signed = open_document(entry.certificate, Certificate)
                code = signed.document.org_code
                if code < after:
                    raise RemoteProtocolError("directory listed organisations out of order")
                after = code
                if code in listed:  # another certificate of an org already listed (one of several nodes)
                    continue
                try:
                    cert = check_certificate(signed, roster, now, skew=self.skew)
                except MeshError as exc:
                    log.warning("directory listed organisation %s with a certificate refused: %s", code, exc)
                    continue
                out.append(DirectoryOrg(cert.org_code, cert.org_name))
                listed.add(code)
            if len(response.entries) < MAX_ENTRIES:
                break
        return out

    async def resolve_peer(self, peer_id: str) -> Resolution:
        return await self._resolve("peer", peer_id, LookupPeer(peer_id), expected_peer=peer_id)

    async def _resolve(
        self, kind: str, key: str, request: Request, *, expected_org: str | None = None,
        expected_peer: str | None = None,
    ) -> Resolution:
        roster = await self.refresh_roster()
        now = self.clock()
        cached = self.cache.entries(kind, key)
        from_cache = False
        try:
            response = await self._call(request)
            if not isinstance(response, Entries):
                raise RemoteProtocolError("directory answered a lookup with something else")
            entries = response.entries
        except (UnavailableError, RemoteProtocolError) as exc:
            if cached is None:
                raise UnavailableError(f"directory unreachable and nothing cached for {key}: {exc}") from None
            log.warning("directory unreachable, resolving %s from cache: %s", key, exc)
            entries, from_cache = cached.entries, True
        previous = {e.certificate: e.record for e in cached.entries} if cached else {}
        peers, rejected, keep = self._verify(entries, previous, roster, now, expected_org, expected_peer)
        if not from_cache:
            self.cache.save_entries(kind, key, keep, int(now))
        return Resolution(
            query=f"{kind} {key}", peers=peers, rejected=rejected, from_cache=from_cache,
            roster_version=roster.version,
        )

    def _verify(
        self,
        entries: tuple[Entry, ...],
        previous: dict[bytes, bytes | None],
        roster: Roster,
        now: float,
        expected_org: str | None,
        expected_peer: str | None,
    ) -> tuple[tuple[ResolvedPeer, ...], tuple[Rejection, ...], tuple[Entry, ...]]:
        peers: list[ResolvedPeer] = []
        rejected: list[Rejection] = []
        keep: list[Entry] = []
        previous_seq: dict[str, tuple[int, bytes]] = {}
        for cert_raw, record_raw in previous.items():
            if record_raw is None:
                continue
            try:
                old = open_document(record_raw, AddressRecord).document
                previous_seq[old.peer_id] = (old.seq, record_raw)
            except MeshError:
                continue
        for entry in entries:
            peer_id = "?"
            try:
                signed_cert = open_document(entry.certificate, Certificate)
                peer_id = signed_cert.document.peer_id
                cert = check_certificate(signed_cert, roster, now, skew=self.skew)
                if expected_org is not None and cert.org_code != expected_org:
                    raise DocumentError(f"directory returned a node of org {cert.org_code} for {expected_org}")
                if expected_peer is not None and cert.peer_id != expected_peer:
                    raise DocumentError("directory returned a certificate for another peer")
                record_raw = entry.record
                known = previous_seq.get(cert.peer_id)
                record = self._verify_record(record_raw, cert, now) if record_raw else None
                if known is not None and (record is None or record.document.seq < known[0]):
                    log.warning("directory served an older address record for %s; keeping seq %d", peer_id, known[0])
                    record_raw = known[1]
                    record = self._verify_record(record_raw, cert, now)
                peers.append(ResolvedPeer(signed_cert, record))
                keep.append(Entry(entry.certificate, record_raw))
            except MeshError as exc:
                log.warning("rejected directory entry for %s: %s", peer_id, exc)
                rejected.append(Rejection(peer_id, f"{peer_id}: {exc}", exc))
                # Cached as received: re-verified (and refused again) on every read.
                keep.append(entry)
        return tuple(peers), tuple(rejected), tuple(keep)

    def _verify_record(self, raw: bytes, cert: Certificate, now: float) -> Signed[AddressRecord]:
        signed = open_document(raw, AddressRecord)
        if signed.document.peer_id != cert.peer_id:
            raise DocumentError("address record belongs to another peer")
        signed.document.check_live(now, self.skew)
        return signed

    # -- writes ----------------------------------------------------------------

    async def register(
        self, certificate: bytes, key: SigningKey, addrs: tuple[str, ...], ttl: int
    ) -> Signed[AddressRecord]:
        """Publish this node's signed address record (seq = milliseconds, so it only grows)."""
        now = self.clock()
        record = AddressRecord(
            peer_id=key.peer_id, addrs=addrs, seq=int(now * 1000), expires_at=int(now) + ttl
        ).sign(key)
        response = await self._call(Register(certificate, record.encode()))
        if not isinstance(response, Accepted):
            raise RemoteProtocolError("directory answered a registration with something else")
        return record

    async def publish_roster(self, roster: bytes) -> None:
        await publish_roster(self._transport, roster)
