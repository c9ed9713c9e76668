"""The roster: which authority keys are valid and which certificates are revoked.

Versions only go up. A roster is accepted only when it is signed by a key
already trusted (a pinned anchor or an authority of the current roster),
is within its validity window (with clock-skew tolerance) and carries a
version higher than the highest ever accepted. Remembering that highest
version across restarts is the caller's job, through RosterVersionStore.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

from protocol.cbor import CborKey, CborValue
from protocol.certificate import check_serial
from protocol.document import DEFAULT_SKEW, Document, Signed, open_document
from protocol.errors import (
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

    @property
    def authority_ids(self) -> frozenset[str]:
        return frozenset(k.peer_id for k in self.authorities)

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
        """Verify and adopt a roster; raises without changing anything if it is refused."""
        signed = verify_roster(data, self.trusted_keys, now, self.skew)
        highest = self.store.highest_roster_version()
        if signed.document.version <= highest:
            raise RosterRollbackError(
                f"roster v{signed.document.version} is not newer than v{highest} already accepted"
            )
        self.store.record_roster_version(signed.document.version)
        self.current = signed
        return signed

    def restore(self, data: bytes, now: float) -> Signed[Roster]:
        """Re-adopt the roster that was last accepted (e.g. from a cache at start-up).

        Its version must equal the highest accepted one: an older cached roster
        is refused exactly like a rollback.
        """
        # The cached copy was verified before it was written to local state; after a
        # rotation its signer may no longer be an anchor but is one of its own authorities.
        claimed = open_document(data, Roster).document.authorities
        signed = verify_roster(data, self.anchors | frozenset(claimed), now, self.skew)
        highest = self.store.highest_roster_version()
        if signed.document.version < highest:
            raise RosterRollbackError(
                f"cached roster v{signed.document.version} is older than v{highest} already accepted"
            )
        self.store.record_roster_version(signed.document.version)
        self.current = signed
        return signed

    def roster(self, now: float) -> Roster:
        """The current roster, refusing to use it once it has expired (fail closed)."""
        if self.current is None:
            raise RosterExpiredError("no roster has been accepted yet")
        self.current.document.check_current(now, self.skew)
        return self.current.document
