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
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from libp2p.abc import IHost
from multiaddr import Multiaddr

#: Addresses remembered per host; the least recently permitted is forgotten first.
MAX_PERMITTED = 4096

#: the one transport address the running task (and the tasks it starts) may dial besides the remembered
#: ones: a single hole-punch dial (common.p2p.hole_punch), never a host-wide permission
_ONE_DIAL: ContextVar[str | None] = ContextVar("one_dial", default=None)


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
        """No longer permit an address."""
        self._permitted.pop(transport_part(addr), None)

    def permits(self, addr: Multiaddr) -> bool:
        key = transport_part(addr)
        return key in self._permitted or _ONE_DIAL.get() == key


@contextmanager
def permit_one_dial(addr: Multiaddr | str) -> Iterator[None]:
    """Permit `addr` to the dials made inside this block by this task (and tasks it starts) only: other
    tasks of the host, before, during and after, are not permitted it (a context variable, not the gate's
    remembered addresses)."""
    token = _ONE_DIAL.set(transport_part(addr))
    try:
        yield
    finally:
        _ONE_DIAL.reset(token)


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
