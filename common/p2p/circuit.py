"""Circuit Relay v2 from the client side: reserve a slot on a relay, open a circuit through one.

py-libp2p 0.8.1 has both inside `CircuitV2Transport`, which also discovers relays on its own (it asks
every connected peer whether it relays, and may reserve on them) and selects relays itself: a node
reserves only on the relays its operator configured and dials only the relay named by a verified
address record. So this module speaks the same messages (the library's protobufs and framing) with
none of that discovery. A circuit becomes an ordinary swarm connection (Noise and Yamux over the relay's
streams, end to end), tagged RELAYED (common.p2p.paths.is_relayed).
"""

from __future__ import annotations

import logging

import multiaddr
import trio
from libp2p.abc import IHost, INetConn, INetStream
from libp2p.connection_types import ConnectionType
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage
from libp2p.relay.circuit_v2.pb.circuit_pb2 import PeerId as CircuitPeerId
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.protocol_buffer import StatusCode
from libp2p.relay.circuit_v2.utils import read_delimited_msg, write_delimited_msg

from protocol.errors import LocalProtocolError, MeshError, UnavailableError
from protocol.keys import PublicKey

log = logging.getLogger(__name__)

CIRCUIT = "/p2p-circuit"


def is_circuit_addr(addr: multiaddr.Multiaddr | str) -> bool:
    return CIRCUIT in str(addr)


def split_circuit_addr(addr: multiaddr.Multiaddr | str) -> tuple[str, ID]:
    """"<relay transport>/p2p/<relay>/p2p-circuit[/p2p/<target>]" -> ("<relay transport>/p2p/<relay>", relay ID).

    Exactly one hop, and the relay's own part must name it by /p2p/<peer ID>: anything else is refused."""
    text = str(addr)
    relay, sep, rest = text.partition(CIRCUIT)
    if not sep or CIRCUIT in rest or (rest and not rest.startswith("/p2p/")) or "/p2p/" not in relay:
        raise LocalProtocolError(f"{text[:120]!r} is not a one-hop circuit address <relay>/p2p/<id>/p2p-circuit")
    transport, _, relay_id = relay.rpartition("/p2p/")
    if not transport or "/" in relay_id:
        raise LocalProtocolError(f"{text[:120]!r}: the relay part must end in /p2p/<peer ID>")
    try:
        PublicKey.from_peer_id(relay_id)  # every dicom-mesh node (a relay too) is an Ed25519 peer ID
        return relay, ID.from_base58(relay_id)
    except (MeshError, ValueError) as exc:
        raise LocalProtocolError(f"{text[:120]!r}: bad relay peer ID: {exc}") from None


async def _hop(host: IHost, relay: ID, msg: HopMessage, timeout: float) -> tuple[HopMessage, object]:
    stream = await host.new_stream(relay, [HOP_PROTOCOL])
    try:
        with trio.fail_after(timeout):
            await write_delimited_msg(stream, msg)
            answer = await read_delimited_msg(stream, HopMessage)
    except BaseException:
        await stream.reset()
        raise
    return answer, stream


def _status(answer: HopMessage) -> StatusCode:
    return StatusCode(answer.status) if answer.HasField("status") else StatusCode.MALFORMED_MESSAGE


async def reserve(host: IHost, relay: ID, *, timeout: float) -> int:
    """Reserve (or refresh) a slot on a connected relay; return when it expires (Unix seconds).

    Raises UnavailableError when the relay refuses (no certificate, over its limits) or does not answer."""
    try:
        answer, stream = await _hop(host, relay, HopMessage(type=HopMessage.RESERVE), timeout)
    except trio.TooSlowError:
        raise UnavailableError(f"relay {relay} did not answer a reservation in {timeout:g} s") from None
    except Exception as exc:  # noqa: BLE001 - libp2p stream errors of many kinds
        raise UnavailableError(f"reservation on relay {relay} failed: {exc!r}") from None
    await stream.close()  # type: ignore[attr-defined]
    status = _status(answer)
    if status != StatusCode.OK:
        raise UnavailableError(f"relay {relay} refused the reservation: {status.name}")
    return int(answer.reservation.expire) if answer.HasField("reservation") else 0


async def dial_circuit(host: IHost, relay: ID, peer: ID, addr: multiaddr.Multiaddr, *, timeout: float) -> INetConn:
    """Open a circuit to `peer` through a connected relay; it becomes the swarm's connection to `peer`
    (Noise checks that the far end holds `peer`'s key: the relay cannot stand in for it)."""
    network = host.get_network()
    if not isinstance(network, Swarm):
        raise LocalProtocolError("circuits need py-libp2p's Swarm")
    try:
        answer, stream = await _hop(host, relay, HopMessage(type=HopMessage.CONNECT,
                                                            peer=CircuitPeerId(id=peer.to_bytes())), timeout)
    except trio.TooSlowError:
        raise UnavailableError(f"relay {relay} did not open a circuit to {peer} in {timeout:g} s") from None
    except Exception as exc:  # noqa: BLE001 - libp2p stream errors of many kinds
        raise UnavailableError(f"circuit through {relay} to {peer} failed: {exc!r}") from None
    status = _status(answer)
    if status != StatusCode.OK:
        await stream.reset()  # type: ignore[attr-defined]
        raise UnavailableError(f"relay {relay} refused a circuit to {peer}: {status.name}")
    raw = RawConnection(stream=stream, initiator=True, connection_type=ConnectionType.RELAYED,  # type: ignore[arg-type]
                        addresses=[addr])
    try:
        with trio.fail_after(timeout):
            conn = await network.upgrade_outbound_raw_conn(raw, peer)
    except trio.TooSlowError:
        await raw.close()
        raise UnavailableError(f"circuit to {peer} through {relay}: no handshake in {timeout:g} s") from None
    except Exception as exc:  # noqa: BLE001 - security/muxer upgrade failures
        await raw.close()
        raise UnavailableError(f"circuit to {peer} through {relay}: {exc!r}") from None
    conn.set_transport_info([addr], ConnectionType.RELAYED)
    log.info("relayed connection to %s through %s", peer, relay)
    return conn


class CircuitReceiver(CircuitV2Protocol):
    """py-libp2p's Circuit Relay v2 protocol with the hop service off, accepting circuits (STOP streams) only
    from the relays this node reserved on: anyone else's STOP stream is reset unread. (The library accepts
    a STOP stream from any peer, which would let any connected peer pose as a relay and make connections
    appear to come from peers of its choosing, unauthenticated until Noise: refused here.)"""

    def __init__(self, host: IHost, relays: frozenset[ID]) -> None:
        super().__init__(host, allow_hop=False)
        self.relays = relays

    async def _handle_stop_stream(self, stream: INetStream) -> None:
        relay = stream.muxed_conn.peer_id
        if relay not in self.relays:
            log.warning("circuit (STOP) from %s refused: not one of our relays", relay)
            await stream.reset()
            return
        await super()._handle_stop_stream(stream)
