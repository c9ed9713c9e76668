"""The roster: which authority keys are valid and which certificates are revoked.

Versions only go up. A roster is accepted only when it is signed by a key
already trusted (a pinned anchor or an authority of the current roster),
is within its validity window (with clock-skew tolerance) and carries a
version higher than the highest ever accepted. Remembering that highest
version across restarts is the caller's job, through RosterVersionStore.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

from protocol import cbor
from protocol.cbor import CborKey, CborValue
from protocol.certificate import check_serial
from protocol.document import DEFAULT_SKEW, Document, Signed, open_document
from protocol.errors import (
    RosterError,
    RosterExpiredError,
    RosterNotYetValidError,
    RosterRollbackError,
    SchemaError,
    UnknownIssuerError,
)
from protocol.keys import PUBLIC_KEY_SIZE, PublicKey
from protocol.schema import Fields, bytes_item, text_item

ROSTER_LABEL = "dicom-mesh/roster/v1"
MAX_AUTHORITIES = 16
MAX_REVOKED = 200_000


def _serial_item(value: CborValue, what: str) -> str:
    return check_serial(text_item(32)(value, what), what)


@dataclass(frozen=True)
class Roster(Document):
    LABEL: ClassVar[str] = ROSTER_LABEL
    MAX_BYTES: ClassVar[int] = 8 * 1024 * 1024

    version: int
    issued_at: int
    expires_at: int
    authorities: tuple[PublicKey, ...]
    revoked: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.version < 1:
            raise SchemaError("roster version starts at 1")
        if self.expires_at <= self.issued_at:
            raise SchemaError("roster expires_at must be later than issued_at")
        if not 1 <= len(self.authorities) <= MAX_AUTHORITIES:
            raise SchemaError(f"roster needs 1..{MAX_AUTHORITIES} authority keys")
        if len(set(self.authorities)) != len(self.authorities):
            raise SchemaError("roster authority keys repeat")
        # The wire form is a sorted set: hold the same order so that equal
        # rosters compare equal and a decoded roster equals the one signed.
        object.__setattr__(self, "authorities", tuple(sorted(self.authorities, key=lambda k: k.raw)))

    def authority(self, key_id: str) -> PublicKey:
        for key in self.authorities:
            if key.peer_id == key_id:
                return key
        raise UnknownIssuerError(f"issuer {key_id} is not an authority in roster v{self.version}")

    def is_revoked(self, serial: str) -> bool:
        return serial in self.revoked

    def check_current(self, now: float, skew: int = DEFAULT_SKEW) -> None:
        if now + skew < self.issued_at:
            raise RosterNotYetValidError(f"roster v{self.version} is not valid before {self.issued_at}")
        if now - skew > self.expires_at:
            raise RosterExpiredError(f"roster v{self.version} expired at {self.expires_at}")

    def to_body(self) -> dict[CborKey, CborValue]:
        return {
            "version": self.version,
            "issued_at": self.issued_at,
            "expires_at": self.expires_at,
            "authorities": [k.raw for k in self.authorities],
            "revoked": list[CborValue](sorted(self.revoked)),
        }

    @classmethod
    def from_body(cls, body: CborValue) -> Roster:
        f = Fields(body, "roster")
        roster = cls(
            version=f.integer("version", 1),
            issued_at=f.time("issued_at"),
            expires_at=f.time("expires_at"),
            authorities=tuple(
                PublicKey(raw)
                for raw in f.array(
                    "authorities",
                    bytes_item(PUBLIC_KEY_SIZE),
                    max_items=MAX_AUTHORITIES,
                    min_items=1,
                    sorted_unique=True,
                )
            ),
            revoked=frozenset(f.array("revoked", _serial_item, max_items=MAX_REVOKED, sorted_unique=True)),
        )
        f.finish()
        return roster


class RosterVersionStore(Protocol):
    """Where the highest accepted roster version survives restarts."""

    def highest_roster_version(self) -> int: ...

    def record_roster_version(self, version: int) -> None: ...


class MemoryRosterVersionStore:
    """A RosterVersionStore that forgets on exit (tests, one-shot tools)."""

    def __init__(self, highest: int = 0) -> None:
        self._highest = highest

    def highest_roster_version(self) -> int:
        return self._highest

    def record_roster_version(self, version: int) -> None:
        self._highest = max(self._highest, version)


def verify_roster(
    data: bytes, trusted: Collection[PublicKey], now: float, skew: int = DEFAULT_SKEW
) -> Signed[Roster]:
    """Decode and verify a roster signed by one of the trusted keys, valid now."""
    signed = open_document(data, Roster)
    if signed.signer not in trusted:
        raise UnknownIssuerError(f"roster signed by {signed.signer.peer_id}, which is not a trusted authority")
    signed.document.check_current(now, skew)
    return signed


#: A chain longer than this is cut at its start: the cache then no longer verifies
#: and the node fetches the roster from the directory again (add the new key to
#: the pinned anchors long before that).
MAX_CHAIN = 32
_CHAIN_KEY = "roster-chain"
_CHAIN_PREFIX = cbor.encode({_CHAIN_KEY: []})[:-1]  # map(1), the key; then the array head


def _link_item(value: CborValue, what: str) -> bytes:
    if not isinstance(value, bytes) or not 0 < len(value) <= Roster.MAX_BYTES:
        raise SchemaError(f"{what}: expected a signed roster of at most {Roster.MAX_BYTES} bytes")
    return value


def encode_roster_chain(links: Sequence[bytes]) -> bytes:
    """The signed rosters of a rotation chain, oldest first, as one deterministic CBOR item."""
    return cbor.encode({_CHAIN_KEY: list[CborValue](links)})


def decode_roster_chain(data: bytes) -> tuple[bytes, ...]:
    """The links of an encoded chain; bytes of a single signed roster are a chain of one."""
    if not data.startswith(_CHAIN_PREFIX):
        return (data,)
    f = Fields(cbor.decode(data, max_depth=3, max_items=2 * MAX_CHAIN + 4), "roster chain")
    links = tuple(f.array(_CHAIN_KEY, _link_item, max_items=MAX_CHAIN, min_items=1))
    f.finish()
    return links


def verify_roster_chain(
    links: Sequence[bytes], anchors: Collection[PublicKey], now: float, skew: int = DEFAULT_SKEW
) -> tuple[Signed[Roster], ...]:
    """Verify a rotation chain exactly as the rosters were verified when they arrived one by one.

    The first link must be signed by a pinned anchor, each later one by an
    authority of the link before it with a higher version, and the last one
    must be valid now. Earlier links may have expired since: they only carry
    the trust forward.
    """
    if not 1 <= len(links) <= MAX_CHAIN:
        raise SchemaError(f"a roster chain has 1..{MAX_CHAIN} links")
    chain: list[Signed[Roster]] = []
    for n, raw in enumerate(links, start=1):
        signed = open_document(raw, Roster)
        if not chain:
            if signed.signer not in anchors:
                raise UnknownIssuerError(
                    f"roster chain link 1 (v{signed.document.version}) is signed by {signed.signer.peer_id},"
                    " which is not a configured trust anchor"
                )
        else:
            before = chain[-1].document
            if signed.signer not in before.authorities:
                raise UnknownIssuerError(
                    f"roster chain link {n} (v{signed.document.version}) is signed by {signed.signer.peer_id},"
                    f" which is not an authority of v{before.version} before it"
                )
            if signed.document.version <= before.version:
                raise RosterRollbackError(f"roster chain link {n} does not have a higher version than link {n - 1}")
        chain.append(signed)
    chain[-1].document.check_current(now, skew)
    return tuple(chain)


def _extend_chain(
    chain: tuple[Signed[Roster], ...], signed: Signed[Roster], anchors: Collection[PublicKey]
) -> tuple[Signed[Roster], ...]:
    """The shortest chain from an anchor-signed roster to `signed`, through the links of `chain`."""
    if signed.signer in anchors or not chain:
        return (signed,)
    links = [*chain, signed]
    path = [len(links) - 1]
    while path[-1] > 0 and links[path[-1]].signer not in anchors:
        signer = links[path[-1]].signer
        # the earliest link that lists the signer: it exists, the link just before did
        path.append(next(i for i in range(path[-1]) if signer in links[i].document.authorities))
    return tuple(links[i] for i in reversed(path))[-MAX_CHAIN:]


class RosterGuard:
    """Holds the current roster and accepts only newer, valid, trusted ones."""

    def __init__(
        self,
        anchors: Collection[PublicKey],
        store: RosterVersionStore,
        *,
        skew: int = DEFAULT_SKEW,
    ) -> None:
        if not anchors:
            raise SchemaError("at least one trusted authority key is needed")
        self.anchors = frozenset(anchors)
        self.store = store
        self.skew = skew
        self.current: Signed[Roster] | None = None
        self.links: tuple[Signed[Roster], ...] = ()  # from an anchor-signed roster to current

    @property
    def trusted_keys(self) -> frozenset[PublicKey]:
        """Who may sign the next roster: the current roster's authorities.

        The pinned anchors are only the bootstrap: once a roster is current,
        a key that rotation removed can no longer sign rosters.
        """
        if self.current is not None:
            return frozenset(self.current.document.authorities)
        return self.anchors

    def accept(self, data: bytes, now: float) -> Signed[Roster]:
        """Verify and adopt a roster; raises without changing anything if it is refused.

        Its version must be higher than the highest accepted, or equal to it while no
        roster is current (after a restart without a usable cache).
        """
        signed = verify_roster(data, self.trusted_keys, now, self.skew)
        highest = self.store.highest_roster_version()
        version = signed.document.version
        # With nothing current (a restart whose cache was lost or refused), the roster accepted
        # last may be adopted again from the wire: it is verified against the anchors, not rolled back.
        if version < highest or (version == highest and self.current is not None):
            raise RosterRollbackError(
                f"roster v{signed.document.version} is not newer than v{highest} already accepted"
            )
        self.store.record_roster_version(signed.document.version)
        self.current = signed
        self.links = _extend_chain(self.links, signed, self.anchors)
        return signed

    def restore(self, cached: bytes, now: float) -> Signed[Roster]:
        """Re-adopt the roster that was last accepted, from local state written by cache_bytes().

        Local state is verified like the wire: the chain must start with a roster
        signed by a pinned anchor, every later link be signed by an authority of
        the link before it, and the last be current. Its version must equal the
        highest accepted one: an older cached roster is refused like a rollback,
        a newer one was never accepted here. A refusal changes nothing.
        """
        links = decode_roster_chain(cached)
        chain = verify_roster_chain(links, self.anchors, now, self.skew)
        signed = chain[-1]
        version = signed.document.version
        highest = self.store.highest_roster_version()
        if version < highest:
            raise RosterRollbackError(f"cached roster v{version} is older than v{highest} already accepted")
        if highest and version > highest:
            raise RosterError(
                f"cached roster v{version} is newer than v{highest}, the highest this node ever accepted:"
                " it was never accepted here"
            )
        self.store.record_roster_version(version)
        self.current = signed
        self.links = chain
        return signed

    @property
    def chain(self) -> tuple[bytes, ...]:
        """The signed rosters from one signed by a pinned anchor to the current one."""
        return tuple(link.encode() for link in self.links)

    def cache_bytes(self) -> bytes:
        """What to keep in local state so that restore() can verify the current roster again."""
        return encode_roster_chain(self.chain)

    def roster(self, now: float) -> Roster:
        """The current roster, refusing to use it once it has expired (fail closed)."""
        if self.current is None:
            raise RosterExpiredError("no roster has been accepted yet")
        self.current.document.check_current(now, self.skew)
        return self.current.document
