"""A hostile (or just independent) peer for adversarial tests: the test process runs its own trio +
py-libp2p host with the key and certificate of a node home that was initialised and certified but never
started, dials a running node and speaks the exchange protocols to it directly, with documents it builds
and signs itself."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import trio
from libp2p.abc import IHost
from libp2p.exceptions import BaseLibp2pError
from libp2p.peer.id import ID

from meshnode.home import NodeHome
from common.p2p.dial import connect
from common.p2p.host import running_host
from common.p2p.streams import finish_stream, half_close, open_stream, read_frame, request, write_frame
from protocol.certificate import Certificate
from protocol.cid import CID
from protocol.document import Signed
from protocol.errors import MeshError
from protocol.exchange_messages import (
    ANNOUNCE_PROTOCOL,
    BLOCKS_PROTOCOL,
    FRAME_LIMITS,
    HAVE_PROTOCOL,
    HELLO_PROTOCOL,
    RECALL_PROTOCOL,
    Ack,
    Announce,
    BlockRequest,
    Hello,
    HaveRequest,
    RecallDelivery,
    Refused,
    decode_ack_reply,
    decode_have_reply,
    decode_hello_reply,
    encode_request,
)
from protocol.keys import SigningKey
from protocol.manifest import Manifest
from protocol.recall import Recall, RecallAction
from tests.protocol.factories import make_manifest
from meshnode.demo.identity import Node

T = TypeVar("T")

#: What ends a stream or connection that a node refused, reset or closed under us: py-libp2p's own errors
#: (stream, muxer, swarm: all BaseLibp2pError), ours (MeshError), trio's and the socket's. Attack tests
#: catch these, never a bare Exception, so an unexpected error still fails the test.
STREAM_ENDED: tuple[type[BaseException], ...] = (
    BaseLibp2pError, MeshError, trio.BrokenResourceError, trio.ClosedResourceError, OSError, EOFError)

#: Bound on any one exchange with a node (dial, hello, a request).
EXCHANGE_TIMEOUT = 10.0
SECURITY_ALERT = 110113
INSTANCES_TRANSFERRED = 110104


def study_uid() -> str:
    return f"1.2.826.0.1.3680043.8.498.{secrets.randbelow(10**12) + 1}"


def random_cid() -> CID:
    return CID.of(secrets.token_bytes(64))


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking MeshDemo call (a CLI process) without stalling our libp2p host."""
    return await trio.to_thread.run_sync(lambda: fn(*args))


async def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.3) -> Any:
    """Poll a real process's visible state (in a thread) until `check` is truthy, within `timeout`."""
    deadline = trio.current_time() + timeout
    while True:
        value = await trio.to_thread.run_sync(check)
        if value:
            return value
        if trio.current_time() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await trio.sleep(interval)  # polling a real process's visible state


@dataclass
class Client:
    """A certified node, played by the test process: raw exchange requests to a running node."""

    host: IHost
    key: SigningKey
    certificate: Signed[Certificate]

    @property
    def peer_id(self) -> str:
        return self.key.peer_id

    @property
    def org(self) -> str:
        return self.certificate.document.org_code

    async def connect(self, node: Node) -> ID:
        return await connect(self.host, node.addr, timeout=EXCHANGE_TIMEOUT)

    async def call(self, peer: ID, protocol_id: str, payload: bytes) -> bytes:
        limits = FRAME_LIMITS[protocol_id]
        return await request(self.host, peer, protocol_id, payload, max_request=limits.request,
                             max_response=limits.response, timeout=EXCHANGE_TIMEOUT)

    async def hello(self, peer: ID) -> Hello | Refused:
        return decode_hello_reply(await self.call(peer, HELLO_PROTOCOL, encode_request(Hello(self.certificate.encode()))))

    async def announce(self, peer: ID, manifest: Signed[Manifest],
                       certificate: Signed[Certificate] | None = None) -> Ack | Refused:
        cert = (certificate or self.certificate).encode()
        raw = await self.call(peer, ANNOUNCE_PROTOCOL, encode_request(Announce(manifest.encode(), cert)))
        return decode_ack_reply(raw)

    async def recall(self, peer: ID, manifest_id: CID, study: str) -> Ack | Refused:
        """Withdraw a manifest this client signed (or claims to have)."""
        recall = Recall(manifest_id, study, self.org, RecallAction.WITHDRAW, None, "withdrawn",
                        int(time.time())).sign(self.key)
        raw = await self.call(peer, RECALL_PROTOCOL,
                              encode_request(RecallDelivery(recall.encode(), self.certificate.encode())))
        return decode_ack_reply(raw)

    async def have(self, peer: ID, manifest_id: CID) -> object:
        return decode_have_reply(await self.call(peer, HAVE_PROTOCOL, encode_request(HaveRequest(manifest_id))))

    async def blocks(self, peer: ID, block_request: BlockRequest) -> list[bytes]:
        """Every frame of the answer, up to the end of the stream (raw payloads)."""
        limits = FRAME_LIMITS[BLOCKS_PROTOCOL]
        frames: list[bytes] = []
        with trio.fail_after(EXCHANGE_TIMEOUT):
            stream = await open_stream(self.host, peer, BLOCKS_PROTOCOL)
            try:
                await write_frame(stream, encode_request(block_request), limits.request)
                await half_close(stream)
                while (payload := await read_frame(stream, limits.response)) is not None:
                    frames.append(payload)
            finally:
                await finish_stream(stream, True)
        return frames

    def manifest(self, *, signer: SigningKey | None = None, **kw: Any) -> Signed[Manifest]:
        """A well-formed manifest signed by `signer` (default: this node) naming it as sender peer."""
        now = int(time.time())
        key = signer or self.key
        values: dict[str, Any] = dict(sender_org=self.certificate.document.org_code, created_at=now,
                                      expires_at=now + 86400, study_uid=study_uid())
        values.update(kw)
        return make_manifest(key, **values).sign(key)


@asynccontextmanager
async def client_for(node: Node) -> AsyncIterator[Client]:
    """A libp2p host in this process with the (never started) node's key and certificate."""
    home = NodeHome(node.home)
    key = home.signing_key()
    async with running_host(key.seed, ["/ip4/127.0.0.1/tcp/0"]) as host:
        yield Client(host, key, home.certificate())
