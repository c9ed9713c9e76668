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
- only addresses the peer sent in *this* session's CONNECT (the first MAX_OBSERVED_ADDRS = 20 of the
  message, the spec's cap; the rest is ignored), each permitted for its own dial only
  (`common.p2p.dial_gate.permit_one_dial`, a context variable: no other dial of the host, concurrent or
  later, gets it, and it never joins the gate's remembered addresses). Addresses the library keeps in the
  peerstore or learnt by identify are not dialled unless a signed record already permitted them;
- only plain TCP over IP (no DNS names, no circuits) to a *global unicast* address: loopback, link-local
  (169.254/16 with the cloud metadata address, fe80::/10), multicast, broadcast, unspecified and reserved
  addresses are refused, and so are the node's own listen IPs (its DICOM, HTTP and control ports);
- private ranges (10/8, 172.16/12, 192.168/16, fc00::/7, 100.64/10) are refused unless
  `[reach] hole_punch_private = true`. Off by default: on the Internet a peer behind NAT is punched at
  its public (observed) address, and a private address from a peer could only be one of *our* network's
  hosts (a hospital's internal PACS). Deployments where both NATs sit inside one private network (and
  the network-namespace tests) turn it on; loopback only with `hole_punch_loopback = true`, for several
  nodes on one machine (the real-process tests), never in production;
- at most MAX_HOLE_PUNCH_ATTEMPTS = 3 sessions per peer and connection, counting the ones the peer
  starts, and one inbound session per peer at a time (a second one is reset unread; our own session with
  that peer may run beside it, as the library allows, so that two peers starting at once both succeed);
- the dial is checked by Noise like any other: a connection is kept only if the far end holds the peer's
  key, so a peer can make us open TCP connections to addresses it names but never make us talk to a
  third party as it.

After an upgrade the relayed connection is closed only once no stream is open on it (at least
RELAY_CLOSE_GRACE, at most RELAY_DRAIN_MAX seconds after the upgrade): a transfer started over the relay
finishes there, new streams use the direct connection. During the session and the drain the peer is
protected from the swarm's trimming (max_connections_per_peer = 1 would otherwise close the older,
relayed connection with its streams the moment the direct one is added).

An inbound DCUtR stream is accepted under the same conditions (relayed connection, valid certificate);
from anyone else it is reset unread. With `hole_punching = false` ([reach]) none of this runs.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from contextvars import ContextVar

import trio

from libp2p.abc import IHost, INetStream
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.dcutr import MAX_HOLE_PUNCH_ATTEMPTS, MAX_OBSERVED_ADDRS, DCUtRProtocol
from multiaddr import Multiaddr

from common.p2p.dial_gate import dial_gate, permit_one_dial, transport_part
from common.p2p.paths import connection_is_relayed, is_relayed

log = logging.getLogger(__name__)

#: seconds a verified direct connection and the relayed one coexist at least before the relayed one is closed
RELAY_CLOSE_GRACE = 5.0
#: seconds at most the relayed connection is kept after an upgrade while streams on it (a block transfer
#: started before) are still open; new streams go to the direct connection (py-libp2p prefers direct)
RELAY_DRAIN_MAX = 300.0
#: the swarm's tag that keeps a peer's connections from being trimmed during a hole punch and the drain
PROTECT_TAG = "hole-punch"
#: seconds between looks at the relayed connection's open streams while it drains
DRAIN_POLL = 0.5

#: the addresses the running hole-punch session may dial (those of its CONNECT that passed `punchable`);
#: a context variable, so the session's own dial tasks see it and nothing else does
_SESSION: ContextVar[set[str] | None] = ContextVar("hole_punch_session", default=None)


def _plain_tcp(addr: Multiaddr) -> bool:
    names = [p.name for p in addr.protocols()]
    return len(names) == 2 and names[0] in ("ip4", "ip6") and names[1] == "tcp"


