"""Nodes in one process: real NodeContexts (SQLite metadata, block store in a temp folder), their real
drivers (Fetcher, Receiver, Sender, Wire's handlers), and an in-memory PeerLink between them instead of
libp2p, for tests on trio's MockClock.

What crosses the in-memory link is what crosses a stream: encoded request frames, answered by the
holder's `Wire.answer` / `Wire.answer_blocks` past its `Wire.gate` (certificate, limits), and encoded
responses, decoded and checked on the asking side as `Wire`'s client decodes them (BlockResponseReader).
Hostile or broken holders are set per node: `corrupting` flips a bit of every block it serves,
`silent` never answers a block request. Every block request is logged (`MemoryMesh.requests`).

The node's clock is the trio clock offset to NOW (certificates and the roster are valid around NOW), so
a MockClock drives both its timers and its decisions. Blocking work (the database, block files, hashing)
runs inline rather than on worker threads: with autojump, a task waiting for a thread counts as idle and
the clock would jump past request timeouts while the thread works; inline, virtual time moves only when
every node waits for a timer, and what the drivers decide does not depend on thread scheduling.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import trio

from meshnode.config import NodeConfig
from meshnode.directory.client import ResolvedPeer
from meshnode.study.ingest import Ingester
from meshnode.node import lifecycle as node_lifecycle
from meshnode.node.context import NodeContext
from meshnode.node.delivery import Deliveries, NodeTransport
from meshnode.node.fetcher import Fetcher
from meshnode.node.limits import PeerLimits
from meshnode.node.peers import PeerRegistry
from meshnode.node.receiver import Receiver
from meshnode.node.sender import Sender
from meshnode.node.wire import Wire
from meshnode.storage.audit import EventCode
from meshnode.storage.dbthread import DatabaseThread
from meshnode.storage.conflicts import received_revision
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.node_storage import NodeStorage
from meshnode.storage.records import InstanceRecord
from protocol.certificate import Certificate
from protocol.cid import CID
from protocol.lifecycle import ManifestEvent
from protocol.document import Signed, open_document
from protocol.errors import MeshError, RemoteProtocolError
from protocol.exchange_messages import (
    ANNOUNCE_PROTOCOL,
    BLOCKS_PROTOCOL,
    HAVE_PROTOCOL,
    HELLO_PROTOCOL,
    Announce,
    BlockData,
    BlockFrame,
    BlockRequest,
    BlockResponseReader,
    HaveRequest,
    Hello,
    Refused,
    decode_ack_reply,
    decode_have_reply,
    decode_hello_reply,
    encode_request,
    encode_response,
)
from protocol.keys import SigningKey
from protocol.manifest import Manifest, Priority, Purpose
from tests.protocol.factories import NOW, guard_with_roster, key, sign_certificate


T = TypeVar("T")


class InlineWorker:
    """A Worker (meshnode.node.worker) that runs the work on the event loop's thread, at once."""

    async def run(self, fn: Callable[[], T], limiter: trio.CapacityLimiter | None = None) -> T:
        await trio.lowlevel.checkpoint()
        return fn()


class InlineDatabase(DatabaseThread):
    """The database calls of DatabaseThread, inline (see InlineWorker)."""

    async def run(self, fn: Callable[[MetadataStore], T]) -> T:
        self.calls += 1
        await trio.lowlevel.checkpoint()
        return fn(self.store)


@dataclass(frozen=True)
class SeenRequest:
    """A block request as it left a node: who asked whom, under which manifest, for which blocks."""

    requester: str
    holder: str
    manifest_id: CID
    cids: tuple[CID, ...]
    #: when it left (trio's clock)
    at: float


@dataclass
class HarnessNode:
    name: str
    key: SigningKey
    ctx: NodeContext
    wire: Wire
    receiver: Receiver
    sender: Sender
    fetcher: Fetcher
    completed: dict[CID, list[InstanceRecord]] = field(default_factory=dict)
    failed: dict[CID, str] = field(default_factory=dict)
    done: trio.Event = field(default_factory=trio.Event)

    @property
    def peer_id(self) -> str:
        return self.key.peer_id

    @property
    def org(self) -> str:
        return self.ctx.org

    @property
    def store(self) -> MetadataStore:
        return self.ctx.storage.metadata


