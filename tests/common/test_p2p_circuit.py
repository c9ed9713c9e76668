"""Circuits through a relay with real py-libp2p hosts on 127.0.0.1: common.p2p.circuit (reserve, dial_circuit,
CircuitReceiver), common.p2p.dial.connect on a relayed address, common.p2p.paths.is_relayed; the relay is
meshnode.node.relay_service.CertifiedRelay (every host here counts as certified)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.relay.circuit_v2.pb.circuit_pb2 import PeerId as CircuitPeerId
from libp2p.relay.circuit_v2.pb.circuit_pb2 import StopMessage
from libp2p.relay.circuit_v2.protocol import STOP_PROTOCOL_ID
from libp2p.relay.circuit_v2.utils import read_delimited_msg, write_delimited_msg
from libp2p.tools.anyio_service import background_trio_service

from common.p2p.circuit import CircuitReceiver, reserve, split_circuit_addr
from common.p2p.dial import connect
from common.p2p.host import listen_multiaddrs, running_host
from common.p2p.paths import is_relayed
from meshnode.node.reach_config import ReachConfig
from meshnode.node.relay_service import CertifiedRelay
from protocol.errors import LocalProtocolError, UnavailableError

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
ECHO = TProtocol("/test/echo/1.0.0")
PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


async def _echo(stream: INetStream) -> None:
    received = b""
    while len(received) < len(PAYLOAD):
        received += await stream.read(65536)
    await stream.write(received)
    await stream.close()


@asynccontextmanager
async def mesh() -> AsyncIterator[tuple[CertifiedRelay, IHost, IHost, IHost]]:
    """A relay, a private host B reserved on it (accepting circuits from it only), and a host A."""
    async with running_host(bytes([1]) * 32, LOOPBACK) as r, running_host(bytes([2]) * 32, LOOPBACK) as a, \
            running_host(bytes([3]) * 32, LOOPBACK) as b:
        relay = CertifiedRelay(r, ReachConfig(relay_service=True), lambda _pid: True)
        receiver = CircuitReceiver(b, frozenset({r.get_id()}))
        async with background_trio_service(relay), background_trio_service(receiver):
            await relay.event_started.wait()
            await receiver.event_started.wait()
            b.set_stream_handler(ECHO, _echo)
            relay_addr = listen_multiaddrs(r)[0]
            await connect(b, relay_addr, timeout=10)
            assert await reserve(b, r.get_id(), timeout=10) > trio.current_time()
            await connect(a, relay_addr, timeout=10)
            yield relay, r, a, b


@pytest.mark.trio
async def test_circuit_carries_streams_and_is_the_peers_connection() -> None:
    async with mesh() as (relay, r, a, b):
        circuit = f"{listen_multiaddrs(r)[0]}/p2p-circuit/p2p/{b.get_id()}"
        assert await connect(a, circuit, timeout=10) == b.get_id()
        assert is_relayed(a, b.get_id()) and is_relayed(b, a.get_id())
        assert not is_relayed(a, r.get_id())
        assert len(a.get_network().get_connections(b.get_id())) == 1
        stream = await a.new_stream(b.get_id(), [ECHO])
        await stream.write(PAYLOAD)
        echoed = b""
        with trio.fail_after(20):
            while len(echoed) < len(PAYLOAD):
                echoed += await stream.read(65536)
        assert echoed == PAYLOAD
        assert relay.counters.circuits_total == 1
        assert relay.counters.relayed_bytes > 2 * len(PAYLOAD)  # both ways, plus Noise and Yamux framing


@pytest.mark.trio
async def test_circuit_needs_a_connected_relay() -> None:
    async with mesh() as (_relay, r, a, b):
        await a.disconnect(r.get_id())
        circuit = f"{listen_multiaddrs(r)[0]}/p2p-circuit/p2p/{b.get_id()}"
        with pytest.raises(UnavailableError, match="not connected to the relay"):
            await connect(a, circuit, timeout=5)


@pytest.mark.trio
async def test_circuit_refused_from_a_peer_that_is_not_our_relay() -> None:
    """A connected host posing as a relay (a STOP stream to B claiming a circuit from some peer) is reset
    unread: B accepts circuits only from the relays it reserved on."""
    async with mesh() as (_relay, _r, a, b):
        await connect(a, listen_multiaddrs(b)[0], timeout=10)
        claimed = StopMessage(type=StopMessage.CONNECT, peer=CircuitPeerId(id=a.get_id().to_bytes()))
        with trio.fail_after(10), pytest.raises(Exception):  # noqa: B017 - reset, EOF: any refusal
            stream = await a.new_stream(b.get_id(), [STOP_PROTOCOL_ID])
            await write_delimited_msg(stream, claimed)
            await read_delimited_msg(stream, StopMessage)
        assert not is_relayed(b, a.get_id())


@pytest.mark.parametrize("addr", [
    "/ip4/127.0.0.1/tcp/1/p2p-circuit/p2p/12D3KooWAaYVakMyznsMrUbM1TPKUnduj2tCfQiM6zujqQmepeqr",
    "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWAaYVakMyznsMrUbM1TPKUnduj2tCfQiM6zujqQmepeqr/p2p-circuit/p2p-circuit",
    "/ip4/127.0.0.1/tcp/1/p2p/notapeer/p2p-circuit",
    "/p2p/12D3KooWAaYVakMyznsMrUbM1TPKUnduj2tCfQiM6zujqQmepeqr/p2p-circuit",
])
def test_malformed_circuit_addresses_refused(addr: str) -> None:
    with pytest.raises(LocalProtocolError):
        split_circuit_addr(addr)
