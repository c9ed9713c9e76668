"""The Circuit Relay v2 hop service a node with role `relay` runs for other certified nodes.

py-libp2p 0.8.1's `CircuitV2Protocol` does the protocol (RESERVE, CONNECT, the STOP stream to the
destination, copying bytes both ways); it serves anyone who asks. `CertifiedRelay` subclasses it (no
library code is patched) to add what a dicom-mesh relay must do on top:

- serve only certified nodes: RESERVE and CONNECT are refused (PERMISSION_DENIED, counted, logged) unless
  the asking peer holds a certificate valid right now in the node's peer registry (it said hello first,
  PeerRegistry.authorise: roster, revocation, expiry); a CONNECT is also refused when its destination is
  no longer authorised. `drop_unauthorised` (called at each roster refresh) drops the reservations of
  revoked nodes;
- limits from node.toml's [reach]: reservations at once, circuits at once (all peers) and per peer, the
  reservation lifetime, and a cap on the relayed bytes per second over all circuits (UploadLimiter).
  `relay_max_circuits_per_peer` holds at both ends: circuits *to* a reserved peer (the library's count)
  and circuits *from* a peer (ours), and one source may hold at most a quarter of them to one destination
  (`pair_limit`, at least 1), so that a single certified peer can neither take every slot to a node (cutting
  it off) nor more than its share of relay_max_circuits. Pending CONNECTs count; a CONNECT the library
  would refuse (no reservation, destination full) is refused at once and takes no slot;
- counters for the node's /metrics: reservations and circuits active, relayed bytes, refusals.

The relay copies ciphertext: Noise runs end to end between the two nodes over the circuit, and the bytes
are held in memory only for the time of one copy (nothing is written to disk).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import trio
from libp2p.abc import IHost, INetStream
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.protocol_buffer import StatusCode
from libp2p.relay.circuit_v2.resources import RelayLimits

from meshnode.node.limits import UploadLimiter
from meshnode.node.reach_config import ReachConfig
from protocol.certificate import Certificate, Role
from protocol.errors import ConfigError

log = logging.getLogger(__name__)

_K = TypeVar("_K")


def check_relay_role(reach: ReachConfig, certificate: Certificate) -> None:
    """`relay_service = true` needs a certificate with role relay: refuse to start otherwise."""
    if reach.relay_service and Role.RELAY.value not in certificate.roles:
        raise ConfigError("reach.relay_service = true needs a node certificate with role relay "
                          f"(this one has {', '.join(sorted(certificate.roles)) or 'none'}): "
                          "ask the admins for one (meshadmin ... --role relay) or set relay_service = false")


#: py-libp2p 0.8.1 reads a data limit of 0 as "none" when it sets up a circuit's shared budget, but then
#: falls back to the reservation's own accounting, where 0 means no byte may pass (protocol.py
#: `_relay_data` with `circuit_data_limit` None, resources.py `Reservation.track_data_transfer`): every
#: circuit was cut at its first read. A budget no transfer reaches stands for "no cap" instead.
NO_DATA_CAP = 1 << 62


def relay_limits(reach: ReachConfig) -> RelayLimits:
    """py-libp2p's limits from [reach]: no duration or data cap per circuit (a study may take long); the
    reservation lifetime; circuits per reserving peer; reservations at once."""
    return RelayLimits(duration=0, data=NO_DATA_CAP, max_circuit_conns=reach.relay_max_circuits_per_peer,
                       max_reservations=reach.relay_max_reservations,
                       reservation_ttl=reach.relay_reservation_seconds)


class _Unindexed(dict[ID, tuple[INetStream, INetStream | None]]):
    """Stands for CircuitV2Protocol._active_relays, which files each circuit's streams under one peer ID
    (the source's, then the destination's): with two circuits to one node, the first to end closed the
    streams filed under that node, the other circuit's. Nothing is filed here; CertifiedRelay._relay_data
    closes each circuit's own two streams when it ends."""

    def __setitem__(self, key: ID, value: tuple[INetStream, INetStream | None]) -> None:
        return None


@dataclass
class RelayCounters:
    refused_reservations: int = 0
    refused_circuits: int = 0
    refused_hop_streams: int = 0  # from peers without a valid certificate, refused unread
    relayed_bytes: int = 0
    circuits_total: int = 0


