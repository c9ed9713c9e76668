"""Sessions (reaching peers) under many studies at once: one directory lookup per org however many callers
ask together, and no directory lookup at all for a holder this node is connected to and has verified.

The node is tests/adversary/test_limits.py's target (a real libp2p host and Wire); its directory client is
the real DirectoryClient over a transport that counts the requests and answers as a directory that is down.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import trio

from common.p2p.dial import connect
from meshnode.directory.cache import DirectoryCache
from meshnode.directory.client import DirectoryClient
from meshnode.node.sessions import Sessions
from protocol.errors import MeshError, UnavailableError
from protocol.exchange_messages import Hello
from tests.adversary.test_limits import (
    ORG_B,
    TIMEOUT,
    _cert,
    hello,
    peer_host,
    target_node,
)


class CountingDownDirectory:
    def __init__(self) -> None:
        self.requests = 0

    async def __call__(self, *_: object) -> bytes:
        self.requests += 1
        await trio.sleep(0.05)  # a slow answer: every concurrent caller arrives while the first waits
        raise UnavailableError("directory down (test)")


async def test_concurrent_lookups_of_one_org_share_one_directory_request(tmp_path: Path) -> None:
    async with target_node(tmp_path) as target:
        transport = CountingDownDirectory()
        target.ctx.directory = DirectoryClient(transport, target.ctx.directory.guard, DirectoryCache(tmp_path / "c2"),
                                               clock=target.ctx.clock)
        sessions = Sessions(target.ctx, target.wire)
        failures: list[UnavailableError] = []

        async def one() -> None:
            try:
                await sessions.org_peers("RXX")
            except UnavailableError as exc:
                failures.append(exc)

        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(one)
        assert len(failures) == 50  # every caller hears the outcome
        assert transport.requests == 2  # one roster refresh and one lookup, not 50 of each
        with pytest.raises(UnavailableError):  # the next caller asks again (a failure is not cached)
            await sessions.org_peers("RXX")
        assert transport.requests == 4


async def test_a_connected_verified_holder_costs_no_directory_lookup(tmp_path: Path) -> None:
    async with target_node(tmp_path) as target, peer_host(ORG_B) as b:
        transport = CountingDownDirectory()
        target.ctx.directory = DirectoryClient(transport, target.ctx.directory.guard, DirectoryCache(tmp_path / "c2"),
                                               clock=target.ctx.clock)
        sessions = Sessions(target.ctx, target.wire)
        with pytest.raises(UnavailableError):  # not connected: resolved through the (down) directory
            await sessions.ensure_peer_id(ORG_B.peer_id)
        asked = transport.requests
        peer = await connect(b, target.addr, timeout=TIMEOUT)
        assert isinstance(await hello(b, peer, _cert(ORG_B, "RXX", 20).encode()), Hello)
        cert = await sessions.ensure_peer_id(ORG_B.peer_id)
        assert cert.org_code == "RXX" and transport.requests == asked


class StallingDirectory:
    """A directory whose first request stalls for `stall` seconds and then raises `first` (a bug, or down);
    every later request answers at once as a directory that is down."""

    def __init__(self, first: BaseException, stall: float) -> None:
        self.requests = 0
        self.first = first
        self.stall = stall

    async def __call__(self, *_: object) -> bytes:
        self.requests += 1
        if self.requests == 1:
            await trio.sleep(self.stall)
            raise self.first
        raise UnavailableError("directory down (test)")


async def _leader_and_joiner(tmp_path: Path, first: BaseException, leader_patience: float) -> object:
    """One caller starts the shared lookup (and gives up after `leader_patience`, or hears its error); one joins
    it. Returns what the joiner got: a list of nodes, or the exception it raised."""
    async with target_node(tmp_path) as target:
        target.ctx.directory = DirectoryClient(StallingDirectory(first, 0.2), target.ctx.directory.guard,
                                               DirectoryCache(tmp_path / "c2"), clock=target.ctx.clock)
        sessions = Sessions(target.ctx, target.wire)
        joined: list[object] = []

        async def leader() -> None:
            with trio.move_on_after(leader_patience):  # e.g. a delivery attempt's own deadline
                with contextlib.suppress(MeshError, RuntimeError):  # the leader's own outcome is not under test
                    await sessions.org_peers("RXX")  # (the directory's errors and the test's injected bug)

        async def joiner() -> None:
            await trio.sleep(0.01)  # the leader's lookup is under way
            try:
                joined.append(await sessions.org_peers("RXX"))
            except Exception as exc:  # noqa: BLE001 - recorded for the assertion
                joined.append(exc)

        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(leader)
                nursery.start_soon(joiner)
        return joined[0]


async def test_a_joiner_of_a_lookup_whose_leader_is_cancelled_does_not_hear_no_nodes(tmp_path: Path) -> None:
    """The caller doing the shared lookup is cancelled (its own deadline): a caller that joined it must not be
    told "this org has no nodes" ([]); it looks up itself and hears the directory's answer (down).
    Before the fix: [] (the flight's empty default result)."""
    got = await _leader_and_joiner(tmp_path, UnavailableError("never raised: the leader is cancelled first"), 0.05)
    assert isinstance(got, UnavailableError), got


async def test_a_joiner_of_a_lookup_that_failed_with_a_bug_does_not_hear_no_nodes(tmp_path: Path) -> None:
    """The shared lookup raised something other than a MeshError (a bug): a joiner must not be told [] either.
    Before the fix: []."""
    got = await _leader_and_joiner(tmp_path, RuntimeError("a bug in the lookup (test)"), 10.0)
    assert not isinstance(got, list), got


async def test_a_peer_not_connected_is_relayed_when_its_record_lists_only_relayed_addresses(tmp_path: Path) -> None:
    """Review i16 MAJOR 4 (resume): before any connection to a sender behind NAT exists, the fetcher was told
    "direct" and gave it a first direct window over the relay. Unknown path: relayed when the verified record
    has only relayed addresses, else None (not known; the scheduler keeps what it knew, a new peer is direct)."""
    from types import SimpleNamespace

    from meshnode.node.peer_link import Libp2pLink
    from protocol.keys import SigningKey

    behind = SigningKey(bytes([71]) * 32).peer_id
    public = SigningKey(bytes([72]) * 32).peer_id
    relay = SigningKey(bytes([73]) * 32).peer_id
    async with target_node(tmp_path) as target:
        sessions = Sessions(target.ctx, target.wire)
        link = Libp2pLink(target.wire, sessions)
        assert link.relayed(behind) is None  # nothing known about it
        from typing import cast

        from meshnode.directory.client import ResolvedPeer
        sessions._resolved["RXX"] = (float("inf"), cast(list[ResolvedPeer], [  # (only these fields are read)
            SimpleNamespace(peer_id=behind, addrs=(f"/ip4/192.0.2.1/tcp/4001/p2p/{relay}/p2p-circuit",)),
            SimpleNamespace(peer_id=public, addrs=("/ip4/192.0.2.2/tcp/4001",
                                                   f"/ip4/192.0.2.1/tcp/4001/p2p/{relay}/p2p-circuit"))]))
        assert link.relayed(behind) is True
        assert link.relayed(public) is None
