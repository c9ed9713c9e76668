"""Messages of the node-to-node exchange protocols (hello, announce, have, blocks, receipt, recall).

Each protocol is one libp2p stream per exchange: the initiator writes one
request frame; the responder answers with one response frame, except
`blocks`, which answers with one frame per requested CID (in request order)
or a single refusal. Every response is a map with a boolean `ok`; `ok: false`
is always `Refused`. Signed documents travel as their signed bytes, never
re-encoded; verifying them is the node's business, not this codec's.

The wire spec is docs/protocol/exchange.md.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import NoReturn, TypeAlias, Union

from protocol import cbor
from protocol.cbor import CborKey, CborValue
from protocol.certificate import Certificate
from protocol.cid import BINARY_SIZE, CID
from protocol.errors import (
    LimitError,
    LocalProtocolError,
    MeshError,
    SchemaError,
    UnauthorisedError,
    UnexpectedFrameError,
)
from protocol.manifest import MAX_MANIFEST_BYTES, MAX_TOTAL_BLOCKS
from protocol.forward_report import ForwardReport
from protocol.recall import Recall
from protocol.receipt import Receipt
from protocol.refusal import MAX_MESSAGE_CHARS
from protocol.refusal import Refused as Refused  # re-exported: part of this protocol's messages
from protocol.schema import Fields, bytes_item

HELLO_PROTOCOL = "/dicom-mesh/hello/1.0.0"
ANNOUNCE_PROTOCOL = "/dicom-mesh/announce/1.0.0"
HAVE_PROTOCOL = "/dicom-mesh/have/1.0.0"
BLOCKS_PROTOCOL = "/dicom-mesh/blocks/1.0.0"
RECEIPT_PROTOCOL = "/dicom-mesh/receipt/1.0.0"
RECALL_PROTOCOL = "/dicom-mesh/recall/1.0.0"
FORWARD_REPORT_PROTOCOL = "/dicom-mesh/forward-report/1.0.0"

MAX_CERT_BYTES = Certificate.MAX_BYTES
MAX_RECEIPT_BYTES = Receipt.MAX_BYTES
MAX_RECALL_BYTES = Recall.MAX_BYTES
MAX_FORWARD_REPORT_BYTES = ForwardReport.MAX_BYTES
MAX_BLOCK_BYTES = 8 * 1024 * 1024
MAX_REQUEST_BLOCKS = 64
MAX_BITMAP_BYTES = (MAX_TOTAL_BLOCKS + 7) // 8

HELLO_MAX_FRAME = 8 * 1024
ANNOUNCE_MAX_REQUEST_FRAME = MAX_MANIFEST_BYTES + 8 * 1024
REPLY_MAX_FRAME = 4 * 1024  # Ack / Refused answers of announce, receipt and recall
HAVE_MAX_REQUEST_FRAME = 256
HAVE_MAX_RESPONSE_FRAME = 128 * 1024
BLOCKS_MAX_REQUEST_FRAME = 4 * 1024
BLOCKS_MAX_RESPONSE_FRAME = MAX_BLOCK_BYTES + 4 * 1024
DELIVERY_MAX_REQUEST_FRAME = 16 * 1024  # receipt and recall deliveries


@dataclass(frozen=True)
class FrameLimits:
    """Per-protocol frame maxima for the driver's FrameDecoder and encode_frame."""

    request: int
    response: int


FRAME_LIMITS: dict[str, FrameLimits] = {
    HELLO_PROTOCOL: FrameLimits(HELLO_MAX_FRAME, HELLO_MAX_FRAME),
    ANNOUNCE_PROTOCOL: FrameLimits(ANNOUNCE_MAX_REQUEST_FRAME, REPLY_MAX_FRAME),
    HAVE_PROTOCOL: FrameLimits(HAVE_MAX_REQUEST_FRAME, HAVE_MAX_RESPONSE_FRAME),
    BLOCKS_PROTOCOL: FrameLimits(BLOCKS_MAX_REQUEST_FRAME, BLOCKS_MAX_RESPONSE_FRAME),
    RECEIPT_PROTOCOL: FrameLimits(DELIVERY_MAX_REQUEST_FRAME, REPLY_MAX_FRAME),
    RECALL_PROTOCOL: FrameLimits(DELIVERY_MAX_REQUEST_FRAME, REPLY_MAX_FRAME),
    FORWARD_REPORT_PROTOCOL: FrameLimits(DELIVERY_MAX_REQUEST_FRAME, REPLY_MAX_FRAME),
}


