"""Connecting to peers: parse "/.../p2p/<peer ID>" addresses and dial them.

``connect`` dials exactly the address it is given with ``dial_addr``, rather
than handing it to ``host.connect``: py-libp2p's ``dial_peer`` tries at most
one address per transport, chosen from everything in the peerstore in
insertion order, so after a peer restarts on a new port a stale address
would be dialled instead of the fresh one, and a failure there blocks the
peer for 60 s in the swarm's negative cache.

The addresses given to ``connect`` are the only ones the host may dial
(common.p2p.dial_gate): callers pass addresses from verified, signed
address records (or the configured directory), never ones a peer told us.

A relayed address (``<relay>/p2p/<relay ID>/p2p-circuit/p2p/<peer ID>``) is
dialled through a relay the host is already connected to (common.p2p.circuit):
the caller connects to the relay first, and checks it may serve as one (the
node: its certificate has role relay). The circuit becomes the swarm's one
connection to the peer.
"""

from __future__ import annotations

import logging

import trio
from libp2p.abc import IHost, INetwork
from libp2p.exceptions import BaseLibp2pError
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from multiaddr import Multiaddr

from common.p2p.circuit import dial_circuit, is_circuit_addr, split_circuit_addr
from common.p2p.dial_gate import dial_gate
from common.p2p.host import parse_multiaddr
from protocol.errors import LocalProtocolError, MeshError, UnavailableError

logger = logging.getLogger(__name__)

#: How long (seconds) a dialled address stays in the peerstore, so that
#: py-libp2p can redial the peer by ID while it is fresh.
ADDRESS_TTL = 600


def parse_peer_addr(addr: str) -> PeerInfo:
    """Split "/ip4/1.2.3.4/tcp/4001/p2p/12D3..." into peer ID and transport address."""
    maddr = parse_multiaddr(addr)
    try:
        return info_from_p2p_addr(maddr)
    except ValueError as exc:
        raise LocalProtocolError(f"{addr!r} is not a /p2p/ address: {exc}") from exc


def is_connected(host: IHost, peer_id: ID) -> bool:
    """Whether the host has at least one open connection to the peer."""
    return _has_live_connection(host.get_network(), peer_id)


def _has_live_connection(network: INetwork, peer_id: ID) -> bool:
    return any(not conn.is_closed for conn in network.get_connections(peer_id))


async def connect(host: IHost, peer: str | PeerInfo, *, timeout: float) -> ID:
    """Make sure the host has a connection to ``peer``; return its peer ID.

    ``peer`` is a multiaddr string ending in /p2p/<peer ID> or a PeerInfo.
    An existing open connection is reused. Otherwise each address is dialled
    in turn until one succeeds (TCP, Noise handshake checking that the remote
    key matches the peer ID, Yamux), all within ``timeout`` seconds.
    Raises UnavailableError when no address can be reached in time, and
    LocalProtocolError for a malformed address or our own peer ID.
    """
    info = parse_peer_addr(peer) if isinstance(peer, str) else peer
    peer_id = info.peer_id
    if peer_id == host.get_id():
        raise LocalProtocolError("refusing to dial our own peer ID")
    if not info.addrs:
        raise LocalProtocolError(f"no address given for peer {peer_id}")
    network = host.get_network()
    if _has_live_connection(network, peer_id):
        return peer_id
    gate = dial_gate(host)
    if gate is not None:  # these, and only these, may now be dialled (see common.p2p.dial_gate)
        for addr in info.addrs:
            if not is_circuit_addr(addr):  # a circuit goes through a relay connected already
                gate.permit(addr)

    failures: list[str] = []
    try:
        with trio.fail_after(timeout):
            for addr in info.addrs:
                try:
                    if is_circuit_addr(addr):
                        await _dial_relayed(host, addr, peer_id, timeout)
                    else:
                        await network.dial_addr(addr, peer_id)
                except (BaseLibp2pError, MeshError) as exc:
                    logger.debug("dial %s at %s failed: %r", peer_id, addr, exc)
                    failures.append(f"{addr}: {_describe(exc)}")
                    continue
                host.get_peerstore().add_addrs(peer_id, [addr], ADDRESS_TTL)
                logger.debug("connected to %s at %s", peer_id, addr)
                return peer_id
    except trio.TooSlowError:
        raise UnavailableError(
            f"could not connect to {peer_id} within {timeout:g} s"
        ) from None
    raise UnavailableError(f"could not connect to {peer_id}: {'; '.join(failures)}")


async def _dial_relayed(host: IHost, addr: Multiaddr, peer_id: ID, timeout: float) -> None:
    relay_part, relay_id = split_circuit_addr(addr)
    if relay_id in (peer_id, host.get_id()):
        raise LocalProtocolError(f"{addr}: a peer cannot be its own relay, nor can we")
    if not _has_live_connection(host.get_network(), relay_id):
        raise UnavailableError(f"not connected to the relay {relay_id}: connect to it first")
    circuit = parse_multiaddr(f"{relay_part}/p2p-circuit/p2p/{peer_id}")
    await dial_circuit(host, relay_id, peer_id, circuit, timeout=timeout)


def _describe(exc: BaseException) -> str:
    """A one-line account of a libp2p error and its causes (they nest deeply)."""
    parts: list[str] = []
    current: BaseException | None = exc
    while current is not None and len(parts) < 4:
        text = str(current) or type(current).__name__
        if text not in parts:
            parts.append(text)
        current = current.__cause__
    return ": ".join(parts)
