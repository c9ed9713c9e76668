"""The node's libp2p protocols: thin drivers between streams and the node's services.

Every inbound stream is authorised (PeerRegistry, after hello) and admitted by
the per-peer limits before its request is acted on; every handler ends at the
safe boundary of meshnode.p2p.streams, so one bad request never hurts the
connection's other streams.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import trio
from libp2p.abc import IHost, INetStream
from libp2p.peer.id import ID

from meshnode.node.context import NodeContext
from meshnode.node.limits import PeerLimits, UploadLimiter
from meshnode.node.policy import Access, authorise_manifest_access
from meshnode.node.receiver import Receiver
from meshnode.node.sender import Sender
from meshnode.p2p.streams import (
    finish_stream,
    grant_receive_window,
    half_close,
    open_stream,
    read_frame,
    serve_requests,
    serve_streams,
    write_frame,
)
from meshnode.storage.audit import AuditEvent, EventCode
from meshnode.storage.blockstore import BlockCorruptError, BlockMissingError
from meshnode.storage.records import hash_uid
from protocol.certificate import Certificate
from protocol.cid import CID
from protocol.document import open_document
from protocol.errors import LimitError, MeshError, RemoteProtocolError, StorageError, UnauthorisedError
from protocol.exchange_messages import (
    ANNOUNCE_PROTOCOL,
    BLOCKS_PROTOCOL,
    FRAME_LIMITS,
    HAVE_PROTOCOL,
    HELLO_PROTOCOL,
    RECALL_PROTOCOL,
    RECEIPT_PROTOCOL,
    UNAUTHORISED,
    Ack,
    Announce,
    BlockAbsent,
    BlockData,
    BlockFrame,
    BlockRequest,
    BlockResponseReader,
    Hello,
    HaveReply,
    HaveRequest,
    RecallDelivery,
    ReceiptDelivery,
    Refused,
    Response,
    decode_ack_reply,
    decode_announce,
    decode_block_request,
    decode_have_reply,
    decode_have_request,
    decode_hello,
    decode_hello_reply,
    decode_recall_delivery,
    decode_receipt_delivery,
    encode_block_data_frame,
    encode_request,
    encode_response,
    pack_bitmap,
)

if TYPE_CHECKING:
    from trio_typing import TaskStatus

log = logging.getLogger(__name__)

Handler = Callable[[str, bytes], Awaitable[Response]]

#: Blocks read from disk ahead of the one being sent, per block request.
READ_AHEAD = 4
#: Seconds between a peer's repeated limit violations and its disconnection.
CUT_OFF_GRACE = 1.0


class Wire:
    def __init__(self, ctx: NodeContext, host: IHost, receiver: Receiver, sender: Sender, limits: PeerLimits) -> None:
        self.ctx = ctx
        self.host = host
        self.receiver = receiver
        self.sender = sender
        self.limits = limits
        self.timeout = float(ctx.config.request_timeout)
        self.upload = UploadLimiter(ctx.config.upload_mb_per_s)
        self._nursery: trio.Nursery | None = None
        self._cutting_off: set[str] = set()

    # -- server side ---------------------------------------------------------------
    def serve(self) -> None:
        handlers: dict[str, Handler] = {
            HELLO_PROTOCOL: self._hello,
            ANNOUNCE_PROTOCOL: self._announce,
            HAVE_PROTOCOL: self._have,
            RECEIPT_PROTOCOL: self._receipt,
            RECALL_PROTOCOL: self._recall,
        }
        for protocol_id, handler in handlers.items():
            limits = FRAME_LIMITS[protocol_id]
            serve_requests(self.host, protocol_id, self._guarded(handler), max_request=limits.request,
                           max_response=limits.response, timeout=self.timeout)
        serve_streams(self.host, BLOCKS_PROTOCOL, self._blocks, timeout=self.timeout * 4)

    def _guarded(self, handler: Handler) -> Callable[[ID, bytes], Awaitable[bytes]]:
        async def run(peer: ID, payload: bytes) -> bytes:
            peer_id = peer.to_base58()
            try:
                async with self._admitted(peer_id):
                    try:
                        response = await handler(peer_id, payload)
                    except MeshError as exc:
                        response = Refused.from_error(exc)
            except LimitError as exc:  # not admitted: say so (the connection may be closed next)
                response = Refused.from_error(exc)
            return encode_response(response)

        return run

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Holds the tasks that cut off peers which keep exceeding their limits."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    @asynccontextmanager
    async def _admitted(self, peer_id: str) -> AsyncIterator[None]:
        try:
            self.limits.enter(peer_id, self.ctx.clock())
        except LimitError:
            if self.limits.should_disconnect(peer_id) and peer_id not in self._cutting_off:
                log.warning("peer %s keeps exceeding its limits: disconnecting it in %g s", peer_id, CUT_OFF_GRACE)
                self._cutting_off.add(peer_id)
                if self._nursery is not None:
                    self._nursery.start_soon(self._cut_off, peer_id)
                else:
                    await self._cut_off(peer_id)
            raise
        try:
            yield
        finally:
            self.limits.leave(peer_id)

    async def _cut_off(self, peer_id: str) -> None:
        """Disconnect a flooding peer after a short grace: the refusals already written to it reach it
        (closing at once would discard them) while everything it sends meanwhile is refused too."""
        try:
            await trio.sleep(CUT_OFF_GRACE)
            await self.disconnect(peer_id)
        finally:
            self._cutting_off.discard(peer_id)

    async def disconnect(self, peer_id: str) -> None:
        with trio.move_on_after(5):
            try:
                await self.host.disconnect(ID.from_base58(peer_id))
            except Exception as exc:  # noqa: BLE001 - disconnecting is best effort
                log.debug("disconnect %s: %r", peer_id, exc)

    async def _hello(self, peer_id: str, payload: bytes) -> Response:
        hello = decode_hello(payload)
        self.ctx.peers.learn(peer_id, open_document(hello.certificate, Certificate), self.ctx.clock())
        return Hello(self.ctx.certificate.encode())

    async def _announce(self, peer_id: str, payload: bytes) -> Response:
        announce = decode_announce(payload)
        await self.receiver.accept_announce(peer_id, announce.manifest, announce.certificate)
        return Ack()

    async def _have(self, peer_id: str, payload: bytes) -> Response:
        request = decode_have_request(payload)
        try:
            return HaveReply(pack_bitmap(await self.receiver.availability(peer_id, request.manifest_id)))
        except UnauthorisedError:
            return UNAUTHORISED

    async def _receipt(self, peer_id: str, payload: bytes) -> Response:
        delivery = decode_receipt_delivery(payload)
        await self.sender.accept_receipt(peer_id, delivery.receipt, delivery.certificate)
        return Ack()

    async def _recall(self, peer_id: str, payload: bytes) -> Response:
        delivery = decode_recall_delivery(payload)
        await self.receiver.accept_recall(peer_id, delivery.recall, delivery.certificate)
        return Ack()

    async def _blocks(self, peer: ID, stream: INetStream) -> None:
        peer_id = peer.to_base58()
        limits = FRAME_LIMITS[BLOCKS_PROTOCOL]
        async with self._admitted(peer_id):
            payload = await read_frame(stream, limits.request)
            if payload is None:
                return
            request = decode_block_request(payload)
            try:
                access = await authorise_manifest_access(self.ctx, peer_id, request.manifest_id, request.cids)
            except UnauthorisedError:
                await write_frame(stream, encode_response(UNAUTHORISED), limits.response)
                return
            org = access.certificate.org_code
            counts = self.ctx.served.setdefault(org, [0, 0])
            blocks = sent = 0
            try:
                send, receive = trio.open_memory_channel[BlockFrame](READ_AHEAD)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._read_ahead, request.cids, access.servable, send)
                    async with receive:
                        async for frame in receive:
                            if isinstance(frame, BlockData):
                                # paced before the write: a block is sent only once the cap has room for it
                                await self.upload.consume(len(frame.data))
                                await stream.write(encode_block_data_frame(frame.cid, frame.data, limits.response))
                                blocks += 1
                                sent += len(frame.data)
                                counts[0] += 1
                                counts[1] += len(frame.data)
                            else:
                                await write_frame(stream, encode_response(frame), limits.response)
            finally:
                if blocks:
                    with trio.CancelScope(shield=True):
                        try:
                            await self._record_served(peer_id, access, blocks, sent)
                        except MeshError as exc:  # the disk, say: never let it escape the stream handler
                            log.error("cannot record %d block(s) served to %s: %s", blocks, peer_id, exc)

    async def _record_served(self, peer_id: str, access: Access, blocks: int, nbytes: int) -> None:
        """What one block request served: counted per manifest and org (all time) and audited (110104)."""
        ms = int(self.ctx.clock() * 1000)
        org = access.certificate.org_code
        manifest_id = access.row.manifest_id
        await self.ctx.db.run(lambda s: s.add_served(manifest_id, org, blocks, nbytes, ms))
        await self.ctx.audit(AuditEvent(
            EventCode.INSTANCES_TRANSFERRED, "blocks-served", actor=peer_id, actor_org=org,
            study=hash_uid(access.row.study_uid), manifest_id=str(manifest_id),
            detail=f"{blocks} block(s), {nbytes} bytes"))

    async def _read_ahead(self, cids: tuple[CID, ...], servable: frozenset[CID],
                          send: trio.MemorySendChannel[BlockFrame]) -> None:
        """Read the requested blocks one by one (each verified against its CID) while earlier ones are sent.
        A block this node may not serve under the request's manifest is answered as absent, unread."""
        async with send:
            for cid in cids:
                if cid not in servable:
                    await send.send(BlockAbsent(cid))
                else:
                    await send.send(await trio.to_thread.run_sync(self._read_block, cid))

    def _read_block(self, cid: CID) -> BlockFrame:
        """Worker thread: the block, verified; BlockAbsent when it is not stored, or no longer matches its
        CID (the block store has then quarantined it, and meshnode.node.corruption forgets, audits and
        repairs it on the node's loop): the rest of the request is still served."""
        try:
            return BlockData(cid, self.ctx.storage.blocks.get(cid, verify=True))
        except (BlockMissingError, BlockCorruptError):
            return BlockAbsent(cid)
        except StorageError as exc:  # EIO, say: this block cannot be served now; the rest still can
            log.warning("cannot read block %s to serve it: %s", cid, exc)
            return BlockAbsent(cid)

    # -- client side ---------------------------------------------------------------
    async def _call(self, peer_id: str, protocol_id: str, payload: bytes) -> bytes:
        limits = FRAME_LIMITS[protocol_id]
        stream = await open_stream(self.host, ID.from_base58(peer_id), protocol_id)
        ok = False
        try:
            with trio.fail_after(self.timeout):
                await write_frame(stream, payload, limits.request)
                await half_close(stream)
                response = await read_frame(stream, limits.response)
            if response is None:
                raise RemoteProtocolError(f"{peer_id} closed the {protocol_id} stream without answering")
            ok = True
            return response
        except trio.TooSlowError:
            raise RemoteProtocolError(f"{peer_id} did not answer {protocol_id} in {self.timeout:g} s") from None
        finally:
            await finish_stream(stream, ok)

    async def hello(self, peer_id: str) -> Certificate:
        """Exchange certificates with a connected peer; returns its verified certificate."""
        raw = await self._call(peer_id, HELLO_PROTOCOL, encode_request(Hello(self.ctx.certificate.encode())))
        reply = decode_hello_reply(raw)
        if isinstance(reply, Refused):
            raise reply.to_error()
        return self.ctx.peers.learn(peer_id, open_document(reply.certificate, Certificate), self.ctx.clock())

    async def announce(self, peer_id: str, manifest: bytes, certificate: bytes | None = None) -> None:
        """Announce a manifest; `certificate`: its sender's, when relaying another org's manifest to a fellow
        recipient (default: this node's own, as the sender)."""
        cert = certificate if certificate is not None else self.ctx.certificate.encode()
        raw = await self._call(peer_id, ANNOUNCE_PROTOCOL, encode_request(Announce(manifest, cert)))
        reply = decode_ack_reply(raw)
        if isinstance(reply, Refused):
            raise reply.to_error()

    async def have(self, peer_id: str, manifest_id: CID) -> bytes:
        reply = decode_have_reply(await self._call(peer_id, HAVE_PROTOCOL, encode_request(HaveRequest(manifest_id))))
        if isinstance(reply, Refused):
            raise reply.to_error()
        return reply.bitmap

    async def deliver_receipt(self, peer_id: str, receipt: bytes) -> None:
        raw = await self._call(peer_id, RECEIPT_PROTOCOL,
                               encode_request(ReceiptDelivery(receipt, self.ctx.certificate.encode())))
        reply = decode_ack_reply(raw)
        if isinstance(reply, Refused):
            raise reply.to_error()

    async def deliver_recall(self, peer_id: str, recall: bytes) -> None:
        raw = await self._call(peer_id, RECALL_PROTOCOL,
                               encode_request(RecallDelivery(recall, self.ctx.certificate.encode())))
        reply = decode_ack_reply(raw)
        if isinstance(reply, Refused):
            raise reply.to_error()

    async def fetch_blocks(self, peer_id: str, request: BlockRequest) -> AsyncIterator[BlockFrame]:
        """The frames answering a block request, checked for order; raises on a protocol violation."""
        limits = FRAME_LIMITS[BLOCKS_PROTOCOL]
        stream = await open_stream(self.host, ID.from_base58(peer_id), BLOCKS_PROTOCOL)
        reader = BlockResponseReader(request)
        ok = False
        try:
            await grant_receive_window(stream)
            await write_frame(stream, encode_request(request), limits.request)
            await half_close(stream)
            while reader.expected is not None:
                payload = await read_frame(stream, limits.response)
                if payload is None:
                    reader.end_of_stream()
                    break
                yield reader.feed(payload)
            ok = True
        finally:
            await finish_stream(stream, ok)