class MemoryMesh:
    """The nodes of one test and the links between them."""

    def __init__(self, root: Path, *, request_timeout: int = 30, upload_mb_per_s: float = 0.1) -> None:
        self.root = root
        self.request_timeout = request_timeout
        #: every node's upload cap (the Wire's own UploadLimiter, on the virtual clock)
        self.upload_mb_per_s = upload_mb_per_s
        self.nodes: dict[str, HarnessNode] = {}
        self.requests: list[SeenRequest] = []
        #: peers that flip a bit of every block they serve / never answer a block request
        self.corrupting: set[str] = set()
        self.silent: set[str] = set()
        #: peers every other node reaches through a relay (MemoryLink.relayed; the path is not slower here)
        self.relayed: set[str] = set()
        #: peers with no open connection now (MemoryLink.relayed: the path is unknown, None)
        self.unconnected: set[str] = set()
        self._serial = 100
        self._nursery: trio.Nursery | None = None

    def add(self, name: str, org: str, seed: int) -> HarnessNode:
        """A node of `org` with key(seed), its home at root/name (which may hold an ingested study)."""
        k = key(seed)
        self._serial += 1
        home = self.root / name
        home.mkdir(parents=True, exist_ok=True)
        storage = NodeStorage.open(home)
        config = NodeConfig(org=org, request_timeout=self.request_timeout, upload_mb_per_s=self.upload_mb_per_s)
        ctx = NodeContext(home=None, config=config, key=k,  # type: ignore[arg-type]  # no node home: not used
                          certificate=sign_certificate(k, org=org, serial_no=self._serial), storage=storage,
                          db=InlineDatabase(storage.metadata), peers=PeerRegistry(guard_with_roster()),
                          directory=None,  # type: ignore[arg-type]  # peers come from the mesh, not a directory
                          clock=lambda: NOW + trio.current_time(), worker=InlineWorker())
        holder: list[HarnessNode] = []

        async def accepted(signed: Signed[Manifest], at: float) -> None:
            await holder[0].fetcher.start(signed, holder=signed.document.sender_peer, since=at)

        async def recalled(manifest_id: CID) -> None:
            holder[0].fetcher.stop(manifest_id)

        async def complete(signed: Signed[Manifest], records: list[InstanceRecord]) -> None:
            node = holder[0]
            ms = int(ctx.clock() * 1000)

            def record(store: MetadataStore) -> None:
                # as the runtime does: a sender's revision replaces only its own lineage (protocol.conflict)
                store.add_instances(records, [], ms, [received_revision(signed.document.sender_org, str(signed.cid))]
                                    * len(records))
                node_lifecycle.move(store, signed.cid, ManifestEvent.VERIFIED)  # as the runtime does

            await ctx.db.run(record)
            node.completed[signed.cid] = records
            node.done.set()

        async def failed(signed: Signed[Manifest], reason: str) -> None:
            holder[0].failed[signed.cid] = reason
            holder[0].done.set()

        receiver = Receiver(ctx, accepted, recalled)
        # deliveries are queued (durably) but not driven: the mesh announces explicitly (MemoryMesh.announce)
        sender = Sender(ctx, Deliveries(ctx.db, ctx.clock, NodeTransport(ctx)))
        wire = Wire(ctx, None, receiver, sender,  # type: ignore[arg-type]  # no libp2p host: handlers only
                    PeerLimits(config.max_streams_per_peer, config.max_requests_per_second))
        node = HarnessNode(name, k, ctx, wire, receiver, sender, Fetcher(ctx, MemoryLink(self, k.peer_id),
                                                                         complete, failed))
        holder.append(node)
        self.nodes[k.peer_id] = node
        return node

    def node(self, peer_id: str) -> HarnessNode:
        return self.nodes[peer_id]

    def requests_by(self, node: HarnessNode) -> list[SeenRequest]:
        return [r for r in self.requests if r.requester == node.peer_id]

    def close(self) -> None:
        for node in self.nodes.values():
            node.ctx.storage.close()

    def nursery(self) -> trio.Nursery:
        if self._nursery is None:
            raise RuntimeError("MemoryMesh.run has not started")
        return self._nursery

    async def run(self, nursery: trio.Nursery) -> None:
        """Start every node's fetcher (the holders' answers run in `nursery` too)."""
        self._nursery = nursery
        for node in self.nodes.values():
            nursery.start_soon(node.fetcher.run)

    async def share(self, sender: HarnessNode, study_uid: str, orgs: list[str],
                    priority: Priority = Priority.ROUTINE) -> Signed[Manifest]:
        """The sender signs a manifest of the study for these recipient orgs (announce it with `announce`)."""
        return await sender.sender.share(study_uid, orgs, priority, Purpose.CARE)

    async def announce(self, sender: HarnessNode, to: HarnessNode, signed: Signed[Manifest]) -> None:
        """The sender's announcement reaching one recipient node (it accepts it and starts fetching)."""
        await MemoryLink(self, sender.peer_id).announce(to.peer_id, signed.encode())

    async def hello(self, asker: HarnessNode, holder: HarnessNode) -> None:
        """Certificates exchanged between two nodes, as on a new connection."""
        await MemoryLink(self, asker.peer_id).ensure_peer_id(holder.peer_id)


