"""FetchSettings (the node's fetch settings, stated once) and FetchSchedulers (one scheduler per sender org)."""

from __future__ import annotations

import dataclasses

import pytest

from protocol.cid import CID
from protocol.errors import LocalProtocolError
from protocol.fetch import BlockWanted, FetchScheduler, ManifestCompleted
from protocol.fetch_schedulers import FetchSchedulers
from protocol.fetch_settings import FetchSettings
from protocol.manifest import Priority

BLOCK = CID.of(b"a block both senders list")
M_RGT, M_RJ1 = CID.of(b"RGT's manifest"), CID.of(b"RJ1's manifest")


def test_the_node_settings() -> None:
    s = FetchSettings()
    assert (s.window_min, s.window_initial, s.window_max) == (2, 32, 64)
    assert (s.request_max_blocks, s.min_request_blocks) == (32, 32)
    assert (s.max_strikes, s.request_timeout, s.queue_target, s.discovery_interval) == (1, 30.0, 0.25, 0.5)
    assert s.relayed_window_max == 8  # a holder reached through a relay: a quarter of the first window
    assert FetchScheduler().settings == s  # a scheduler with no settings runs the node's
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.window_max = 1  # type: ignore[misc]


@pytest.mark.parametrize("bad", [
    {"window_min": 0}, {"window_min": 40}, {"window_initial": 65}, {"request_max_blocks": 0},
    {"request_max_blocks": 65}, {"min_request_blocks": 33}, {"min_request_blocks": 0}, {"max_strikes": 0},
    {"request_timeout": 0.0}, {"request_timeout": float("nan")}, {"queue_target": -1.0},
    {"discovery_interval": 0.0}, {"discovery_interval": float("nan")}, {"relayed_window_max": 0},
])
def test_impossible_settings_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(LocalProtocolError):
        FetchSettings(**bad)  # type: ignore[arg-type]


def test_one_scheduler_per_sender_org() -> None:
    """A block done under RGT's manifest does not count for RJ1's: RJ1's scheduler still asks for it (the
    node never tells a sender, by not asking, what it holds from someone else)."""
    pool = FetchSchedulers(FetchSettings(window_initial=4, min_request_blocks=1))
    rgt, rj1 = pool.for_sender("RGT"), pool.for_sender("RJ1")
    assert rgt is not rj1 and pool.for_sender("RGT") is rgt and pool.get("RAJ") is None and len(pool) == 2
    assert rgt.settings == pool.settings == rj1.settings
    rgt.add_manifest(M_RGT, [BlockWanted(BLOCK, 10)], Priority.ROUTINE, have=(), now=0)
    rj1.add_manifest(M_RJ1, [BlockWanted(BLOCK, 10)], Priority.ROUTINE, have=(), now=0)
    rgt.peer_available("P", M_RGT, [BLOCK])
    rj1.peer_available("P", M_RJ1, [BLOCK])
    [request] = rgt.next_requests(0)
    rgt.block_received("P", BLOCK, True, 1)
    assert rgt.events() == [ManifestCompleted(M_RGT)]
    assert rj1.events() == [] and [r.cids for r in rj1.next_requests(1)] == [(BLOCK,)]
    pool.peer_lost("P", 2)  # every scheduler forgets the peer
    assert all(s.window("P") is None for s in pool) and [o for o, _ in pool.items()] == ["RGT", "RJ1"]
