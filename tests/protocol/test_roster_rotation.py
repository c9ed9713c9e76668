"""Key rotation: a key the roster dropped can no longer sign rosters; a restart keeps the rotation."""

from __future__ import annotations

from protocol.errors import UnknownIssuerError
from protocol.roster import MemoryRosterVersionStore, RosterGuard
from tests.protocol import factories as f
from tests.protocol.assertions import raises_exactly

NOW = f.NOW


def test_dropped_anchor_cannot_sign_after_rotation() -> None:
    store = MemoryRosterVersionStore()
    guard = RosterGuard([f.AUTHORITY.public_key], store)
    guard.accept(f.sign_roster(1).encode(), NOW)
    both = (f.AUTHORITY.public_key, f.AUTHORITY_NEW.public_key)
    guard.accept(f.sign_roster(2, authorities=both).encode(), NOW)
    rotated = f.sign_roster(3, authorities=(f.AUTHORITY_NEW.public_key,), signer=f.AUTHORITY_NEW).encode()
    guard.accept(rotated, NOW)
    with raises_exactly(UnknownIssuerError):
        guard.accept(f.sign_roster(4, signer=f.AUTHORITY).encode(), NOW)
    assert guard.current is not None and guard.current.document.version == 3 and store.highest_roster_version() == 3

    # a restart from the cached chain (v3 is signed by the new key, which is not a pinned anchor; the
    # anchor-signed v2 that introduced it comes with it) still works; v3 alone does not verify
    restarted = RosterGuard([f.AUTHORITY.public_key], store)
    with raises_exactly(UnknownIssuerError):
        restarted.restore(rotated, NOW)
    assert restarted.restore(guard.cache_bytes(), NOW).document.version == 3
    with raises_exactly(UnknownIssuerError):
        restarted.accept(f.sign_roster(4, signer=f.AUTHORITY).encode(), NOW)
    assert restarted.accept(
        f.sign_roster(4, authorities=(f.AUTHORITY_NEW.public_key,), signer=f.AUTHORITY_NEW).encode(), NOW
    ).document.version == 4
