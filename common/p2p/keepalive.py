"""Keepalive on connections that can die silently: relayed connections, and a node's connection to its relay.

A relay that stops forwarding without closing (compromised, stalled, partitioned with a NAT mapping expired
silently) leaves both ends with a connection that counts as open: `is_connected` stays true, so nothing
redials (common.p2p.dial.connect and meshnode.node.sessions.Sessions.ensure return the dead connection),
and with one connection per peer there is no second path. So every `interval` seconds each relayed
connection is pinged (libp2p ping, /ipfs/ping/1.0.0, which py-libp2p's hosts answer), each ping bounded by
`timeout`; after `misses` pings in a row fail the connection is closed, and the next stream to that peer
dials again: the peer's signed record in order, so through its other relays when the first is dead.

py-libp2p's own health monitoring (ConnectionConfig.enable_health_monitoring) is off by default and acts
on its connection pool, not on a relayed connection's liveness; a ping per connection is what we need and
it is interoperable.
"""

from __future__ import annotations

import logging

import trio
from libp2p.abc import IHost
from libp2p.host.ping import ID as PING
from libp2p.host.ping import perform_ping_roundtrip
from libp2p.peer.id import ID

from common.p2p.paths import connection_is_relayed

log = logging.getLogger(__name__)

#: seconds between pings of a relayed connection
PING_INTERVAL = 15.0
#: seconds one ping (stream open and round trip) may take
PING_TIMEOUT = 10.0
#: pings in a row that fail before the connection is closed
MAX_MISSES = 2
#: seconds closing a dead connection may take (its close frames may go nowhere)
CLOSE_TIMEOUT = 5.0


async def ping(host: IHost, peer: ID, timeout: float = PING_TIMEOUT) -> bool:
    """One ping round trip to a connected peer within `timeout` seconds."""
    with trio.move_on_after(timeout):
        try:
            stream = await host.new_stream(peer, [PING])
        except Exception as exc:  # noqa: BLE001 - any failure to open a stream is a missed ping
            log.debug("ping %s: no stream: %s", peer, exc)
            return False
        try:
            await perform_ping_roundtrip(stream)
            return True
        except Exception as exc:  # noqa: BLE001 - reset, EOF, mismatch: a missed ping
            log.debug("ping %s failed: %s", peer, exc)
            return False
        finally:
            with trio.move_on_after(1):
                await stream.reset()
    return False


async def close_connections(host: IHost, peer: ID, relayed_only: bool) -> None:
    """Close the peer's (relayed) connections, each bounded by CLOSE_TIMEOUT."""
    for conn in list(host.get_network().get_connections(peer)):
        if relayed_only and not connection_is_relayed(conn):
            continue
        with trio.move_on_after(CLOSE_TIMEOUT):
            try:
                await conn.close()
            except Exception as exc:  # noqa: BLE001 - a dead connection may fail to close cleanly
                log.debug("closing the connection to %s: %s", peer, exc)


class RelayedKeepalive:
    """Pings every relayed connection of a host; closes those that miss `misses` pings in a row."""

    def __init__(self, host: IHost, interval: float = PING_INTERVAL, timeout: float = PING_TIMEOUT,
                 misses: int = MAX_MISSES) -> None:
        self.host = host
        self.interval = interval
        self.timeout = timeout
        self.misses = misses
        self.closed = 0  # dead relayed connections closed
        self._missed: dict[ID, int] = {}

    def _relayed_peers(self) -> list[ID]:
        network = self.host.get_network()
        return [peer for peer in list(network.connections)
                if any(connection_is_relayed(c) and not c.is_closed for c in network.get_connections(peer))]

    async def _check(self, peer: ID) -> None:
        if await ping(self.host, peer, self.timeout):
            self._missed.pop(peer, None)
            return
        missed = self._missed.get(peer, 0) + 1
        self._missed[peer] = missed
        if missed >= self.misses:
            log.warning("relayed connection to %s missed %d pings: closing it (the next stream redials)",
                        peer, missed)
            self._missed.pop(peer, None)
            self.closed += 1
            await close_connections(self.host, peer, relayed_only=True)

    async def run(self) -> None:
        while True:
            await trio.sleep(self.interval)
            peers = self._relayed_peers()
            for gone in set(self._missed) - set(peers):
                self._missed.pop(gone, None)
            async with trio.open_nursery() as nursery:
                for peer in peers:
                    nursery.start_soon(self._check, peer)


def live_connection(host: IHost, peer: ID) -> object | None:
    """The first open connection to the peer (its identity tells a reconnection from the same connection)."""
    for conn in host.get_network().get_connections(peer):
        if not conn.is_closed:
            return conn
    return None


async def watch_reservation(host: IHost, relay: ID, until: float, *, check_interval: float = 2.0,
                            ping_interval: float = PING_INTERVAL, ping_timeout: float = PING_TIMEOUT,
                            misses: int = MAX_MISSES) -> str:
    """Wait while a reservation just made on `relay` holds; return why it no longer does:

    - "refresh": trio time `until` came (half its lifetime: reserve again, the slot is still there);
    - "lost": the connection the reservation was made on is closed or was replaced (a reservation lives in
      the relay's memory on that connection: a relay restart loses it even if something reconnected within
      `check_interval`, which `is_connected` alone would not see);
    - "dead": `misses` pings in a row failed (a relay that stopped answering without closing); the
      connection is closed here so that reserving again dials afresh.
    """
    conn = live_connection(host, relay)
    if conn is None:
        return "lost"
    missed = 0
    next_ping = trio.current_time() + ping_interval
    while trio.current_time() < until:
        if live_connection(host, relay) is not conn:
            return "lost"
        if trio.current_time() >= next_ping:
            if await ping(host, relay, ping_timeout):
                missed = 0
            else:
                missed += 1
                if missed >= misses:
                    await close_connections(host, relay, relayed_only=False)
                    return "dead"
            next_ping = trio.current_time() + ping_interval
            continue
        await trio.sleep(min(check_interval, max(0.0, until - trio.current_time())))
    return "refresh"
