"""Which addresses a host may dial: only those it was explicitly asked to dial.

py-libp2p dials on its own: identify stores the listen addresses a peer
advertises in the peerstore, and the swarm dials addresses from there (its
auto-connector, or `new_stream` to a peer with no open connection). A peer
that connects once could make a node dial addresses of its choosing.

Every outbound TCP connection of our hosts goes through BufferedTCP.dial,
which asks the host's DialGate. The gate permits the transport addresses
that `common.p2p.dial.connect` was given (a node calls it only with
addresses from verified, signed address records, or its configured
directory), and nothing else.
"""

from __future__ import annotations

from collections import OrderedDict

from libp2p.abc import IHost
from multiaddr import Multiaddr

#: Addresses remembered per host; the least recently permitted is forgotten first.
MAX_PERMITTED = 4096


def transport_part(addr: Multiaddr | str) -> str:
    """The address without its /p2p/<peer ID> part, as text."""
    return str(addr).split("/p2p/", 1)[0]


class DialGate:
    def __init__(self, capacity: int = MAX_PERMITTED) -> None:
        self.capacity = capacity
        self._permitted: OrderedDict[str, None] = OrderedDict()

    def permit(self, addr: Multiaddr | str) -> None:
        key = transport_part(addr)
        self._permitted[key] = None
        self._permitted.move_to_end(key)
        while len(self._permitted) > self.capacity:
            self._permitted.popitem(last=False)

    def forget(self, addr: Multiaddr | str) -> None:
        """No longer permit an address (the narrow, temporary permissions of common.p2p.hole_punch)."""
        self._permitted.pop(transport_part(addr), None)

    def permits(self, addr: Multiaddr) -> bool:
        return transport_part(addr) in self._permitted


def dial_gate(host: IHost) -> DialGate | None:
    """The gate of a host built by common.p2p.host.make_host (None for other hosts)."""
    from common.p2p.tuning import BufferedTCP

    network = host.get_network()
    manager = getattr(network, "transport_manager", None)
    for transport in (manager.get_transports() if manager is not None else []):
        if isinstance(transport, BufferedTCP) and transport.permit is not None:
            owner = getattr(transport.permit, "__self__", None)
            if isinstance(owner, DialGate):
                return owner
    return None