@dataclass(frozen=True)
class Hello:
    """A node's certificate (its signed bytes); sent as request and as reply."""

    certificate: bytes


@dataclass(frozen=True)
class Announce:
    manifest: bytes
    certificate: bytes


@dataclass(frozen=True)
class HaveRequest:
    manifest_id: CID


@dataclass(frozen=True)
class BlockRequest:
    manifest_id: CID
    cids: tuple[CID, ...]

    def __post_init__(self) -> None:
        if not 1 <= len(self.cids) <= MAX_REQUEST_BLOCKS:
            raise LimitError(f"block request needs 1..{MAX_REQUEST_BLOCKS} CIDs, got {len(self.cids)}")
        if len(set(self.cids)) != len(self.cids):
            raise SchemaError("block request names a CID twice")


@dataclass(frozen=True)
class ReceiptDelivery:
    receipt: bytes
    certificate: bytes


@dataclass(frozen=True)
class RecallDelivery:
    recall: bytes
    certificate: bytes


@dataclass(frozen=True)
class ForwardReportDelivery:
    report: bytes
    certificate: bytes


Request: TypeAlias = Union[
    Hello, Announce, HaveRequest, BlockRequest, ReceiptDelivery, RecallDelivery, ForwardReportDelivery]


@dataclass(frozen=True)
class Ack:
    pass


#: The one answer to any request the peer may not make (have or blocks): it
#: does not say whether the manifest or the block exists.
UNAUTHORISED = Refused(UnauthorisedError.code, "not authorised")


@dataclass(frozen=True)
class HaveReply:
    bitmap: bytes


@dataclass(frozen=True)
class BlockData:
    cid: CID
    data: bytes


@dataclass(frozen=True)
class BlockAbsent:
    cid: CID


Response: TypeAlias = Union[Hello, Ack, Refused, HaveReply, BlockData, BlockAbsent]
AckReply: TypeAlias = Union[Ack, Refused]
BlockFrame: TypeAlias = Union[BlockData, BlockAbsent, Refused]


# -- encoding ---------------------------------------------------------------


def encode_request(request: Request) -> bytes:
    body: dict[CborKey, CborValue]
    if isinstance(request, Hello):
        body = {"certificate": request.certificate}
    elif isinstance(request, Announce):
        body = {"manifest": request.manifest, "certificate": request.certificate}
    elif isinstance(request, HaveRequest):
        body = {"manifest": request.manifest_id.to_bytes()}
    elif isinstance(request, BlockRequest):
        body = {"manifest": request.manifest_id.to_bytes(), "blocks": [c.to_bytes() for c in request.cids]}
    elif isinstance(request, ReceiptDelivery):
        body = {"receipt": request.receipt, "certificate": request.certificate}
    elif isinstance(request, ForwardReportDelivery):
        body = {"report": request.report, "certificate": request.certificate}
    else:
        body = {"recall": request.recall, "certificate": request.certificate}
    return cbor.encode(body)


def encode_response(response: Response) -> bytes:
    body: dict[CborKey, CborValue]
    if isinstance(response, Hello):
        body = {"ok": True, "certificate": response.certificate}
    elif isinstance(response, Ack):
        body = {"ok": True}
    elif isinstance(response, Refused):
        body = {"ok": False, "code": response.code, "message": response.message}
    elif isinstance(response, HaveReply):
        body = {"ok": True, "have": response.bitmap}
    elif isinstance(response, BlockData):
        body = {"ok": True, "cid": response.cid.to_bytes(), "data": response.data}
    else:
        body = {"ok": True, "cid": response.cid.to_bytes(), "data": None}
    return cbor.encode(body)


def encode_block_data_frame(cid: CID, data: bytes, max_frame: int) -> bytes:
    """The frame of a BlockData response, exactly `encode_frame(encode_response(BlockData(cid, data)))`,
    built with one copy of the data instead of two (a block is up to MAX_BLOCK_BYTES).

    Map keys sort by their encoding, shorter first, so "data" comes last: the
    payload is the response encoded with an empty byte string as its data, that
    empty string's head replaced by the real one, then the data itself.
    """
    empty = encode_response(BlockData(cid, b""))
    if empty[-1:] != cbor.byte_string_head(0):
        raise LocalProtocolError("block response encoding does not end with its data")
    head = empty[:-1] + cbor.byte_string_head(len(data))
    size = len(head) + len(data)
    if size > max_frame:
        raise LocalProtocolError(f"frame of {size} bytes exceeds maximum {max_frame}")
    return b"".join((struct.pack(">I", size), head, data))


