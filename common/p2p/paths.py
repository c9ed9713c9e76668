"""The path to a peer: is the host's connection to it relayed (Circuit Relay v2) or direct?

The fetch scheduler treats a holder reached through a relay as a slower source (protocol.fetch); the node's
fetcher asks `is_relayed` when it learns what a holder has and around each request, so a connection
upgraded to direct by hole punching (DCUtR) is seen as direct from then on. The relay transport uses the
same function.

A connection is relayed when py-libp2p says so (its ConnectionType is RELAYED: the circuit v2 transport sets
it on the connections it builds, and its raw connection reports it) or its own transport address contains
/p2p-circuit. Only the connection's own addresses count: py-libp2p's ``SwarmConn.get_transport_addresses``
falls back to the peerstore, where a peer behind NAT lists its relayed addresses beside any direct ones,
which would make a direct connection to it look relayed.

A peer's current connection is the one new streams go over. py-libp2p's swarm prefers a direct connection
to a peer when it has several (``Swarm._best_connection``), so a peer counts as relayed only while every
open connection to it is relayed; a peer with no open connection is not (nothing is known: the fetcher asks
again once it has connected).
"""

from __future__ import annotations

from libp2p.abc import IHost, INetConn
from libp2p.connection_types import ConnectionType
from libp2p.peer.id import ID

CIRCUIT = "/p2p-circuit"


def is_relayed(host: IHost, peer_id: ID | str) -> bool:
    """Whether new streams to the peer go through a relay (every open connection to it is relayed)."""
    peer = peer_id if isinstance(peer_id, ID) else ID.from_base58(peer_id)
    connections = [c for c in host.get_network().get_connections(peer) if not c.is_closed]
    return bool(connections) and all(connection_is_relayed(c) for c in connections)


def path(host: IHost, peer_id: ID | str) -> bool | None:
    """Like `is_relayed`, but None when there is no open connection to the peer (the path is not known: a
    caller keeps the last one it knew, rather than taking "not connected" for "direct")."""
    peer = peer_id if isinstance(peer_id, ID) else ID.from_base58(peer_id)
    connections = [c for c in host.get_network().get_connections(peer) if not c.is_closed]
    if not connections:
        return None
    return all(connection_is_relayed(c) for c in connections)


def connection_is_relayed(conn: INetConn) -> bool:
    """Whether this one connection runs through a relay (see the module docstring for what counts).

    Read defensively (a wrapped or test connection may lack a method): this runs in the fetcher's cleanup."""
    muxed = getattr(conn, "muxed_conn", None)
    for source in (conn, muxed):
        get_type = getattr(source, "get_connection_type", None)
        if callable(get_type) and get_type() == ConnectionType.RELAYED:
            return True
    get_addrs = getattr(muxed, "get_transport_addresses", None)
    return callable(get_addrs) and any(CIRCUIT in str(addr) for addr in get_addrs())