def _ip_port(addr: Multiaddr) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int] | None:
    if not _plain_tcp(addr):
        return None
    try:
        proto = addr.protocols()[0].name
        ip = ipaddress.ip_address(addr.value_for_protocol(proto))
        port = int(addr.value_for_protocol("tcp"))
    except (ValueError, TypeError):
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip, port


_PRIVATE = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7"))


def punchable(addr: Multiaddr, own_ips: set[str], *, allow_private: bool = False,
              allow_loopback: bool = False) -> bool:
    """Whether a hole-punch session may dial `addr` a peer sent (module docstring): plain TCP to a global
    unicast address (private ranges with `allow_private`; loopback only with `allow_loopback`, for
    in-process tests on 127.0.0.1), never one of our own IPs (`own_ips`, except loopback when allowed)."""
    parsed = _ip_port(addr)
    if parsed is None:
        return False
    ip, port = parsed
    if not 0 < port < 65536:
        return False
    if ip.is_loopback:
        return allow_loopback
    if str(ip) in own_ips:
        return False
    if ip.is_link_local or ip.is_multicast or ip.is_unspecified or ip.is_reserved:
        return False
    if isinstance(ip, ipaddress.IPv4Address) and ip == ipaddress.IPv4Address("255.255.255.255"):
        return False
    if any(ip in net for net in _PRIVATE if net.version == ip.version):
        return allow_private
    return ip.is_global


