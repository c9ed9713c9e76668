"""Reach a peer: resolve it through the directory, dial it, exchange certificates once.

Only addresses from verified, live, signed address records (DirectoryClient) are dialled; the
host refuses to dial anything else (common.p2p.dial_gate). A relayed address
(`<relay>/p2p-circuit/p2p/<peer>`) is dialled through its relay once that relay is checked (role relay) and
connected (meshnode.node.reach.Reach.check_relay).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio
from libp2p.peer.id import ID

from meshnode.directory.client import ResolvedPeer
from meshnode.node.context import NodeContext
from meshnode.node.wire import Wire
from common.p2p.circuit import is_circuit_addr
from common.p2p.dial import connect, is_connected
from protocol.certificate import Certificate
from protocol.errors import MeshError, UnavailableError

log = logging.getLogger(__name__)

DIAL_TIMEOUT = 10.0
RESOLVE_TTL = 30.0  # seconds a verified org resolution is reused before asking the directory again


@dataclass
class _Flight:
    """One directory lookup of an org under way, shared by every caller that asks meanwhile. `peers` is set
    only when the lookup returned and `error` only when it failed with a MeshError: when neither is (its
    caller was cancelled, or it failed with a bug), the lookup was abandoned and each joiner asks again."""

    done: trio.Event = field(default_factory=trio.Event)
    peers: list[ResolvedPeer] | None = None
    error: MeshError | None = None


class Sessions:
    def __init__(self, ctx: NodeContext, wire: Wire) -> None:
        self.ctx = ctx
        self.wire = wire
        self._locks: dict[str, trio.Lock] = {}
        self._resolved: dict[str, tuple[float, list[ResolvedPeer]]] = {}
        self._resolving: dict[str, _Flight] = {}
        #: checks and connects the relay of a relayed address before the circuit is dialled (meshnode.node.reach)
        self.reach_relay: Callable[[str], Awaitable[None]] | None = None

    async def org_peers(self, org: str) -> list[ResolvedPeer]:
        """Verified nodes of an org other than this one (directory, or its cache when it is down).

        A resolution is reused for RESOLVE_TTL seconds (or until a dial to one of
        its nodes fails); every reuse re-checks each certificate against the
        current roster, so a revocation applies at once. Concurrent callers for one
        org share one directory lookup (with hundreds of studies being fetched, an
        expired resolution was otherwise looked up hundreds of times at once).
        """
        while (flight := self._resolving.get(org)) is not None:  # a lookup is under way: its outcome is ours
            await flight.done.wait()
            if flight.error is not None:
                raise UnavailableError(str(flight.error))
            if flight.peers is not None:
                return list(flight.peers)
            # abandoned (its caller was cancelled, or it failed with a bug): never "no nodes"; ask again
        flight = self._resolving[org] = _Flight()
        try:
            peers = await self._org_peers(org)
            flight.peers = peers
            return list(peers)
        except MeshError as exc:
            flight.error = exc
            raise
        finally:
            del self._resolving[org]
            flight.done.set()

    async def _org_peers(self, org: str) -> list[ResolvedPeer]:
        now = self.ctx.clock()
        cached = self._resolved.get(org)
        skew = self.ctx.config.clock_skew
        if cached is not None and any(p.record is not None and now - skew > p.record.document.expires_at
                                      for p in cached[1]):
            cached = None  # an address record expired since: only live, verified records are dialled
        if cached is not None and cached[0] >= now:
            roster = self.ctx.roster()
            valid, reasons = [], []
            for p in cached[1]:
                cert = p.certificate.document
                if roster.is_revoked(cert.serial):
                    reasons.append(f"{p.peer_id}: certificate {cert.serial} is revoked")
                elif cert.not_after < now:
                    reasons.append(f"{p.peer_id}: certificate {cert.serial} expired")
                else:
                    valid.append(p)
            if not valid and reasons:
                raise UnavailableError(f"no valid node of {org}: " + "; ".join(reasons))
            return valid
        resolution = await self.ctx.directory.resolve_org(org)
        peers = [p for p in resolution.peers if p.peer_id != self.ctx.peer_id]
        if not peers and resolution.rejected:  # say why (e.g. revoked), and stay retryable
            raise UnavailableError(f"no valid node of {org}: " + "; ".join(r.reason for r in resolution.rejected))
        self._resolved[org] = (now + RESOLVE_TTL, peers)
        return peers

    def only_relayed(self, peer_id: str) -> bool:
        """Whether the peer's verified address record (as last resolved) lists relayed addresses only."""
        for _, peers in self._resolved.values():
            for p in peers:
                if p.peer_id == peer_id:
                    return bool(p.addrs) and all(is_circuit_addr(a) for a in p.addrs)
        return False

    async def ensure(self, peer: ResolvedPeer) -> Certificate:
        """Connected and certificates exchanged (once per connection)."""
        authorised = self._authorised_connection(peer.peer_id)
        if authorised is not None:  # the common case, without queueing behind the peer's lock
            return authorised
        lock = self._locks.setdefault(peer.peer_id, trio.Lock())
        async with lock:
            pid = ID.from_base58(peer.peer_id)
            dialled = not is_connected(self.wire.host, pid)
            if dialled:
                errors = []
                for addr in peer.addrs:
                    full = addr if addr.endswith(f"/p2p/{peer.peer_id}") else f"{addr}/p2p/{peer.peer_id}"
                    try:
                        if is_circuit_addr(full):  # a relayed address: its relay checked and connected first
                            if self.reach_relay is None:
                                raise UnavailableError("this node does not dial relayed addresses")
                            await self.reach_relay(full)
                        await connect(self.wire.host, full, timeout=DIAL_TIMEOUT)
                        break
                    except MeshError as exc:
                        errors.append(str(exc))
                else:
                    self._resolved.pop(peer.org_code, None)  # its address may have changed: ask again next time
                    raise UnavailableError(f"cannot reach {peer.peer_id} ({peer.org_code}): {'; '.join(errors)}")
            known = self.ctx.peers.certificate_of(peer.peer_id)
            if known is not None and not dialled:  # a new connection always starts with hello
                try:
                    return self.ctx.peers.authorise(peer.peer_id, self.ctx.clock())
                except MeshError:
                    pass
            return await self.wire.hello(peer.peer_id)

    async def ensure_peer_id(self, peer_id: str) -> Certificate:
        """Connected to this peer, its certificate valid now; resolved through the directory (and dialled) only
        when not connected already: a block request to a connected holder costs no directory lookup."""
        authorised = self._authorised_connection(peer_id)
        if authorised is not None:
            return authorised
        resolution = await self.ctx.directory.resolve_peer(peer_id)
        return await self.ensure(resolution.require()[0])

    def _authorised_connection(self, peer_id: str) -> Certificate | None:
        """The peer's certificate when this node is connected to it, has exchanged hellos on that connection
        and the certificate is valid now (PeerRegistry.authorise: roster, revocation, expiry); else None."""
        if not is_connected(self.wire.host, ID.from_base58(peer_id)) or self.ctx.peers.certificate_of(peer_id) is None:
            return None
        try:
            return self.ctx.peers.authorise(peer_id, self.ctx.clock())
        except MeshError:
            return None  # revoked, expired, ...: the slow path resolves and says hello again, and is refused
