"""common.p2p.paths: whether a host's connection to a peer is relayed, over real libp2p hosts on loopback.

A relayed connection is the one py-libp2p's Circuit Relay v2 builds: a connection whose swarm entry is tagged
RELAYED with its /p2p-circuit address (libp2p/relay/circuit_v2/protocol.py does exactly this once the
circuit is upgraded). Here a real TCP + Noise + Yamux connection is tagged the same way, so the function is
checked against py-libp2p's own objects; relayed end to end runs are the relay's tests (issue 16, RELAY).
"""

from __future__ import annotations

import multiaddr
import trio
from libp2p.connection_types import ConnectionType

from common.p2p import connect, listen_multiaddrs, running_host
from common.p2p.paths import connection_is_relayed, is_relayed

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
TIMEOUT = 10.0
RELAY = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"




async def test_direct_relayed_and_unknown_paths() -> None:
    with trio.fail_after(TIMEOUT):
        async with running_host(bytes(range(32)), LOOPBACK) as server, \
                running_host(bytes(range(40, 72)), LOOPBACK) as client:
            server_id = server.get_id()
            assert is_relayed(client, server_id) is False  # not connected: nothing known, not relayed
            await connect(client, listen_multiaddrs(server)[0], timeout=TIMEOUT)
            (conn,) = client.get_network().get_connections(server_id)
            assert not connection_is_relayed(conn)
            assert is_relayed(client, server_id) is False and is_relayed(client, str(server_id)) is False
            # The peer publishes a relayed address beside its direct one (a node behind NAT does): the
            # peerstore has it, and SwarmConn.get_transport_addresses falls back to the peerstore, but the
            # connection itself is direct.
            circuit = multiaddr.Multiaddr(f"/ip4/192.0.2.10/tcp/4001/p2p/{RELAY}/p2p-circuit")
            client.get_peerstore().add_addrs(server_id, [circuit], 3600)
            conn._actual_transport_addresses = None  # type: ignore[attr-defined]  # the fallback
            assert any("/p2p-circuit" in str(a) for a in conn.get_transport_addresses())
            assert is_relayed(client, server_id) is False
            # tagged as py-libp2p's circuit v2 tags the connections it builds: relayed
            conn.set_transport_info([circuit.encapsulate(f"/p2p/{server_id}")], ConnectionType.RELAYED)  # type: ignore[attr-defined]
            assert connection_is_relayed(conn) and is_relayed(client, server_id) is True
            # upgraded to direct (a new direct connection, or the tag changed): direct again
            conn.set_transport_info(conn.muxed_conn.get_transport_addresses(), ConnectionType.DIRECT)  # type: ignore[attr-defined]
            assert is_relayed(client, server_id) is False
            await conn.close()
            assert is_relayed(client, server_id) is False  # closed: nothing open, not relayed