# -- decoding ---------------------------------------------------------------


def _fields(data: bytes, what: str, max_items: int = 16) -> Fields:
    return Fields(cbor.decode(data, max_depth=3, max_items=max_items), what)


def _cid(f: Fields, key: str) -> CID:
    return CID.from_bytes(f.blob(key, size=BINARY_SIZE))


def _cid_item(value: CborValue, what: str) -> CID:
    return CID.from_bytes(bytes_item(BINARY_SIZE)(value, what))


def _reply(data: bytes, what: str, max_items: int = 16) -> tuple[Fields, Refused | None]:
    """Read `ok`; a refusal is decoded and finished here, else the caller reads the rest."""
    f = _fields(data, what, max_items)
    if f.boolean("ok"):
        return f, None
    refused = Refused(f.integer("code", 0, 9999), f.text("message", MAX_MESSAGE_CHARS))
    f.finish()
    return f, refused


def decode_hello(data: bytes) -> Hello:
    f = _fields(data, "hello")
    hello = Hello(f.blob("certificate", max_len=MAX_CERT_BYTES))
    f.finish()
    return hello


def decode_hello_reply(data: bytes) -> Hello | Refused:
    f, refused = _reply(data, "hello reply")
    if refused is not None:
        return refused
    hello = Hello(f.blob("certificate", max_len=MAX_CERT_BYTES))
    f.finish()
    return hello


def decode_announce(data: bytes) -> Announce:
    f = _fields(data, "announce")
    announce = Announce(
        f.blob("manifest", max_len=MAX_MANIFEST_BYTES), f.blob("certificate", max_len=MAX_CERT_BYTES)
    )
    f.finish()
    return announce


def decode_ack_reply(data: bytes) -> AckReply:
    """The answer to announce, receipt and recall deliveries."""
    f, refused = _reply(data, "reply")
    if refused is not None:
        return refused
    f.finish()
    return Ack()


def decode_have_request(data: bytes) -> HaveRequest:
    f = _fields(data, "have request")
    request = HaveRequest(_cid(f, "manifest"))
    f.finish()
    return request


def decode_have_reply(data: bytes) -> HaveReply | Refused:
    """Check the bitmap's exact length against the manifest with `unpack_bitmap`."""
    f, refused = _reply(data, "have reply")
    if refused is not None:
        return refused
    reply = HaveReply(f.blob("have", max_len=MAX_BITMAP_BYTES))
    f.finish()
    return reply


def decode_block_request(data: bytes) -> BlockRequest:
    f = _fields(data, "block request", max_items=2 * MAX_REQUEST_BLOCKS + 16)
    manifest_id = _cid(f, "manifest")
    cids = f.array("blocks", _cid_item, max_items=MAX_REQUEST_BLOCKS, min_items=1)
    f.finish()
    return BlockRequest(manifest_id, cids)


def decode_block_frame(data: bytes) -> BlockFrame:
    """One frame of a blocks response; use BlockResponseReader to check the sequence."""
    f, refused = _reply(data, "block response")
    if refused is not None:
        return refused
    cid = _cid(f, "cid")
    raw = f.raw("data")
    f.finish()
    if raw is None:
        return BlockAbsent(cid)
    if not isinstance(raw, bytes):
        raise SchemaError("block response.data: expected bytes or null")
    if len(raw) > MAX_BLOCK_BYTES:
        raise LimitError(f"block response.data: {len(raw)} bytes, limit {MAX_BLOCK_BYTES}")
    return BlockData(cid, raw)


def decode_receipt_delivery(data: bytes) -> ReceiptDelivery:
    f = _fields(data, "receipt delivery")
    delivery = ReceiptDelivery(
        f.blob("receipt", max_len=MAX_RECEIPT_BYTES), f.blob("certificate", max_len=MAX_CERT_BYTES)
    )
    f.finish()
    return delivery


def decode_recall_delivery(data: bytes) -> RecallDelivery:
    f = _fields(data, "recall delivery")
    delivery = RecallDelivery(
        f.blob("recall", max_len=MAX_RECALL_BYTES), f.blob("certificate", max_len=MAX_CERT_BYTES)
    )
    f.finish()
    return delivery