class MemoryLink:
    """One node's PeerLink over a MemoryMesh (meshnode.node.peer_link)."""

    def __init__(self, mesh: MemoryMesh, me: str) -> None:
        self.mesh = mesh
        self.me = me

    def _own(self) -> HarnessNode:
        return self.mesh.node(self.me)

    async def org_peers(self, org: str) -> list[ResolvedPeer]:
        return [ResolvedPeer(n.ctx.certificate, None) for n in self.mesh.nodes.values()
                if n.org == org and n.peer_id != self.me]

    async def _ask(self, peer_id: str, protocol_id: str, payload: bytes) -> bytes:
        holder = self.mesh.nodes.get(peer_id)
        if holder is None:
            raise RemoteProtocolError(f"no route to {peer_id}")
        return await holder.wire.answer(protocol_id, self.me, payload)

    async def ensure(self, peer: ResolvedPeer) -> None:
        await self.ensure_peer_id(peer.peer_id)

    async def ensure_peer_id(self, peer_id: str) -> None:
        own = self._own()
        if peer_id not in self.mesh.nodes:  # a node taken out of the mesh (stopped): a dial to it fails
            raise RemoteProtocolError(f"no route to {peer_id}")
        if own.ctx.peers.certificate_of(peer_id) is not None:
            return
        reply = decode_hello_reply(await self._ask(peer_id, HELLO_PROTOCOL,
                                                   encode_request(Hello(own.ctx.certificate.encode()))))
        if isinstance(reply, Refused):
            raise reply.to_error()
        own.ctx.peers.learn(peer_id, open_document(reply.certificate, Certificate), own.ctx.clock())

    async def have(self, peer_id: str, manifest_id: CID) -> bytes:
        reply = decode_have_reply(await self._ask(peer_id, HAVE_PROTOCOL, encode_request(HaveRequest(manifest_id))))
        if isinstance(reply, Refused):
            raise reply.to_error()
        return reply.bitmap

    async def announce(self, peer_id: str, manifest: bytes, certificate: bytes | None = None) -> None:
        await self.ensure_peer_id(peer_id)
        cert = certificate if certificate is not None else self._own().ctx.certificate.encode()
        reply = decode_ack_reply(await self._ask(peer_id, ANNOUNCE_PROTOCOL, encode_request(Announce(manifest, cert))))
        if isinstance(reply, Refused):
            raise reply.to_error()

    async def fetch_blocks(self, peer_id: str, request: BlockRequest) -> AsyncIterator[BlockFrame]:
        """The holder answers in a task of its own (paced by its upload cap, as over a stream), while the
        frames are read and checked here as they come."""
        mesh = self.mesh
        mesh.requests.append(SeenRequest(self.me, peer_id, request.manifest_id, request.cids, trio.current_time()))
        holder = mesh.nodes.get(peer_id)
        if holder is None:
            raise RemoteProtocolError(f"no route to {peer_id}")
        send, receive = trio.open_memory_channel[bytes | None](math.inf)
        mesh.nursery().start_soon(self._serve_blocks, holder, request, send)
        reader = BlockResponseReader(request)
        async with receive:
            async for payload in receive:
                if payload is None:
                    raise RemoteProtocolError(f"{peer_id} reset the block stream")
                yield reader.feed(payload)
        reader.end_of_stream()

    def relayed(self, peer_id: str) -> bool | None:
        if peer_id in self.mesh.unconnected:
            return None
        return peer_id in self.mesh.relayed

    async def _serve_blocks(self, holder: HarnessNode, request: BlockRequest,
                            send: trio.MemorySendChannel[bytes | None]) -> None:
        mesh = self.mesh

        async def write(frame: BlockFrame) -> None:
            if isinstance(frame, BlockData) and holder.peer_id in mesh.corrupting:
                frame = BlockData(frame.cid, frame.data[:-1] + bytes([frame.data[-1] ^ 1]))
            await send.send(encode_response(frame))

        async with send:
            try:
                if holder.peer_id in mesh.silent:
                    await trio.sleep_forever()
                async with holder.wire.gate(self.me, BLOCKS_PROTOCOL) as admission:
                    if admission.refusal is not None:
                        await send.send(admission.refusal)
                    else:
                        await holder.wire.answer_blocks(self.me, encode_request(request), write)
            except MeshError:  # the holder's handler failed: its stream is reset
                await send.send(None)
            except trio.BrokenResourceError:  # the asker stopped reading (its request ended)
                pass
            except BaseExceptionGroup as group:  # ... or went away while the holder's writer ran in a nursery
                _, rest = group.split(trio.BrokenResourceError)
                if rest is not None:
                    raise


def ingest_study(home: Path, source: Path, *, chunk_size: int) -> str:
    """Ingest the DICOM files under `source` into the node storage at `home`, as `meshnode ingest` does
    (call it outside trio: ingest runs a process pool); returns the study's UID."""
    home.mkdir(parents=True, exist_ok=True)
    storage = NodeStorage.open(home)
    try:
        report = Ingester(storage, chunk_size=chunk_size, workers=1).ingest([source])
    finally:
        storage.close()
    [study] = report.studies
    return study


async def wait_done(node: HarnessNode, manifest_id: CID, timeout: float) -> None:
    """Until the node completed or failed the manifest (virtual seconds, under a MockClock)."""
    with trio.fail_after(timeout):
        while manifest_id not in node.completed and manifest_id not in node.failed:
            await node.done.wait()
            node.done = trio.Event()


def alerts(node: HarnessNode, action: str) -> list[str]:
    """The actors of the node's Security Alert (110113) audit entries for `action`, oldest first."""
    return [e.event.actor for e in node.store.audit_entries()
            if e.event.code == EventCode.SECURITY_ALERT and e.event.action == action]
