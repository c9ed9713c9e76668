"""A libp2p host (a node's, the directory's, meshadmin's): Ed25519 identity from a seed, TCP + Noise + Yamux.

Limits (docs/protocol/exchange.md, "Limits"): one connection per peer and
MAX_CONNECTIONS in all (py-libp2p's ConnectionConfig); receive windows
enforced and inbound streams per connection capped (common.p2p.muxer);
outbound dials only to addresses given to common.p2p.dial.connect
(common.p2p.dial_gate), never to addresses learnt from peers.

Bulk-transfer tuning of py-libp2p (buffered reads, one Noise message per
Yamux frame, batched window updates) is in common.p2p.tuning.

Only one stack is ever offered: TCP transport, Noise security, Yamux
multiplexing (DESIGN.md, "Wire invariants"). No TLS, SECIO, plaintext or
Mplex is advertised, so a peer cannot negotiate us down to a weaker or slower
stack.

Dial latency. py-libp2p 0.8.1's ``Swarm.dial_peer`` (libp2p/network/swarm.py,
``_HAPPY_EYEBALLS_DELAY = 0.250`` and the ``trio.move_on_after(...)`` wait
after each ``dial_task`` is started) gives each address a 250 ms head start
before the next one is tried. The wait only ends early when the attempt
*fails* (it sets ``failed_event``) or when ``len(connections) >=
connection_config.max_connections_per_peer``. A successful attempt sets
neither with the default limit of 3 connections per peer (at most 2
addresses are ever selected, so 3 is unreachable), so every successful dial
sleeps the full 250 ms. We set ``max_connections_per_peer=1``: the first
successful connection then cancels the head-start wait and any fallback
attempts, which is what go-libp2p does (first connection wins) and what we
want anyway (one Yamux connection per peer, all streams multiplexed on it).
This is an ordinary, documented ``ConnectionConfig`` field applied only to
hosts built here; no library code is patched. The upstreamable fix is to
set the event when the attempt finishes either way (``ev.set()`` in a
``finally``) and stop starting fallbacks once a connection exists.

Measured on loopback, one process, TCP + Noise + Yamux, 20 dials each to a
listening host (median, min-max): ``host.connect`` (``dial_peer``) with the
default config 251.3 ms (250.8-253.4); with ``max_connections_per_peer=1``
4.6 ms (4.2-7.3). ``common.p2p.dial.connect`` dials the given address with
``Swarm.dial_addr``, which never had the head start (4.4-4.9 ms either
way); the setting matters for every dial py-libp2p makes by peer ID, such
as ``new_stream`` to a peer with no open connection.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetConn
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.auto_connector import AutoConnector
from libp2p.network.config import ConnectionConfig
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID

from common.p2p.dial_gate import DialGate
from common.p2p.muxer import BoundedYamux
from common.p2p.muxer import install as install_bounded_muxer
from common.p2p.tuning import BufferedTCP, tune_process
from protocol.errors import LocalProtocolError, UnavailableError

logger = logging.getLogger(__name__)

SEED_SIZE = 32
#: Upper bound on closing a host (connections, listeners, background tasks).
CLOSE_TIMEOUT = 5.0


def key_pair_from_seed(seed: bytes) -> KeyPair:
    """The libp2p Ed25519 key pair for a 32-byte seed (RFC 8032 private key)."""
    if len(seed) != SEED_SIZE:
        raise LocalProtocolError(f"Ed25519 seed must be {SEED_SIZE} bytes, got {len(seed)}")
    return create_new_key_pair(seed)


def peer_id_from_seed(seed: bytes) -> ID:
    """The peer ID a host built from this seed will have."""
    return ID.from_pubkey(key_pair_from_seed(seed).public_key)


#: Connections open at once, inbound and outbound together. A node keeps one connection per peer it
#: exchanges with; the directory one per node (its roster watches), and a national mesh has hundreds of
#: nodes. py-libp2p's default is 300, of which only 250 inbound (it keeps `min_connections` 50 for its own
#: outbound dials). Past this, new inbound connections are closed at once; a node closes those of peers
#: without a verified certificate after 10 s (meshnode.node.wire.STRANGER_GRACE).
MAX_CONNECTIONS = 1024


def connection_config() -> ConnectionConfig:
    """Connection settings for our hosts; see the module docstring.

    One connection per peer (a second one to the same peer is trimmed), MAX_CONNECTIONS in all
    (`min_connections` 0, or py-libp2p keeps that many of them for outbound dials).
    """
    return ConnectionConfig(max_connections_per_peer=1, max_connections=MAX_CONNECTIONS,
                            min_connections=0, low_watermark=0, high_watermark=MAX_CONNECTIONS)


def make_host(seed: bytes) -> IHost:
    """Build (but do not start) a host whose identity is the seed's Ed25519 key."""
    key_pair = key_pair_from_seed(seed)
    tune_process()
    # The Noise static key is a fresh X25519 key per host, as in libp2p's own
    # new_swarm: identity is bound by the Ed25519 signature in the handshake
    # payload, not by the static key.
    noise = NoiseTransport(key_pair, noise_privkey=create_new_x25519_key_pair().private_key)
    gate = DialGate()
    host = new_host(
        key_pair=key_pair,
        sec_opt={TProtocol(NOISE_PROTOCOL_ID): noise},
        muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): BoundedYamux},
        transports=[BufferedTCP(gate.permits)],
        connection_config=connection_config(),
    )
    install_bounded_muxer(host)
    network = host.get_network()
    if isinstance(network, Swarm):
        network.auto_connector = _NoAutoConnector(network)
    logger.debug("built host %s", host.get_id())
    return host


