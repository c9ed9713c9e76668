"""Study requests between in-process nodes (tests/meshnode/node/harness.py): each HarnessNode gets the node's
real Requests service and RequestWire; a request frame crosses as the encoded payload, answered by the other
node's RequestWire.answer past its Wire.gate (certificate, limits), exactly what a libp2p stream gets."""

from __future__ import annotations

from dataclasses import dataclass, replace

from meshnode.node.request_wire import RequestWire
from meshnode.node.requests import Requests
from meshnode.node.request_config import RequestConfig
from protocol.errors import UnavailableError
from tests.meshnode.node.harness import HarnessNode, MemoryLink, MemoryMesh


@dataclass
class RequestNode:
    node: HarnessNode
    requests: Requests
    wire: RequestWire

    @property
    def org(self) -> str:
        return self.node.org

    @property
    def peer_id(self) -> str:
        return self.node.peer_id


class MemoryRequestLink:
    def __init__(self, mesh: MemoryMesh, nodes: dict[str, RequestNode], me: str) -> None:
        self.mesh = mesh
        self.nodes = nodes
        self.me = me

    async def call_peer(self, peer_id: str, protocol_id: str, payload: bytes) -> bytes:
        other = self.nodes.get(peer_id)
        if other is None:
            raise UnavailableError(f"no route to {peer_id}")
        await MemoryLink(self.mesh, self.me).ensure_peer_id(peer_id)  # hello, as on a new connection
        return await other.wire.answer(protocol_id, self.me, payload)

    async def call_org(self, org: str, protocol_id: str, payload: bytes) -> bytes:
        peers = [p for p, n in self.nodes.items() if n.org == org and p != self.me]
        if not peers:
            raise UnavailableError(f"no reachable node of {org}")
        return await self.call_peer(peers[0], protocol_id, payload)


class RequestMesh:
    """Request services on the nodes of a MemoryMesh."""

    def __init__(self, mesh: MemoryMesh) -> None:
        self.mesh = mesh
        self.nodes: dict[str, RequestNode] = {}

    def add(self, node: HarnessNode, config: RequestConfig | None = None) -> RequestNode:
        if config is not None:
            node.ctx.config = replace(node.ctx.config, requests=config)
        requests = Requests(node.ctx, node.sender, MemoryRequestLink(self.mesh, self.nodes, node.peer_id))
        entry = RequestNode(node, requests, RequestWire(node.wire, requests))
        self.nodes[node.peer_id] = entry
        return entry
