"""Reaching a node behind NAT: the relay service (role relay), reservations on relays, relayed addresses.

Started by the runtime with the node's services ([reach] in node.toml, meshnode.node.reach_config):

- `relay_service = true` (needs a certificate with role relay, else ConfigError at start): runs
  CertifiedRelay (meshnode.node.relay_service) for certified nodes; at each new roster the reservations of
  nodes no longer certified are dropped (`roster_changed`).
- `reachability = "private"` or "auto" with relays configured: keeps a reservation on each relay of
  `relays` (dialled at its configured address, its certificate checked for role relay through hello
  before anything is reserved), refreshed at half its lifetime and at once when the connection to the
  relay drops, with protocol.backoff between failures. `addresses` gives the signed address record's
  addresses: `<relay>/p2p-circuit/p2p/<this node>` for each relay holding a slot, after the direct
  listen addresses unless private (then only the relayed ones); `changed` is set when they change, so
  the record is republished. Circuits are accepted only from these relays (common.p2p.circuit). The
  reservation is made again when the connection it was made on closes or is replaced (a relay restart),
  or when the relay misses pings (common.p2p.keepalive.watch_reservation).
- every relayed connection (not on a relay) is pinged; one that misses pings is closed so the next stream
  dials the peer again, through its other relays if this one is dead (common.p2p.keepalive).
- `hole_punching = true` (not on a relay): DCUtR (common.p2p.hole_punch) tries to replace each relayed
  connection, ours or a peer's, by a direct one; both sides need it on.

AutoNAT. py-libp2p 0.8.1's AutoNAT (libp2p/host/autonat/autonat.py) cannot tell a node behind NAT from a
public one here: the server answers a dial-back request with `host.connect`, which returns the connection
the request arrived on when one exists (basic_host.connect: `if peer_info.peer_id in
self._network.connections`), so every check succeeds; a real second connection to the same peer is
what our hosts refuse (max_connections_per_peer=1, common.p2p.host), and the dial-back addresses come
from the asking peer, which the dial gate refuses by design (common.p2p.dial_gate); the client also
wants four servers agreeing. So "auto" does what needs no verdict: with relays configured it reserves on
them and publishes its direct addresses first and the relayed ones after, so a peer that can reach it
directly does, and one that cannot falls back to the relay.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

import trio
from libp2p.abc import IHost
from libp2p.peer.id import ID
from libp2p.tools.anyio_service import background_trio_service

from common.p2p.circuit import CircuitReceiver, is_circuit_addr, reserve, split_circuit_addr
from common.p2p.dial import connect, is_connected
from common.p2p.hole_punch import GatedDCUtR
from common.p2p.keepalive import RelayedKeepalive, watch_reservation
from meshnode.node.context import NodeContext
from meshnode.node.reach_config import Reachability
from meshnode.node.relay_service import CertifiedRelay, check_relay_role
from meshnode.node.wire import Wire
from protocol.backoff import Backoff
from protocol.certificate import Role
from protocol.errors import MeshError, UnauthorisedError, UnavailableError

if TYPE_CHECKING:
    from trio_typing import TaskStatus

log = logging.getLogger(__name__)

#: seconds for a dial, hello or reservation on a relay
RELAY_TIMEOUT = 10.0
#: how often the connection to each relay is checked (a dropped connection loses the reservation)
RELAY_CHECK_INTERVAL = 2.0
RESERVE_BACKOFF = Backoff(base=1.0, factor=2.0, cap=120.0)


class Reach:
    def __init__(self, ctx: NodeContext, host: IHost, wire: Wire) -> None:
        self.ctx = ctx
        self.host = host
        self.wire = wire
        self.config = ctx.config.reach
        check_relay_role(self.config, ctx.certificate.document)
        self.relay: CertifiedRelay | None = (
            CertifiedRelay(host, self.config, self._authorised) if self.config.relay_service else None)
        self.relays: dict[str, ID] = {addr: split_circuit_addr(f"{addr}/p2p-circuit")[1]
                                      for addr in self.config.relays}
        #: DCUtR on relayed connections ([reach] hole_punching; a relay has none of its own)
        self.punch: GatedDCUtR | None = (
            GatedDCUtR(host, lambda pid: self._authorised(pid.to_base58()),
                       allow_private=self.config.hole_punch_private,
                       allow_loopback=self.config.hole_punch_loopback)
            if self.config.hole_punching and not self.config.relay_service else None)
        #: pings relayed connections; closes the dead ones so they are dialled again (common.p2p.keepalive)
        self.keepalive = RelayedKeepalive(host)
        #: relay address -> when its reservation expires (Unix seconds)
        self.reserved: dict[str, int] = {}
        self.changed = trio.Event()

    @property
    def uses_relays(self) -> bool:
        return bool(self.relays) and self.config.reachability is not Reachability.PUBLIC

    def _authorised(self, peer_id: str) -> bool:
        try:
            self.ctx.peers.authorise(peer_id, self.ctx.clock())
        except MeshError:
            return False
        return True

    def addresses(self, listen: list[str]) -> tuple[str, ...]:
        """The signed address record's addresses (module docstring)."""
        relayed = tuple(f"{addr}/p2p-circuit/p2p/{self.ctx.peer_id}" for addr in self.relays if addr in self.reserved)
        if self.config.reachability is Reachability.PRIVATE:
            return relayed
        return tuple(listen) + relayed

    def _changed(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def roster_changed(self) -> None:
        if self.relay is not None:
            self.relay.drop_unauthorised()

    def metrics(self) -> dict[str, tuple[str, str, float]]:
        out = self.relay.metrics() if self.relay is not None else {}
        if self.uses_relays:
            out["meshnode_reach_reservations"] = ("gauge", "Relays this node holds a slot on.", len(self.reserved))
        if not self.config.relay_service:
            out["meshnode_reach_relayed_closed_dead_total"] = (
                "counter", "Relayed connections closed after missed pings (a relay not forwarding).",
                self.keepalive.closed)
        if self.punch is not None:
            out["meshnode_reach_hole_punch_upgrades_total"] = (
                "counter", "Relayed connections replaced by a direct one (DCUtR).", self.punch.upgraded)
            out["meshnode_reach_hole_punch_refused_total"] = (
                "counter", "Hole-punch streams or dials refused (no relayed connection or certificate).",
                self.punch.refused)
        return out

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with AsyncExitStack() as stack, trio.open_nursery() as nursery:
            if self.relay is not None:
                await stack.enter_async_context(background_trio_service(self.relay))
                await self.relay.event_started.wait()
                log.info("relay service on: %d reservations, %d circuits at most", self.config.relay_max_reservations,
                         self.config.relay_max_circuits)
            if self.punch is not None:
                await stack.enter_async_context(background_trio_service(self.punch))
                await self.punch.event_started.wait()
            if not self.config.relay_service:  # a relay has no relayed connections of its own
                nursery.start_soon(self.keepalive.run)
            if self.uses_relays:
                receiver = CircuitReceiver(self.host, frozenset(self.relays.values()))
                await stack.enter_async_context(background_trio_service(receiver))
                await receiver.event_started.wait()
                for addr, relay_id in self.relays.items():
                    nursery.start_soon(self._keep_reservation, addr, relay_id)
            task_status.started()
            await trio.sleep_forever()

    async def _keep_reservation(self, addr: str, relay_id: ID) -> None:
        failures = 0
        while True:
            try:
                expires = await self._reserve(addr, relay_id)
            except MeshError as exc:
                failures += 1
                if self.reserved.pop(addr, None) is not None:
                    self._changed()
                log.warning("no reservation on relay %s (attempt %d): %s", relay_id, failures, exc)
                await trio.sleep(RESERVE_BACKOFF.delay(failures))
                continue
            failures = 0
            new = addr not in self.reserved
            self.reserved[addr] = expires
            if new:
                log.info("reserved a slot on relay %s until %d", relay_id, expires)
                self._changed()
            refresh_at = trio.current_time() + max(RELAY_CHECK_INTERVAL, (expires - self.ctx.clock()) / 2)
            why = await watch_reservation(self.host, relay_id, refresh_at, check_interval=RELAY_CHECK_INTERVAL)
            if why != "refresh":
                log.warning("reservation on relay %s %s: reserving again", relay_id,
                            "lost (connection closed or replaced)" if why == "lost" else "dead (missed pings)")
                self.reserved.pop(addr, None)
                self._changed()

    async def check_relay(self, circuit_addr: str) -> None:
        """Before a relayed address from a verified record is dialled: its relay must be a node whose
        certificate has role relay, as the directory says (checked before any dial) and as it says itself
        in hello once connected; the connection to it is made here. Raises UnauthorisedError otherwise."""
        _relay_part, relay_id = split_circuit_addr(circuit_addr)
        peer = relay_id.to_base58()
        if peer == self.ctx.peer_id:
            raise UnauthorisedError("a relayed address through this node itself")
        resolved = (await self.ctx.directory.resolve_peer(peer)).require()[0]
        if not resolved.certificate.document.has_role(Role.RELAY):
            raise UnauthorisedError(f"{peer} ({resolved.org_code}) named as a relay has no certificate role relay: "
                                    "not dialled")
        dialled = not is_connected(self.host, relay_id)
        if dialled:  # at the addresses of the relay's own verified record: relay_part (the target's) only names it
            await self._dial_relay(peer, [a for a in resolved.addrs if not is_circuit_addr(a)])
        if dialled or self.ctx.peers.certificate_of(peer) is None:
            cert = await self.wire.hello(peer)
        else:
            cert = self.ctx.peers.authorise(peer, self.ctx.clock())
        if not cert.has_role(Role.RELAY):
            await self.wire.disconnect(peer)
            raise UnauthorisedError(f"{peer} has no certificate role relay: no circuit through it")

    async def _dial_relay(self, peer: str, addrs: list[str]) -> None:
        errors = []
        for addr in addrs:
            full = addr if addr.endswith(f"/p2p/{peer}") else f"{addr}/p2p/{peer}"
            try:
                await connect(self.host, full, timeout=RELAY_TIMEOUT)
                return
            except MeshError as exc:
                errors.append(str(exc))
        raise UnavailableError(f"relay {peer}: no address of its own record answered: {'; '.join(errors) or 'none'}")

    async def _reserve(self, addr: str, relay_id: ID) -> int:
        """Connect to the relay at its configured address, check its certificate has role relay, reserve."""
        dialled = not is_connected(self.host, relay_id)
        await connect(self.host, addr, timeout=RELAY_TIMEOUT)
        peer = relay_id.to_base58()
        known = self.ctx.peers.certificate_of(peer)
        if known is None or dialled:  # a new connection always starts with hello (the relay learns our certificate)
            with trio.move_on_after(RELAY_TIMEOUT * 2) as scope:
                cert = await self.wire.hello(peer)
            if scope.cancelled_caught:
                raise UnavailableError(f"relay {peer} did not answer hello in {RELAY_TIMEOUT * 2:g} s")
        else:
            cert = self.ctx.peers.authorise(peer, self.ctx.clock())
        if not cert.has_role(Role.RELAY):
            await self.wire.disconnect(peer)
            raise UnauthorisedError(f"{peer} ({cert.org_code}) has no certificate role relay: not reserving on it")
        return await reserve(self.host, relay_id, timeout=RELAY_TIMEOUT)