def pair_limit(per_peer: int) -> int:
    """Circuits one source may hold to one destination: a quarter of relay_max_circuits_per_peer, at least 1."""
    return max(1, per_peer // 4)


#: Whether a peer (base58 ID) holds a certificate valid now: the node's PeerRegistry.authorise, as a bool.
Authorised = Callable[[str], bool]


def _decrement(counts: dict[_K, int], key: _K) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


class CertifiedRelay(CircuitV2Protocol):
    """CircuitV2Protocol serving only certified nodes, within [reach]'s limits (module docstring)."""

    def __init__(self, host: IHost, reach: ReachConfig, authorised: Authorised) -> None:
        super().__init__(host, relay_limits(reach), allow_hop=True)
        self.authorised = authorised
        self.max_circuits = reach.relay_max_circuits
        self.limiter = UploadLimiter(reach.relay_mb_per_s)
        self.counters = RelayCounters()
        self.circuits_active = 0
        self.max_per_peer = reach.relay_max_circuits_per_peer
        self.pair_limit = pair_limit(reach.relay_max_circuits_per_peer)
        self._from_source: dict[ID, int] = {}  # circuits (open or being set up) a peer asked for
        self._pairs: dict[tuple[ID, ID], int] = {}  # the same per (source, destination)
        self._connecting: set[int] = set()  # hop streams whose CONNECT is being handled
        self._active_relays = _Unindexed()

    # -- the hooks into CircuitV2Protocol -------------------------------------------------------------
    async def _handle_hop_stream(self, stream: INetStream) -> None:
        """A hop stream from a peer without a valid certificate is refused before its message is read."""
        peer = stream.muxed_conn.peer_id
        if not self.authorised(peer.to_base58()):
            self.counters.refused_hop_streams += 1
            await self._refuse(stream, "hop stream", peer, "no valid certificate")
            return
        await super()._handle_hop_stream(stream)

    async def _handle_reserve(self, stream: INetStream, msg: HopMessage) -> None:
        peer = stream.muxed_conn.peer_id
        if msg.HasField("peer") and msg.peer.id and ID(msg.peer.id) != peer:
            await self._refuse(stream, "reservation", peer, "a reservation for another peer")
            return
        if not self.authorised(peer.to_base58()):
            await self._refuse(stream, "reservation", peer, "no valid certificate")
            return
        before = self.reservations_active()
        if not self.resource_manager.has_reservation(peer) and not self.resource_manager.can_accept_reservation(peer):
            self.counters.refused_reservations += 1  # the library answers RESOURCE_LIMIT_EXCEEDED
        await super()._handle_reserve(stream, msg)
        if self.reservations_active() > before:
            log.info("relay: reservation for %s", peer)

    async def _handle_connect(self, stream: INetStream, msg: HopMessage) -> None:
        source = stream.muxed_conn.peer_id
        if not self.authorised(source.to_base58()):
            await self._refuse(stream, "circuit", source, "no valid certificate")
            return
        try:
            destination = ID(msg.peer.id)
        except Exception:  # noqa: BLE001 - a malformed peer ID from the wire
            await self._refuse(stream, "circuit", source, "malformed destination")
            return
        if not self.authorised(destination.to_base58()):
            self.resource_manager._reservations.pop(destination, None)
            await self._refuse(stream, "circuit", source, "destination without a valid certificate",
                               StatusCode.NO_RESERVATION)
            return
        if self.circuits_active >= self.max_circuits:
            await self._refuse(stream, "circuit", source, f"relay_max_circuits ({self.max_circuits}) reached",
                               StatusCode.RESOURCE_LIMIT_EXCEEDED)
            return
        if not self.resource_manager.can_accept_connection(destination):
            code = (StatusCode.RESOURCE_LIMIT_EXCEEDED if self.resource_manager.has_reservation(destination)
                    else StatusCode.NO_RESERVATION)
            await self._refuse(stream, "circuit", source, "destination without a reservation or at its limit", code)
            return
        pair = (source, destination)
        if self._from_source.get(source, 0) >= self.max_per_peer:
            await self._refuse(stream, "circuit", source,
                               f"relay_max_circuits_per_peer ({self.max_per_peer}) from this peer reached",
                               StatusCode.RESOURCE_LIMIT_EXCEEDED)
            return
        if self._pairs.get(pair, 0) >= self.pair_limit:
            await self._refuse(stream, "circuit", source,
                               f"{self.pair_limit} circuits from this peer to {destination} already",
                               StatusCode.RESOURCE_LIMIT_EXCEEDED)
            return
        self.circuits_active += 1  # no await between the checks above and these counts
        self._from_source[source] = self._from_source.get(source, 0) + 1
        self._pairs[pair] = self._pairs.get(pair, 0) + 1
        self._connecting.add(id(stream))
        try:
            await super()._handle_connect(stream, msg)
        finally:
            self.circuits_active -= 1
            _decrement(self._from_source, source)
            _decrement(self._pairs, pair)
            self._connecting.discard(id(stream))

    async def _relay_data(self, src_stream: INetStream, dst_stream: INetStream, peer_id: ID,
                          deadline: float | None = None, circuit_data_limit: list[int] | None = None) -> None:
        if id(src_stream) in self._connecting:  # the source's direction of a circuit now established
            self._connecting.discard(id(src_stream))
            self.counters.circuits_total += 1
        try:
            await super()._relay_data(src_stream, dst_stream, peer_id, deadline, circuit_data_limit)
        finally:  # one direction ended: the circuit ends (what the library meant to do, see _Unindexed)
            await self._close_stream(src_stream)
            await self._close_stream(dst_stream)

    async def _handle_stop_stream(self, stream: INetStream) -> None:
        """A relay accepts no circuits through other relays (it is reachable itself): reset unread."""
        log.warning("relay: circuit (STOP) from %s refused: a relay reserves on no other", stream.muxed_conn.peer_id)
        await stream.reset()

    async def _read_stream_with_retry(self, stream: INetStream, max_retries: int = 3) -> bytes | None:
        """One read of a circuit's bytes (ciphertext): counted, and paced by relay_mb_per_s."""
        data = await super()._read_stream_with_retry(stream, max_retries)
        if data:
            self.counters.relayed_bytes += len(data)
            await self.limiter.consume(len(data))
        return data

    # -- our own --------------------------------------------------------------------------------------
    async def _refuse(self, stream: INetStream, what: str, peer: ID, reason: str,
                      code: StatusCode = StatusCode.PERMISSION_DENIED) -> None:
        if what == "reservation":
            self.counters.refused_reservations += 1
        elif what == "circuit":
            self.counters.refused_circuits += 1
        log.warning("relay: %s for %s refused: %s", what, peer, reason)
        await self._send_status(stream, code, f"{what} refused: {reason}")
        with trio.move_on_after(1):
            await stream.close()

    def reservations_active(self) -> int:
        self.resource_manager._clean_expired()
        return len(self.resource_manager._reservations)

    def drop_unauthorised(self) -> list[str]:
        """Drop the reservations of peers no longer authorised (a new roster revoked them); return them."""
        dropped = [pid for pid in list(self.resource_manager._reservations) if not self.authorised(pid.to_base58())]
        for pid in dropped:
            del self.resource_manager._reservations[pid]
            log.warning("relay: reservation of %s dropped: no longer a valid certificate", pid)
        return [pid.to_base58() for pid in dropped]

    def metrics(self) -> dict[str, tuple[str, str, float]]:
        """Prometheus metrics: name -> (type, help, value)."""
        c = self.counters
        return {
            "meshnode_relay_reservations_active": ("gauge", "Nodes holding a slot on this relay.",
                                                   self.reservations_active()),
            "meshnode_relay_circuits_active": ("gauge", "Relayed connections open through this relay.",
                                               self.circuits_active),
            "meshnode_relay_circuits_total": ("counter", "Relayed connections opened through this relay.",
                                              c.circuits_total),
            "meshnode_relay_bytes_total": ("counter", "Bytes relayed (ciphertext, both directions).",
                                           c.relayed_bytes),
            "meshnode_relay_refused_reservations_total": ("counter", "Reservations refused (revoked, forged, over the limit).",
                                                          c.refused_reservations),
            "meshnode_relay_refused_circuits_total": ("counter", "Circuits refused (revoked, no reservation, over a limit).",
                                                      c.refused_circuits),
            "meshnode_relay_refused_uncertified_total": ("counter", "Relay requests from uncertified peers, refused unread.",
                                                         c.refused_hop_streams),
        }
