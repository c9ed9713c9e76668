"""Which path a connection to a peer takes: direct, or relayed through a Circuit Relay v2 relay."""

from __future__ import annotations

from libp2p.abc import IHost, INetConn
from libp2p.connection_types import ConnectionType
from libp2p.peer.id import ID


def connection_is_relayed(conn: INetConn) -> bool:
    """Whether one connection runs over a relay circuit.

    Relayed connections are tagged when they are made (common.p2p.circuit for the ones we dial,
    py-libp2p's STOP handler for the ones we accept). The peerstore's addresses are not consulted: they
    may list a circuit address for a peer we reach directly.
    """
    get_type = getattr(conn, "get_connection_type", None)
    return callable(get_type) and get_type() == ConnectionType.RELAYED


def is_relayed(host: IHost, peer_id: ID | str) -> bool:
    """Whether the host's open connection to the peer is relayed (False when there is none, or a direct one)."""
    pid = ID.from_base58(peer_id) if isinstance(peer_id, str) else peer_id
    live = [c for c in host.get_network().get_connections(pid) if not c.is_closed]
    return bool(live) and all(connection_is_relayed(c) for c in live)
