"""Hole punching (DCUtR): upgrading a relayed connection to a direct one, under a narrow dial-gate exception.

py-libp2p 0.8.1's `DCUtRProtocol` does the protocol: over a relayed connection the two peers exchange the
addresses they can be reached at (CONNECT), time a simultaneous dial (SYNC), and dial each other from
their listen ports; once a direct connection verifies, the relayed one is closed after a grace period.
`GatedDCUtR` subclasses it (no library code is patched).

Why a dial-gate exception, and why this one. Our hosts dial only addresses from verified, signed address
records (common.p2p.dial_gate): an address a peer tells us could point anywhere (another hospital's
internal service, a scan target), and a host that dials it on request is a tool for whoever asks. Hole
punching cannot work under that rule: the addresses to dial are the ones the other peer observed for
itself a moment ago, sent over the relayed connection; no record holds them (a node behind NAT does not
know them ahead, and publishing them would be stale within minutes). So the exception is made as narrow as
the protocol allows:

- only toward a peer we hold a *relayed* connection to, whose certificate is valid now (`authorised`,
  the node's PeerRegistry): the asker is a certified, accountable organisation, revocable by roster;
- only while that hole punch runs: each address is permitted for the dial and forgotten after it (it
  does not join the gate's remembered addresses);
- only plain TCP addresses over IP (no DNS names, no circuits), at most the protocol's 20 per attempt and
  3 attempts per peer (the library's limits);
- the dial is checked by Noise like any other: a connection is kept only if the far end holds the peer's
  key, so a peer can make us open TCP connections to addresses it names but never make us talk to a
  third party as it.

An inbound DCUtR stream is accepted under the same conditions (relayed connection, valid certificate);
from anyone else it is reset unread. With `hole_punching = false` ([reach]) none of this runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from libp2p.abc import IHost, INetStream
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol
from multiaddr import Multiaddr

from common.p2p.dial_gate import dial_gate
from common.p2p.paths import is_relayed

log = logging.getLogger(__name__)

#: seconds a verified direct connection and the relayed one coexist before the relayed one is closed
RELAY_CLOSE_GRACE = 5.0


def _plain_tcp(addr: Multiaddr) -> bool:
    names = [p.name for p in addr.protocols()]
    return len(names) == 2 and names[0] in ("ip4", "ip6") and names[1] == "tcp"


class GatedDCUtR(DCUtRProtocol):
    """DCUtRProtocol whose dials pass the host's dial gate only under the module docstring's exception."""

    def __init__(self, host: IHost, authorised: Callable[[ID], bool]) -> None:
        super().__init__(host)
        self.authorised = authorised
        self.upgraded = 0  # direct connections that replaced a relayed one
        self.refused = 0  # hole-punch streams or dials refused

    def _allowed(self, peer_id: ID) -> bool:
        return is_relayed(self.host, peer_id) and self.authorised(peer_id)

    async def _handle_dcutr_stream(self, stream: INetStream) -> None:
        peer = stream.muxed_conn.peer_id
        if not self._allowed(peer):
            self.refused += 1
            log.warning("hole punch from %s refused: no relayed connection with a valid certificate", peer)
            await stream.reset()
            return
        await super()._handle_dcutr_stream(stream)

    async def initiate_hole_punch(self, peer_id: ID) -> bool:
        if not self._allowed(peer_id):
            return False
        upgraded = await super().initiate_hole_punch(peer_id)
        if upgraded:  # the library closes the relayed connection after a DCUtR exchange, not after its
            self._schedule_relay_close(peer_id)  # unilateral direct dial (spec step 0): here both are closed
        return upgraded

    async def _dial_peer(self, peer_id: ID, addr: Multiaddr, source: tuple[str, int] | None = None,
                         as_responder: bool = False) -> None:
        gate = dial_gate(self.host)
        bare = addr.decapsulate(Multiaddr(f"/p2p/{peer_id}")) if "/p2p/" in str(addr) else addr
        if gate is None or not _plain_tcp(bare) or not self._allowed(peer_id):
            self.refused += 1
            log.info("hole-punch dial to %s at %s refused", peer_id, addr)
            return
        already = gate.permits(bare)
        gate.permit(bare)
        try:
            await super()._dial_peer(peer_id, bare, source, as_responder)
        finally:
            if not already:
                gate.forget(bare)
        if not is_relayed(self.host, peer_id):
            log.info("direct connection to %s by hole punching (%s)", peer_id, bare)

    async def _close_relayed_conns_after_grace(self, peer_id: ID, grace: float = RELAY_CLOSE_GRACE) -> None:
        await super()._close_relayed_conns_after_grace(peer_id, RELAY_CLOSE_GRACE)
        if not is_relayed(self.host, peer_id) and self.host.get_network().get_connections(peer_id):
            self.upgraded += 1
