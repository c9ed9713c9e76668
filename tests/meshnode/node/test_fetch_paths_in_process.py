"""The fetcher tells the scheduler which holders are reached through a relay (PeerLink.relayed, which is
common.p2p.paths.is_relayed in the node), driven in one process on trio's MockClock
(tests/meshnode/node/harness.py): a relayed sender and a direct fellow recipient; a relayed holder whose
connection is upgraded to direct mid-transfer."""

from __future__ import annotations

import trio
from trio.testing import MockClock

from protocol.fetch_settings import FetchSettings
from tests.meshnode.node.harness import MemoryMesh
from tests.meshnode.node.test_fetch_in_process import asked, fetched_by, holding

CAP = FetchSettings().relayed_window_max


async def test_a_relayed_sender_serves_less_than_a_direct_fellow_recipient(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    mesh.add("a", "RGT", 50), mesh.add("b", "RJ1", 51), mesh.add("c", "RAJ", 52)
    async with trio.open_nursery() as nursery:
        await mesh.run(nursery)
        a, b, c, signed = await holding(mesh, study)
        mesh.relayed.add(a.peer_id)  # B reaches the sender through a relay, C directly
        await mesh.announce(a, b, signed)
        await fetched_by(mesh, b, signed)
        nursery.cancel_scope.cancel()
    requests = [r for r in mesh.requests_by(b) if r.manifest_id == signed.cid]
    from_a, from_c = asked(requests, a), asked(requests, c)
    assert sorted(from_a + from_c) == sorted(signed.document.block_order())  # each block once
    assert len(from_c) > len(from_a)  # the direct holder served most
    assert all(len(r.cids) <= CAP for r in requests if r.holder == a.peer_id)
    sched = b.fetcher.scheduler_of(signed.cid)
    assert sched is not None and sched.relayed(a.peer_id) is True and sched.relayed(c.peer_id) is False


async def test_an_upgrade_to_direct_mid_transfer_lifts_the_relayed_cap(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    a, b = mesh.add("a", "RGT", 50), mesh.add("b", "RJ1", 51)
    mesh.relayed.add(a.peer_id)
    async with trio.open_nursery() as nursery:
        await mesh.run(nursery)
        signed = await mesh.share(a, study, ["RJ1"])
        await mesh.announce(a, b, signed)
        with trio.fail_after(600):
            while len(mesh.requests_by(b)) < 3:
                await trio.sleep(0.01)
        upgraded = len(mesh.requests_by(b))
        mesh.relayed.discard(a.peer_id)  # hole punching: the connection to A is direct now
        await fetched_by(mesh, b, signed)
        nursery.cancel_scope.cancel()
    requests = mesh.requests_by(b)
    assert all(len(r.cids) <= CAP for r in requests[:upgraded])
    assert max(len(r.cids) for r in requests[upgraded:]) > CAP
    assert sorted(asked(requests)) == sorted(signed.document.block_order())
    sched = b.fetcher.scheduler_of(signed.cid)
    assert sched is not None and sched.relayed(a.peer_id) is False


async def test_a_relayed_sender_whose_connection_dropped_keeps_its_relayed_cap(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    """Review i16 MAJOR 4: with no open connection the path is unknown (PeerLink.relayed gives None); the
    fetcher relabelled the relayed sender direct then, and gave it a direct window over the relay."""
    a, b = mesh.add("a", "RGT", 50), mesh.add("b", "RJ1", 51)
    mesh.relayed.add(a.peer_id)
    async with trio.open_nursery() as nursery:
        await mesh.run(nursery)
        signed = await mesh.share(a, study, ["RJ1"])
        await mesh.announce(a, b, signed)
        with trio.fail_after(600):
            while len(mesh.requests_by(b)) < 2:
                await trio.sleep(0.01)
        mesh.unconnected.add(a.peer_id)  # the circuit ended: no open connection, the path is unknown
        await fetched_by(mesh, b, signed)
        nursery.cancel_scope.cancel()
    requests = mesh.requests_by(b)
    assert len(requests) > 3 and all(len(r.cids) <= CAP for r in requests)
    sched = b.fetcher.scheduler_of(signed.cid)
    assert sched is not None and sched.relayed(a.peer_id) is True


async def test_a_sender_not_connected_at_start_gets_a_relayed_first_wave(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    """Review i16 MAJOR 4 (resume): a fetch started with no connection to the sender (a resumed fetch, or a
    manifest relayed by a fellow recipient) gave it a direct first wave (32 blocks), over a relay if it is
    behind NAT. The path is unknown until a connection says: the first wave is capped; once the connection
    says direct, the cap is lifted."""
    a, b = mesh.add("a", "RGT", 50), mesh.add("b", "RJ1", 51)
    mesh.unconnected.add(a.peer_id)
    async with trio.open_nursery() as nursery:
        await mesh.run(nursery)
        signed = await mesh.share(a, study, ["RJ1"])
        await mesh.announce(a, b, signed)
        with trio.fail_after(600):
            while len(mesh.requests_by(b)) < 1:
                await trio.sleep(0.01)
        first = len(mesh.requests_by(b))
        mesh.unconnected.discard(a.peer_id)  # connected now, directly
        await fetched_by(mesh, b, signed)
        nursery.cancel_scope.cancel()
    requests = mesh.requests_by(b)
    assert all(len(r.cids) <= CAP for r in requests[:first])
    assert max(len(r.cids) for r in requests[first:]) > CAP
