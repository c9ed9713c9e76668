"""The node's libp2p protocols: thin drivers between streams and the node's services.

Every inbound stream passes Wire.gate before its first byte is read: any
protocol but hello needs a certificate verified by hello (PeerRegistry) or is
refused unread; then the per-peer limits (concurrent streams, request rate);
then the request frame's bytes, from its length prefix, against the per-peer
and node-wide byte budgets (ByteBudget). Every refused hello is audited. Every
handler ends at the safe boundary of common.p2p.streams, so one bad request
never hurts the connection's other streams.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING

import trio
from libp2p.abc import IHost, INetStream
from libp2p.rcmgr import Direction
from libp2p.peer.id import ID

from meshnode.node.context import NodeContext
from meshnode.node.forward_reports import accept_forward_report
from meshnode.node.limits import ByteBudget, OutboundSlots, PeerLimits, UploadLimiter
from meshnode.node.policy import authorise_manifest_access
from meshnode.node.receiver import Receiver
from meshnode.node.sender import Sender
from meshnode.node.served import ServedLedger
from common.p2p.streams import (
    Admission,
    close_unread,
    finish_stream,
    grant_receive_window,
    half_close,
    network_endings_unavailable,
    open_stream,
    read_frame,
    serve_requests,
    serve_streams,
    write_frame,
)
from meshnode.storage.audit import AuditEvent, EventCode, Outcome
from meshnode.storage.blockstore import BlockCorruptError, BlockMissingError
from protocol.admission import Lane, lane_of
from protocol.certificate import Certificate
from protocol.cid import CID
from protocol.document import open_document
from protocol.errors import (
    DecodeError,
    DocumentError,
    ForgedCertificateError,
    LimitError,
    LocalProtocolError,
    MeshError,
    RemoteProtocolError,
    SignatureError,
    StorageError,
    UnauthorisedError,
)
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
    ForwardReportDelivery,
    FORWARD_REPORT_PROTOCOL,
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
    decode_forward_report_delivery,
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
#: Bytes of blocks read per worker-thread call while serving a block request (at least one block).
READ_BATCH_BYTES = 2 * 1024 * 1024
#: Seconds between a peer's repeated limit violations and its disconnection.
CUT_OFF_GRACE = 1.0
#: Request-frame bytes in flight from one peer, and from all peers together (see ByteBudget): one
#: announce of the largest size is admitted alone; smaller requests share these.
PEER_BYTES_IN_FLIGHT = 16 * 1024 * 1024
NODE_BYTES_IN_FLIGHT = 24 * 1024 * 1024
#: A peer without a verified certificate that keeps sending requests is audited at most this often (s).
UNKNOWN_AUDIT_INTERVAL = 60.0
MAX_TRACKED_UNKNOWN = 4096
AUDIT_DETAIL_CHARS = 300
#: Seconds an inbound connection may stay open without its peer presenting a valid certificate (hello).
STRANGER_GRACE = 10.0
STRANGER_CHECK_INTERVAL = 2.0
#: The answer to any request but hello from a peer whose certificate is not verified (its request is not read):
#: the access rule's one refusal, byte for byte, so it says nothing the peer could not know already.
UNKNOWN_PEER = UNAUTHORISED


class Wire:
    def __init__(self, ctx: NodeContext, host: IHost, receiver: Receiver, sender: Sender, limits: PeerLimits,
                 budget: ByteBudget | None = None) -> None:
        self.ctx = ctx
        self.host = host
        self.receiver = receiver
        self.sender = sender
        self.limits = limits
        self.timeout = float(ctx.config.request_timeout)
        self.upload = UploadLimiter(ctx.config.upload_mb_per_s)
        self.served = ServedLedger(ctx)
        self.budget = budget or ByteBudget(PEER_BYTES_IN_FLIGHT, NODE_BYTES_IN_FLIGHT)
        self.outbound = OutboundSlots()
        self._nursery: trio.Nursery | None = None
        self._cutting_off: set[str] = set()
        self._unknown_audited: dict[str, float] = {}
        self._hello_refusals: dict[str, tuple[float, int]] = {}
        self.stranger_grace = STRANGER_GRACE

    # -- server side ---------------------------------------------------------------
    def _handlers(self) -> dict[str, Handler]:
        return {
            HELLO_PROTOCOL: self._hello,
            ANNOUNCE_PROTOCOL: self._announce,
            HAVE_PROTOCOL: self._have,
            RECEIPT_PROTOCOL: self._receipt,
            RECALL_PROTOCOL: self._recall,
            FORWARD_REPORT_PROTOCOL: self._forward_report,
        }

    def serve(self) -> None:
        for protocol_id, handler in self._handlers().items():
            limits = FRAME_LIMITS[protocol_id]
            serve_requests(self.host, protocol_id, self._guarded(handler), max_request=limits.request,
                           max_response=limits.response, timeout=self.timeout, gate=self._gate_for(protocol_id))
        serve_streams(self.host, BLOCKS_PROTOCOL, self._blocks, timeout=self.timeout * 4)

    def _guarded(self, handler: Handler) -> Callable[[ID, bytes], Awaitable[bytes]]:
        """The handler's answer, or its refusal; admission was decided by the gate, before the request was read."""
        async def run(peer: ID, payload: bytes) -> bytes:
            return await self._answer(handler, peer.to_base58(), payload)

        return run

    async def _answer(self, handler: Handler, peer_id: str, payload: bytes) -> bytes:
        try:
            response = await handler(peer_id, payload)
        except MeshError as exc:
            response = Refused.from_error(exc)
        return encode_response(response)

    async def answer(self, protocol_id: str, peer_id: str, payload: bytes) -> bytes:
        """The encoded answer to one request frame's payload of a request/response protocol, past the same gate
        and handler a stream of it passes (frame size and stream limits aside): what an in-process transport
        delivers instead of a libp2p stream."""
        handler = self._handlers().get(protocol_id)
        if handler is None:
            raise LocalProtocolError(f"no request/response protocol {protocol_id}")
        async with self.gate(peer_id, protocol_id) as admission:
            if admission.refusal is not None:
                return admission.refusal
            if admission.reserve is not None:
                await admission.reserve(len(payload))
            return await self._answer(handler, peer_id, payload)

    def _gate_for(self, protocol_id: str) -> Callable[[ID], AbstractAsyncContextManager[Admission]]:
        def gate(peer: ID) -> AbstractAsyncContextManager[Admission]:
            return self.gate(peer.to_base58(), protocol_id)

        return gate

    @asynccontextmanager
    async def gate(self, peer_id: str, protocol_id: str) -> AsyncIterator[Admission]:
        """Every inbound stream passes here before its first byte is read (DESIGN.md, wire invariants).

        Any protocol but hello: the peer must hold a certificate valid now (PeerRegistry.authorise),
        else it is refused without reading its request. Then the per-peer limits (concurrent streams,
        request rate; a request over its lane's concurrency waits for a slot rather than being refused), then
        the request frame's bytes against the per-peer and node-wide byte budgets.
        """
        if protocol_id != HELLO_PROTOCOL:
            try:
                self.ctx.peers.authorise(peer_id, self.ctx.clock())
            except UnauthorisedError:
                await self._refused_unknown(peer_id, protocol_id)
                yield Admission(refusal=encode_response(UNKNOWN_PEER))
                return
        lane = lane_of(protocol_id)
        try:
            await self._enter(peer_id, lane)
        except LimitError as exc:  # not admitted: say so (the connection may be closed next)
            log.debug("%s from %s refused: %s", protocol_id, peer_id, exc)
            yield Admission(refusal=encode_response(Refused.from_error(exc)))
            return
        reserved = 0

        async def reserve(n: int) -> None:
            nonlocal reserved
            await self.budget.acquire(peer_id, n)
            reserved += n

        try:
            yield Admission(reserve=reserve)
        finally:
            self.limits.leave(peer_id, lane)
            if reserved:
                self.budget.release(peer_id, reserved)

    async def _refused_unknown(self, peer_id: str, protocol_id: str) -> None:
        """A request from a peer without a verified certificate: audited once a minute per peer (a flood of
        them must not become a flood of audit writes), logged at debug otherwise."""
        now = self.ctx.clock()
        last = self._unknown_audited.get(peer_id)
        if last is not None and now - last < UNKNOWN_AUDIT_INTERVAL:
            log.debug("%s from unknown peer %s refused", protocol_id, peer_id)
            return
        if len(self._unknown_audited) >= MAX_TRACKED_UNKNOWN:
            self._unknown_audited.clear()
        self._unknown_audited[peer_id] = now
        log.warning("%s from %s refused: no verified certificate", protocol_id, peer_id)
        await self.ctx.audit(AuditEvent(EventCode.SECURITY_ALERT, "unknown-peer-refused", Outcome.MINOR_FAILURE,
                                        actor=peer_id, detail=f"{protocol_id} before a valid hello; not read"))

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Holds the tasks that cut off peers which keep exceeding their limits, and the one that closes
        inbound connections of peers that have not presented a valid certificate in time."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._close_strangers)
            await nursery.start(self.served.run)
            task_status.started()
            await trio.sleep_forever()

    async def _close_strangers(self) -> None:
        """An inbound connection whose peer has no verified certificate `stranger_grace` seconds after it was
        first seen is closed: connections are a shared, capped resource (MAX_CONNECTIONS) that a peer without
        a certificate must not be able to hold. Outbound connections (the directory) are never closed here."""
        first_seen: dict[str, float] = {}
        while True:
            await trio.sleep(min(self.stranger_grace, STRANGER_CHECK_INTERVAL))
            now = trio.current_time()
            strangers: set[str] = set()
            for peer, conns in list(self.host.get_network().get_connections_map().items()):
                peer_id = peer.to_base58()
                if any(getattr(c, "direction", None) == Direction.INBOUND and not c.is_closed for c in conns) \
                        and self.ctx.peers.certificate_of(peer_id) is None:
                    strangers.add(peer_id)
            for peer_id in list(first_seen):
                if peer_id not in strangers:
                    del first_seen[peer_id]
            for peer_id in strangers:
                seen = first_seen.setdefault(peer_id, now)
                if now - seen >= self.stranger_grace:
                    log.info("closing the connection of %s: no valid certificate after %g s", peer_id,
                             self.stranger_grace)
                    del first_seen[peer_id]
                    self._nursery_or_raise().start_soon(self.disconnect, peer_id)

    def _nursery_or_raise(self) -> trio.Nursery:
        if self._nursery is None:
            raise LocalProtocolError("Wire.run is not running")
        return self._nursery

    async def _enter(self, peer_id: str, lane: Lane) -> None:
        """Admit one inbound stream under the per-peer limits (protocol.admission): at once, or once a slot
        of its lane is free (it waits, unread, at most half the request timeout); or raise LimitError, and cut off
        a peer whose refusals show sustained abuse. Every successful _enter is paired with limits.leave."""
        try:
            await self.limits.enter(peer_id, lane, self.ctx.clock, self.timeout / 2)
        except LimitError:
            if self.limits.should_disconnect(peer_id, self.ctx.clock()) and peer_id not in self._cutting_off:
                log.warning("peer %s keeps exceeding its limits: disconnecting it in %g s", peer_id, CUT_OFF_GRACE)
                self._cutting_off.add(peer_id)
                self.limits.disconnected += 1
                if self._nursery is not None:
                    self._nursery.start_soon(self._cut_off, peer_id)
                else:
                    await self._cut_off(peer_id)
            raise

    async def _cut_off(self, peer_id: str) -> None:
        """Disconnect a flooding peer after a short grace: the refusals already written to it reach it
        (closing at once would discard them) while everything it sends meanwhile is refused too."""
        try:
            await trio.sleep(CUT_OFF_GRACE)
            await self.disconnect(peer_id)
            await self.ctx.audit(AuditEvent(EventCode.SECURITY_ALERT, "peer-cut-off", Outcome.SERIOUS_FAILURE,
                                            actor=peer_id, detail="kept exceeding its admission limits; disconnected"))
        finally:
            self._cutting_off.discard(peer_id)

    async def disconnect(self, peer_id: str) -> None:
        with trio.move_on_after(5):
            try:
                await self.host.disconnect(ID.from_base58(peer_id))
            except Exception as exc:  # noqa: BLE001 - disconnecting is best effort
                log.debug("disconnect %s: %r", peer_id, exc)

    async def _hello(self, peer_id: str, payload: bytes) -> Response:
        """Learn the peer's certificate. Every refusal is audited (110113) with its reason; a certificate that
        does not decode or verify (or a hello that does not decode) is a certificate error
        (ForgedCertificateError), whatever broke in it."""
        try:
            certificate = decode_hello(payload).certificate
        except DecodeError as exc:
            certificate = b""
            log.debug("garbled hello from %s: %s", peer_id, exc)
        await self._learn(peer_id, certificate)
        return Hello(self.ctx.certificate.encode())

    async def _learn(self, peer_id: str, raw: bytes) -> Certificate:
        """The peer's certificate, verified and recorded (PeerRegistry.learn); any refusal is audited."""
        presented: Certificate | None = None
        try:
            try:
                signed = open_document(raw, Certificate)
            except (DecodeError, SignatureError, DocumentError) as exc:
                raise ForgedCertificateError(f"certificate does not decode or verify: {exc}") from None
            presented = signed.document
            return self.ctx.peers.learn(peer_id, signed, self.ctx.clock())
        except MeshError as exc:
            log.warning("hello with %s refused: %s: %s", peer_id, exc.name, exc)
            org = presented.org_code if presented is not None else ""
            serial = f" (certificate {presented.serial} of {org})" if presented is not None else ""
            await self._audit_refused_hello(peer_id, org, f"{exc.name}: {exc}{serial}")
            raise

    async def _audit_refused_hello(self, peer_id: str, org: str, reason: str) -> None:
        """One Security Alert per refused hello, except that a peer repeating them is summarised: within
        UNKNOWN_AUDIT_INTERVAL of its last entry they are counted, and the count goes in its next entry (so
        every refusal is accounted for, and a flood of bad hellos is not a flood of audit writes)."""
        now = self.ctx.clock()
        last, held = self._hello_refusals.get(peer_id, (None, 0))
        if last is not None and now - last < UNKNOWN_AUDIT_INTERVAL:
            self._hello_refusals[peer_id] = (last, held + 1)
            return
        if len(self._hello_refusals) >= MAX_TRACKED_UNKNOWN:
            self._hello_refusals.clear()
        self._hello_refusals[peer_id] = (now, 0)
        more = f" [+{held} more refused hello(s) from this peer before this one]" if held else ""
        await self.ctx.audit(AuditEvent(EventCode.SECURITY_ALERT, "hello-refused", Outcome.SERIOUS_FAILURE,
                                        actor=peer_id, actor_org=org, detail=(reason + more)[:AUDIT_DETAIL_CHARS]))

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

    async def _forward_report(self, peer_id: str, payload: bytes) -> Response:
        delivery = decode_forward_report_delivery(payload)
        await accept_forward_report(self.ctx, peer_id, delivery.report, delivery.certificate)
        return Ack()

    async def _recall(self, peer_id: str, payload: bytes) -> Response:
        delivery = decode_recall_delivery(payload)
        await self.receiver.accept_recall(peer_id, delivery.recall, delivery.certificate)
        return Ack()

    async def _blocks(self, peer: ID, stream: INetStream) -> None:
        peer_id = peer.to_base58()
        limits = FRAME_LIMITS[BLOCKS_PROTOCOL]
        async with self.gate(peer_id, BLOCKS_PROTOCOL) as admission:
            if admission.refusal is not None:
                await write_frame(stream, admission.refusal, limits.response)
                await close_unread(stream)  # the request is dropped unread
                return
            payload = await read_frame(stream, limits.request, reserve=admission.reserve)
            if payload is None:
                return

            async def write(frame: BlockFrame) -> None:
                if isinstance(frame, BlockData):
                    await stream.write(encode_block_data_frame(frame.cid, frame.data, limits.response))
                else:
                    await write_frame(stream, encode_response(frame), limits.response)

            await self.answer_blocks(peer_id, payload, write)

    async def answer_blocks(self, peer_id: str, payload: bytes, write: Callable[[BlockFrame], Awaitable[None]]) -> None:
        """Answer an admitted block request (its frame's payload): the access rule's refusal, or one frame per
        requested block in order, each paced by the upload cap before `write`; every block sent is counted."""
        request = decode_block_request(payload)
        try:
            access = await authorise_manifest_access(self.ctx, peer_id, request.manifest_id, request.cids)
        except UnauthorisedError:
            await write(UNAUTHORISED)
            return
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
                            await write(frame)
                            blocks += 1
                            sent += len(frame.data)
                        else:
                            await write(frame)
        finally:
            if blocks:  # every block sent, counted and (batched) audited: meshnode.node.served
                self.served.add(peer_id, access.certificate.org_code, access.row.manifest_id,
                                access.row.study_uid, blocks, sent)

    async def _read_ahead(self, cids: tuple[CID, ...], servable: frozenset[CID],
                          send: trio.MemorySendChannel[BlockFrame]) -> None:
        """Read the requested blocks (each verified against its CID) while earlier ones are sent, several per
        worker-thread call (up to READ_BATCH_BYTES): one thread hop per block cost the serving node more
        than the reads. A block this node may not serve under the request's manifest is answered as absent,
        unread."""
        async with send:
            i = 0
            while i < len(cids):
                if cids[i] not in servable:
                    await send.send(BlockAbsent(cids[i]))
                    i += 1
                    continue
                run = []
                while i < len(cids) and cids[i] in servable:
                    run.append(cids[i])
                    i += 1
                while run:
                    frames = await self.ctx.worker.run(partial(self._read_blocks, run))
                    run = run[len(frames):]
                    for frame in frames:
                        await send.send(frame)

    def _read_blocks(self, cids: list[CID]) -> list[BlockFrame]:
        """Worker thread: the first of these blocks, and the next ones while fewer than READ_BATCH_BYTES are read
        (at least one block, however large)."""
        frames: list[BlockFrame] = []
        nbytes = 0
        for cid in cids:
            frame = self._read_block(cid)
            frames.append(frame)
            nbytes += len(frame.data) if isinstance(frame, BlockData) else 0
            if nbytes >= READ_BATCH_BYTES:
                break
        return frames

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
        async with self.outbound.slot(peer_id, lane_of(protocol_id)):  # never more at once than the peer admits
            return await self._exchange(peer_id, protocol_id, payload)

    async def _exchange(self, peer_id: str, protocol_id: str, payload: bytes) -> bytes:
        limits = FRAME_LIMITS[protocol_id]
        stream = await open_stream(self.host, ID.from_base58(peer_id), protocol_id)
        ok = False
        try:
            with trio.fail_after(self.timeout), network_endings_unavailable(peer_id, protocol_id):
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
        return await self._learn(peer_id, reply.certificate)  # the peer's answer is checked (and audited) alike

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

    async def deliver_receipt(self, peer_id: str, receipt: bytes, certificate: bytes | None = None) -> None:
        """Deliver a receipt; `certificate`: its signer's, when passing a recipient's receipt on to a sibling
        (meshnode.node.replication; default: this node's own, as the recipient)."""
        cert = certificate if certificate is not None else self.ctx.certificate.encode()
        raw = await self._call(peer_id, RECEIPT_PROTOCOL, encode_request(ReceiptDelivery(receipt, cert)))
        reply = decode_ack_reply(raw)
        if isinstance(reply, Refused):
            raise reply.to_error()

    async def deliver_forward_report(self, peer_id: str, report: bytes) -> None:
        raw = await self._call(peer_id, FORWARD_REPORT_PROTOCOL,
                               encode_request(ForwardReportDelivery(report, self.ctx.certificate.encode())))
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
        async with self.outbound.slot(peer_id, Lane.DATA):  # never more at once than the peer admits
            stream = await open_stream(self.host, ID.from_base58(peer_id), BLOCKS_PROTOCOL)
            reader = BlockResponseReader(request)
            ok = False
            try:
                with network_endings_unavailable(peer_id, BLOCKS_PROTOCOL):
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