class _NoAutoConnector(AutoConnector):
    """py-libp2p's auto-connector, never started.

    It dials peers from the peerstore (where identify puts whatever listen
    addresses a peer advertises) whenever a host has fewer connections than
    the midpoint of its watermarks, on every disconnect and every 30 s. A node
    dials only addresses from verified address records (common.p2p.dial);
    the dial gate would refuse these dials anyway, this saves attempting them.
    """

    async def start(self) -> None:
        logger.debug("auto-connector disabled")


def parse_multiaddr(addr: str) -> multiaddr.Multiaddr:
    """Parse a multiaddr string, turning parser errors into LocalProtocolError."""
    try:
        return multiaddr.Multiaddr(addr)
    except (ValueError, multiaddr.exceptions.Error) as exc:
        raise LocalProtocolError(f"invalid multiaddr {addr!r}: {exc}") from exc


def listen_multiaddrs(host: IHost) -> list[str]:
    """The addresses the host is actually bound to, each ending in /p2p/<peer ID>.

    Unlike ``host.get_addrs()`` this lists bound listeners only (no addresses
    peers reported observing), with the real port when 0 was requested.
    """
    suffix = multiaddr.Multiaddr(f"/p2p/{host.get_id()}")
    return [str(addr.encapsulate(suffix)) for addr in host.get_transport_addrs()]


async def close_host(host: IHost, timeout: float = CLOSE_TIMEOUT) -> None:
    """Close connections, listeners and background tasks, within ``timeout``.

    Shielded, so it also runs to completion (or its own deadline) when the
    caller is being cancelled.

    py-libp2p 0.8.1 spends two fixed ``trio.sleep(0.1)`` in closing each
    connection (``Yamux.close`` and ``SwarmConn._cleanup``) and
    ``Swarm.close`` closes connections one after another, so closing a host
    with N open connections took 0.2 x N s (measured: 20 connections, 4.07 s).
    Closing them concurrently first makes it ~0.2 s whatever N.
    """
    with trio.CancelScope(deadline=trio.current_time() + timeout, shield=True) as scope:
        async with trio.open_nursery() as nursery:
            for conns in list(host.get_network().get_connections_map().values()):
                for conn in list(conns):
                    nursery.start_soon(_close_connection, conn)
        await host.close()
    if scope.cancelled_caught:
        logger.warning("host %s did not close within %.1f s", host.get_id(), timeout)


async def _close_connection(conn: INetConn) -> None:
    # Task boundary: one connection failing to close must not stop the others.
    try:
        await conn.close()
    except Exception as exc:
        logger.debug("error closing connection to %s: %r", conn.muxed_conn.peer_id, exc)


@asynccontextmanager
async def running_host(
    seed: bytes,
    listen_addrs: Sequence[str],
    *,
    close_timeout: float = CLOSE_TIMEOUT,
) -> AsyncIterator[IHost]:
    """Run a host listening on ``listen_addrs`` for the duration of the block.

    The host's tasks live inside the caller's task tree (structured
    concurrency); leaving the block closes the host within ``close_timeout``.
    Raises UnavailableError when an address cannot be bound.
    """
    addrs = [parse_multiaddr(a) for a in listen_addrs]
    host = make_host(seed)
    # host.run() yields inside two nurseries, which wrap anything raised in
    # the block (by the caller or by our checks) in nested one-element
    # exception groups. The caller gets its own exception back, unchanged.
    raised: BaseException | None = None
    unwrapped: BaseException | None = None
    try:
        async with host.run(addrs):
            try:
                bound = host.get_transport_addrs()
                if len(bound) < len({str(a) for a in addrs}):
                    raise UnavailableError(
                        f"could not listen on all of {list(listen_addrs)}; "
                        f"bound {[str(a) for a in bound]}"
                    )
                logger.info(
                    "host %s listening on %s", host.get_id(), ", ".join(listen_multiaddrs(host))
                )
                yield host
            except BaseException as exc:
                raised = exc
                raise
            finally:
                await close_host(host, close_timeout)
                logger.info("host %s closed", host.get_id())
    except BaseExceptionGroup as group:
        if raised is None or _sole_leaf(group) is not raised:
            raise
        unwrapped = raised
    if unwrapped is not None:
        raise unwrapped


def _sole_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception inside nested one-element groups, else None."""
    current: BaseException = group
    while isinstance(current, BaseExceptionGroup):
        if len(current.exceptions) != 1:
            return None
        current = current.exceptions[0]
    return current
