"""What the fetcher asks of other nodes: the seam between its decisions and the libp2p transport.

`PeerLink` is everything meshnode.node.fetcher needs to reach holders: which nodes an org runs, reach
one (connected, certificates exchanged), ask what it holds, relay a manifest to it, ask it for blocks.
`Libp2pLink` is the node's: the Wire's client side over Sessions. Tests drive the fetcher over an
in-memory link between node contexts in one process (tests/meshnode/node/harness.py), on trio's
MockClock, so its decisions are tested without sockets.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from libp2p.peer.id import ID

from meshnode.directory.client import ResolvedPeer
from meshnode.node.sessions import Sessions
from meshnode.node.wire import Wire
from common.p2p.dial import is_connected
from common.p2p.paths import path
from protocol.cid import CID
from protocol.exchange_messages import BlockFrame, BlockRequest


class PeerLink(Protocol):
    async def org_peers(self, org: str) -> list[ResolvedPeer]:
        """Verified nodes of an org other than this one; MeshError when it cannot be resolved."""

    async def ensure(self, peer: ResolvedPeer) -> None:
        """Connected to the peer and certificates exchanged; MeshError when it cannot be reached."""

    async def ensure_peer_id(self, peer_id: str) -> None:
        """Connected to the peer (resolving and dialling it only when not connected already)."""

    async def have(self, peer_id: str, manifest_id: CID) -> bytes:
        """The peer's availability bitmap for the manifest; UnauthorisedError when it refuses to say."""

    async def announce(self, peer_id: str, manifest: bytes, certificate: bytes | None = None) -> None:
        """Announce (or relay, with its sender's certificate) a manifest to the peer."""

    def fetch_blocks(self, peer_id: str, request: BlockRequest) -> AsyncIterator[BlockFrame]:
        """The frames answering a block request, checked for order; raises on a protocol violation."""

    def relayed(self, peer_id: str) -> bool | None:
        """Whether the peer is reached through a relay now (common.p2p.paths); when not connected: True if
        its verified address record lists only relayed addresses, else None (not known: keep the last)."""


class Libp2pLink:
    """The node's PeerLink: the Wire's client side, peers reached through Sessions."""

    def __init__(self, wire: Wire, sessions: Sessions) -> None:
        self.wire = wire
        self.sessions = sessions

    async def org_peers(self, org: str) -> list[ResolvedPeer]:
        return await self.sessions.org_peers(org)

    async def ensure(self, peer: ResolvedPeer) -> None:
        await self.sessions.ensure(peer)

    async def ensure_peer_id(self, peer_id: str) -> None:
        if not is_connected(self.wire.host, ID.from_base58(peer_id)):
            await self.sessions.ensure_peer_id(peer_id)

    async def have(self, peer_id: str, manifest_id: CID) -> bytes:
        return await self.wire.have(peer_id, manifest_id)

    async def announce(self, peer_id: str, manifest: bytes, certificate: bytes | None = None) -> None:
        await self.wire.announce(peer_id, manifest, certificate)

    def fetch_blocks(self, peer_id: str, request: BlockRequest) -> AsyncIterator[BlockFrame]:
        return self.wire.fetch_blocks(peer_id, request)

    def relayed(self, peer_id: str) -> bool | None:
        known = path(self.wire.host, peer_id)
        if known is None and self.sessions.only_relayed(peer_id):
            return True  # not connected, and it can only be reached through a relay (e.g. a resumed fetch)
        return known
