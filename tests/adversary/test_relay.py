"""Hostile tests of the relay service (meshnode.node.relay_service): real py-libp2p hosts on 127.0.0.1
speaking Circuit Relay v2 to a CertifiedRelay. Who is certified is the node's PeerRegistry in a node; here
a set of peer IDs stands for it (the real-process test in tests/e2e/test_relay_processes.py uses the node)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from libp2p.abc import IHost
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage
from libp2p.relay.circuit_v2.pb.circuit_pb2 import PeerId as Peer
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID
from libp2p.relay.circuit_v2.protocol_buffer import StatusCode
from libp2p.relay.circuit_v2.utils import read_delimited_msg, write_delimited_msg
from libp2p.tools.anyio_service import background_trio_service

from common.p2p.dial import connect
from common.p2p.host import listen_multiaddrs, running_host
from meshnode.node.reach_config import ReachConfig
from meshnode.node.relay_service import CertifiedRelay

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]


@asynccontextmanager
async def relay_and(n: int, reach: ReachConfig, certified: set[int]) -> AsyncIterator[
        tuple[CertifiedRelay, IHost, list[IHost]]]:
    """A relay host running CertifiedRelay and `n` other hosts connected to it; the hosts whose index is in
    `certified` count as holding a valid certificate."""
    async with running_host(bytes([1]) * 32, LOOPBACK) as relay_host:
        allowed: set[str] = set()
        relay = CertifiedRelay(relay_host, reach, lambda pid: pid in allowed)
        async with background_trio_service(relay):
            await relay.event_started.wait()
            async with _hosts(n) as hosts:
                for i, h in enumerate(hosts):
                    if i in certified:
                        allowed.add(h.get_id().to_base58())
                    await connect(h, listen_multiaddrs(relay_host)[0], timeout=10)
                yield relay, relay_host, hosts


@asynccontextmanager
async def _hosts(n: int) -> AsyncIterator[list[IHost]]:
    if n == 0:
        yield []
        return
    async with running_host(bytes([10 + n]) * 32, LOOPBACK) as h, _hosts(n - 1) as rest:
        yield [h, *rest]


async def hop(host: IHost, relay: IHost, msg: HopMessage) -> HopMessage:
    stream = await host.new_stream(relay.get_id(), [PROTOCOL_ID])
    with trio.fail_after(10):
        await write_delimited_msg(stream, msg)
        answer = await read_delimited_msg(stream, HopMessage)
    await stream.reset()
    return answer


def reserve() -> HopMessage:
    return HopMessage(type=HopMessage.RESERVE)


def connect_to(peer: ID) -> HopMessage:
    return HopMessage(type=HopMessage.CONNECT, peer=Peer(id=peer.to_bytes()))


def status(msg: HopMessage) -> int:
    return int(msg.status) if msg.HasField("status") else -1


@pytest.mark.trio
async def test_uncertified_host_cannot_reserve() -> None:
    async with relay_and(1, ReachConfig(relay_service=True), certified=set()) as (relay, relay_host, (stranger,)):
        answer = await hop(stranger, relay_host, reserve())
        assert status(answer) == StatusCode.PERMISSION_DENIED
        assert relay.reservations_active() == 0
        assert relay.counters.refused_hop_streams == 1


@pytest.mark.trio
async def test_reservation_for_another_peer_refused() -> None:
    async with relay_and(2, ReachConfig(relay_service=True), certified={0}) as (relay, relay_host, (a, b)):
        forged = HopMessage(type=HopMessage.RESERVE, peer=Peer(id=b.get_id().to_bytes()))
        assert status(await hop(a, relay_host, forged)) == StatusCode.PERMISSION_DENIED
        assert relay.reservations_active() == 0


@pytest.mark.trio
async def test_certified_host_reserves() -> None:
    async with relay_and(1, ReachConfig(relay_service=True), certified={0}) as (relay, relay_host, (node,)):
        answer = await hop(node, relay_host, reserve())
        assert status(answer) == StatusCode.OK
        assert relay.reservations_active() == 1


@pytest.mark.trio
async def test_uncertified_host_cannot_open_a_circuit() -> None:
    async with relay_and(2, ReachConfig(relay_service=True), certified={0}) as (relay, relay_host, (node, stranger)):
        assert status(await hop(node, relay_host, reserve())) == StatusCode.OK
        answer = await hop(stranger, relay_host, connect_to(node.get_id()))
        assert status(answer) == StatusCode.PERMISSION_DENIED
        assert relay.counters.refused_hop_streams == 1
        assert relay.counters.circuits_total == 0


@pytest.mark.trio
async def test_no_circuit_to_a_peer_without_reservation() -> None:
    async with relay_and(2, ReachConfig(relay_service=True), certified={0, 1}) as (relay, relay_host, (a, b)):
        answer = await hop(a, relay_host, connect_to(b.get_id()))
        assert status(answer) == StatusCode.NO_RESERVATION
        assert relay.counters.circuits_total == 0


@pytest.mark.trio
async def test_revoked_destination_loses_its_reservation() -> None:
    allowed_ids: set[int] = {0, 1}
    async with relay_and(2, ReachConfig(relay_service=True), certified=allowed_ids) as (relay, relay_host, (a, b)):
        assert status(await hop(b, relay_host, reserve())) == StatusCode.OK
        revoked = b.get_id().to_base58()
        before = relay.authorised

        def authorised(pid: str) -> bool:
            return pid != revoked and before(pid)

        relay.authorised = authorised
        assert relay.drop_unauthorised() == [revoked]
        assert relay.reservations_active() == 0
        assert status(await hop(a, relay_host, connect_to(b.get_id()))) == StatusCode.NO_RESERVATION


@pytest.mark.trio
async def test_reservation_limit_refuses_the_excess() -> None:
    reach = ReachConfig(relay_service=True, relay_max_reservations=1)
    async with relay_and(2, reach, certified={0, 1}) as (relay, relay_host, (a, b)):
        assert status(await hop(a, relay_host, reserve())) == StatusCode.OK
        assert status(await hop(b, relay_host, reserve())) == StatusCode.RESOURCE_LIMIT_EXCEEDED
        assert relay.reservations_active() == 1
        assert relay.counters.refused_reservations == 1


@pytest.mark.trio
async def test_one_source_cannot_hold_every_circuit_slot_to_a_node() -> None:
    """Review MAJOR 2: relay_max_circuits_per_peer limited the destination only, so one certified source (no
    reservation, never speaking Noise) held every slot to B. Now it holds at most a quarter of them; another
    source still reaches B, and a source's circuits over all destinations are capped too."""
    from tests.common.test_p2p_circuit import mesh
    from common.p2p.dial import connect as dial
    from common.p2p.paths import is_relayed
    from meshnode.node.relay_service import pair_limit

    reach = ReachConfig(relay_service=True, relay_max_circuits_per_peer=8)
    assert pair_limit(8) == 2
    async with mesh(reach) as (relay, r, a, b), running_host(bytes([6]) * 32, LOOPBACK) as c:
        held = []
        for _ in range(2):
            s = await a.new_stream(r.get_id(), [PROTOCOL_ID])
            await write_delimited_msg(s, connect_to(b.get_id()))
            with trio.fail_after(10):
                assert status(await read_delimited_msg(s, HopMessage)) == StatusCode.OK
            held.append(s)
        answer = await hop(a, r, connect_to(b.get_id()))
        assert status(answer) == StatusCode.RESOURCE_LIMIT_EXCEEDED
        await dial(c, listen_multiaddrs(r)[0], timeout=10)
        await dial(c, f"{listen_multiaddrs(r)[0]}/p2p-circuit/p2p/{b.get_id()}", timeout=10)
        assert is_relayed(c, b.get_id())
        assert relay.circuits_active == 3


@pytest.mark.trio
async def test_a_connect_without_reservation_takes_no_slot() -> None:
    """A CONNECT to a peer without reservation is refused at once and never counts among circuits_active."""
    reach = ReachConfig(relay_service=True, relay_max_circuits=1)
    async with relay_and(2, reach, {0, 1}) as (relay, r, (a, b)):
        answer = await hop(a, r, connect_to(b.get_id()))
        assert status(answer) == StatusCode.NO_RESERVATION
        assert relay.circuits_active == 0 and relay.counters.refused_circuits == 1
