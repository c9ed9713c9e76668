"""A cached roster is verified like one from the wire: against the pinned anchors and the rotation chain from them.

The cache is local state an attacker with write access to the node's home can
replace. Nothing in it may vouch for itself: a roster signed by a key that only
the roster itself lists as an authority is forged, however well-formed.
"""

from __future__ import annotations

import pytest

from protocol.errors import MeshError, RosterError, RosterRollbackError, UnknownIssuerError
from protocol.roster import MemoryRosterVersionStore, RosterGuard, encode_roster_chain
from protocol.trust import check_certificate
from tests.protocol import factories as f
from tests.protocol.assertions import raises_exactly

NOW = f.NOW
ROGUE_AND_REAL = (f.AUTHORITY.public_key, f.ROGUE.public_key)


def forged(version: int) -> bytes:
    """What an attacker writes: a roster listing their own key, signed by it."""
    return f.sign_roster(version, authorities=ROGUE_AND_REAL, signer=f.ROGUE).encode()


def test_self_vouching_cached_roster_is_refused_and_changes_nothing() -> None:
    store = MemoryRosterVersionStore()
    guard = RosterGuard([f.AUTHORITY.public_key], store)
    guard.accept(f.sign_roster(3).encode(), NOW)
    restarted = RosterGuard([f.AUTHORITY.public_key], store)
    for cached in (forged(3), forged(1000), encode_roster_chain([forged(1000)])):
        with raises_exactly(UnknownIssuerError, match="trust anchor"):
            restarted.restore(cached, NOW)
        assert restarted.current is None
        assert store.highest_roster_version() == 3  # the rollback counter did not move
    # the genuine next roster is still accepted from the wire
    assert restarted.accept(f.sign_roster(4).encode(), NOW).document.version == 4


def test_forged_cache_cannot_make_a_rogue_certificate_pass() -> None:
    guard = RosterGuard([f.AUTHORITY.public_key], MemoryRosterVersionStore())
    rogue_cert = f.sign_certificate(f.NODE_C, issuer=f.ROGUE)
    try:
        guard.restore(forged(1), NOW)
    except UnknownIssuerError:
        pass
    assert guard.current is None  # nothing to check a certificate against: fail closed
    genuine = guard.accept(f.sign_roster(1).encode(), NOW).document
    with raises_exactly(UnknownIssuerError):
        check_certificate(rogue_cert, genuine, NOW)


def test_forged_link_inside_a_chain_is_refused() -> None:
    """A chain that starts at the anchor but whose next link is signed by a key the previous one never listed."""
    first = f.sign_roster(1).encode()
    with raises_exactly(UnknownIssuerError, match="link 2"):
        RosterGuard([f.AUTHORITY.public_key], MemoryRosterVersionStore()).restore(
            encode_roster_chain([first, forged(2)]), NOW)


def test_cached_roster_newer_than_any_accepted_is_refused() -> None:
    """Even a genuinely signed roster this node never accepted cannot enter through the cache."""
    store = MemoryRosterVersionStore(2)
    guard = RosterGuard([f.AUTHORITY.public_key], store)
    with raises_exactly(RosterError, match="never accepted"):
        guard.restore(f.sign_roster(5).encode(), NOW)
    assert store.highest_roster_version() == 2 and guard.current is None
    with raises_exactly(RosterRollbackError):
        guard.restore(f.sign_roster(1).encode(), NOW)


def test_rotation_chain_survives_a_restart_and_stays_short() -> None:
    store = MemoryRosterVersionStore()
    guard = RosterGuard([f.AUTHORITY.public_key], store)
    both = (f.AUTHORITY.public_key, f.AUTHORITY_NEW.public_key)
    guard.accept(f.sign_roster(1).encode(), NOW)
    guard.accept(f.sign_roster(2, authorities=both).encode(), NOW)
    new_only = (f.AUTHORITY_NEW.public_key,)
    for v in range(3, 8):
        guard.accept(f.sign_roster(v, authorities=new_only, signer=f.AUTHORITY_NEW).encode(), NOW)
    assert len(guard.chain) == 2  # the anchor-signed v2 that introduced the new key, then the current v7
    restarted = RosterGuard([f.AUTHORITY.public_key], store)
    assert restarted.restore(guard.cache_bytes(), NOW).document.version == 7
    assert restarted.chain == guard.chain
    # the current roster alone does not verify: its signer is not a pinned anchor
    with raises_exactly(UnknownIssuerError):
        RosterGuard([f.AUTHORITY.public_key], store).restore(guard.chain[-1], NOW)
    # an anchor-signed roster restarts the chain
    back = f.sign_roster(8, authorities=both, signer=f.AUTHORITY_NEW).encode()
    restarted.accept(back, NOW)
    restarted.accept(f.sign_roster(9).encode(), NOW)
    assert len(restarted.chain) == 1


@pytest.mark.parametrize("cached", [
    b"", b"\xa1", encode_roster_chain([b"x"])[:-3], encode_roster_chain([]), b"\xa1lroster-chain\x81\x01",
    encode_roster_chain([f.sign_roster(1).encode()] * 40),
])
def test_corrupt_cache_is_a_clear_error_and_changes_nothing(cached: bytes) -> None:
    store = MemoryRosterVersionStore(1)
    guard = RosterGuard([f.AUTHORITY.public_key], store)
    with pytest.raises(MeshError):
        guard.restore(cached, NOW)
    assert guard.current is None and store.highest_roster_version() == 1


def test_genuine_roster_is_adopted_from_the_wire_after_a_forged_cache() -> None:
    store = MemoryRosterVersionStore()
    RosterGuard([f.AUTHORITY.public_key], store).accept(f.sign_roster(3).encode(), NOW)
    restarted = RosterGuard([f.AUTHORITY.public_key], store)
    with raises_exactly(UnknownIssuerError):
        restarted.restore(forged(9), NOW)
    assert restarted.accept(f.sign_roster(3).encode(), NOW).document.version == 3