# -- blocks: response sequence and verification -----------------------------


def verify_block(cid: CID, data: bytes) -> bool:
    """True when data is the block cid names (sha2-256 matches)."""
    return cid.matches(data)


class ReaderState(Enum):
    EXPECTING = "expecting"
    DONE = "done"
    REFUSED = "refused"
    FAILED = "failed"


class BlockResponseReader:
    """Checks the frames answering one BlockRequest arrive as the protocol allows.

    Either exactly one frame per requested CID, in request order (each
    BlockData or BlockAbsent naming that CID), or a single Refused as the
    first and only frame. Anything else raises UnexpectedFrameError and the
    reader stays failed. Data is not hash-checked here (see verify_block).
    """

    def __init__(self, request: BlockRequest) -> None:
        self.request = request
        self.state = ReaderState.EXPECTING
        self._next = 0
        self.refused: Refused | None = None

    @property
    def expected(self) -> CID | None:
        """The CID the next frame must name, or None when no frame may come."""
        if self.state is not ReaderState.EXPECTING:
            return None
        return self.request.cids[self._next]

    @property
    def unanswered(self) -> tuple[CID, ...]:
        """Requested CIDs no frame has answered (all of them after a refusal)."""
        return self.request.cids[self._next :]

    def feed(self, payload: bytes) -> BlockFrame:
        """Decode one frame's payload and check it."""
        try:
            frame = decode_block_frame(payload)
        except MeshError:
            self.state = ReaderState.FAILED
            raise
        return self.accept(frame)

    def accept(self, frame: BlockFrame) -> BlockFrame:
        """Check one decoded frame against the sequence; returns it unchanged."""
        expected = self.expected
        if expected is None:
            self._fail(f"frame after the response ended ({self.state.value})")
        if isinstance(frame, Refused):
            if self._next != 0:
                self._fail("refusal after block data")
            self.state = ReaderState.REFUSED
            self.refused = frame
            return frame
        if frame.cid != expected:
            self._fail(f"block response for {frame.cid}, expected {expected}")
        self._next += 1
        if self._next == len(self.request.cids):
            self.state = ReaderState.DONE
        return frame

    def end_of_stream(self) -> None:
        """Call when the stream ends: raises if frames are still owed."""
        if self.state is ReaderState.EXPECTING:
            self._fail(f"stream ended with {len(self.unanswered)} of {len(self.request.cids)} blocks unanswered")

    def _fail(self, message: str) -> NoReturn:
        self.state = ReaderState.FAILED
        raise UnexpectedFrameError(message)


# -- have: bitmaps over Manifest.block_order() ---------------------------------


def pack_bitmap(flags: Sequence[bool]) -> bytes:
    """Bit i (MSB first within each byte) set when flags[i]; unused trailing bits zero."""
    out = bytearray((len(flags) + 7) // 8)
    for i, flag in enumerate(flags):
        if flag:
            out[i >> 3] |= 0x80 >> (i & 7)
    return bytes(out)


def unpack_bitmap(bitmap: bytes, count: int) -> tuple[bool, ...]:
    """The count flags of a bitmap; its length must be exactly ceil(count/8), spare bits zero."""
    if len(bitmap) != (count + 7) // 8:
        raise SchemaError(f"have bitmap of {len(bitmap)} bytes for {count} blocks")
    if count % 8 and bitmap[-1] & (0xFF >> (count % 8)):
        raise SchemaError("have bitmap has bits set past the last block")
    return tuple(bool(bitmap[i >> 3] & (0x80 >> (i & 7))) for i in range(count))


def held_blocks(order: Sequence[CID], bitmap: bytes) -> tuple[CID, ...]:
    """The blocks of `order` a have-bitmap says the responder holds (validates the bitmap)."""
    return tuple(cid for cid, flag in zip(order, unpack_bitmap(bitmap, len(order))) if flag)


def decode_forward_report_delivery(data: bytes) -> ForwardReportDelivery:
    f = _fields(data, "forward report delivery")
    delivery = ForwardReportDelivery(
        f.blob("report", max_len=MAX_FORWARD_REPORT_BYTES), f.blob("certificate", max_len=MAX_CERT_BYTES)
    )
    f.finish()
    return delivery