class GatedDCUtR(DCUtRProtocol):
    """DCUtRProtocol whose dials pass the host's dial gate only under the module docstring's exception."""

    def __init__(self, host: IHost, authorised: Callable[[ID], bool], *, allow_private: bool = False,
                 allow_loopback: bool = False) -> None:
        super().__init__(host)
        self.authorised = authorised
        self.allow_private = allow_private
        self.allow_loopback = allow_loopback  # nodes on one machine only (tests; [reach] hole_punch_loopback)
        self.upgraded = 0  # direct connections that replaced a relayed one
        self.refused = 0  # hole-punch streams, sessions or dials refused
        #: peers whose hole-punch session with us runs now (one each; the library serialises our own)
        self.inbound_sessions: set[ID] = set()
        #: peers whose relayed connection waits for its streams to end after an upgrade
        self._draining: set[ID] = set()

    def _allowed(self, peer_id: ID) -> bool:
        return is_relayed(self.host, peer_id) and self.authorised(peer_id)

    def _own_ips(self) -> set[str]:
        own: set[str] = set()
        for addr in self.host.get_addrs():
            parsed = _ip_port(addr.decapsulate(Multiaddr(f"/p2p/{self.host.get_id()}"))
                              if "/p2p/" in str(addr) else addr)
            if parsed is not None:
                own.add(str(parsed[0]))
        return own

    def _decode_observed_addrs(self, addr_bytes: list[bytes]) -> list[Multiaddr]:
        """The first MAX_OBSERVED_ADDRS addresses of a CONNECT that `punchable` accepts; they become the
        only addresses the running session may dial (the library also keeps them in the peerstore, where
        the dial gate makes them inert)."""
        decoded = super()._decode_observed_addrs(list(addr_bytes)[:MAX_OBSERVED_ADDRS])
        own = self._own_ips()
        kept = [a for a in decoded if punchable(a, own, allow_private=self.allow_private,
                                                allow_loopback=self.allow_loopback)]
        if len(kept) < len(addr_bytes):
            self.refused += len(addr_bytes) - len(kept)
            log.info("hole punch: %d of %d addresses refused", len(addr_bytes) - len(kept), len(addr_bytes))
        session = _SESSION.get()
        if session is not None:
            session.update(transport_part(a) for a in kept)
        return kept

    async def _handle_dcutr_stream(self, stream: INetStream) -> None:
        peer = stream.muxed_conn.peer_id
        if not self._allowed(peer):
            self.refused += 1
            log.warning("hole punch from %s refused: no relayed connection with a valid certificate", peer)
            await stream.reset()
            return
        attempts = self._hole_punch_attempts.get(peer, 0)
        if peer in self.inbound_sessions or attempts >= MAX_HOLE_PUNCH_ATTEMPTS:
            self.refused += 1
            log.warning("hole punch from %s refused: a session of its is running or its %d attempts are used",
                        peer, MAX_HOLE_PUNCH_ATTEMPTS)
            await stream.reset()
            return
        self.inbound_sessions.add(peer)  # before any await: a second stream is refused above
        self._hole_punch_attempts[peer] = attempts + 1  # shared with the sessions we start (the library's)
        token = _SESSION.set(set())
        self._protect(peer)
        try:
            await super()._handle_dcutr_stream(stream)
        finally:
            _SESSION.reset(token)
            self.inbound_sessions.discard(peer)
            self._unprotect_unless_draining(peer)

    async def initiate_hole_punch(self, peer_id: ID) -> bool:
        if not self._allowed(peer_id):
            return False
        token = _SESSION.set(set())
        self._protect(peer_id)
        try:
            upgraded = await super().initiate_hole_punch(peer_id)
        finally:
            _SESSION.reset(token)
            self._unprotect_unless_draining(peer_id)
        if upgraded:  # the library closes the relayed connection after a DCUtR exchange, not after its
            self._schedule_relay_close(peer_id)  # unilateral direct dial (spec step 0): here both are closed
        return upgraded

    async def _dial_peer(self, peer_id: ID, addr: Multiaddr, source: tuple[str, int] | None = None,
                         as_responder: bool = False) -> None:
        gate = dial_gate(self.host)
        bare = addr.decapsulate(Multiaddr(f"/p2p/{peer_id}")) if "/p2p/" in str(addr) else addr
        session = _SESSION.get()
        signed = gate is not None and gate.permits(bare)  # from a verified, signed record already
        in_session = session is not None and transport_part(bare) in session
        if gate is None or not _plain_tcp(bare) or not self._allowed(peer_id) or not (signed or in_session):
            self.refused += 1
            log.info("hole-punch dial to %s at %s refused", peer_id, addr)
            return
        with permit_one_dial(bare):
            await super()._dial_peer(peer_id, bare, source, as_responder)
        if not is_relayed(self.host, peer_id):
            log.info("direct connection to %s by hole punching (%s)", peer_id, bare)

    def _protect(self, peer_id: ID) -> None:
        protect = getattr(self.host.get_network(), "protect", None)
        if callable(protect):
            protect(peer_id, PROTECT_TAG)

    def _unprotect_unless_draining(self, peer_id: ID) -> None:
        if peer_id in self._draining:
            return  # the drain below unprotects
        unprotect = getattr(self.host.get_network(), "unprotect", None)
        if callable(unprotect):
            unprotect(peer_id, PROTECT_TAG)

    def _schedule_relay_close(self, peer_id: ID) -> None:
        if self._nursery is not None and peer_id not in self._draining:
            self._draining.add(peer_id)  # before the session's end would unprotect
            self._nursery.start_soon(self._close_relayed_conns_after_grace, peer_id)

    def _busy_relayed(self, peer_id: ID) -> bool:
        return any(connection_is_relayed(c) and not c.is_closed and c.get_streams()
                   for c in self.host.get_network().get_connections(peer_id))

    async def _close_relayed_conns_after_grace(self, peer_id: ID, grace: float = RELAY_CLOSE_GRACE) -> None:
        """Close the relayed connection once drained (module docstring), then lift the trim protection."""
        self._draining.add(peer_id)
        try:
            await trio.sleep(RELAY_CLOSE_GRACE)
            with trio.move_on_after(RELAY_DRAIN_MAX - RELAY_CLOSE_GRACE):
                while self._busy_relayed(peer_id):
                    await trio.sleep(DRAIN_POLL)
            await super()._close_relayed_conns_after_grace(peer_id, 0)
            if not is_relayed(self.host, peer_id) and self.host.get_network().get_connections(peer_id):
                self.upgraded += 1
        finally:
            self._draining.discard(peer_id)
            self._unprotect_unless_draining(peer_id)
