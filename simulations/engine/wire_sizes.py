"""Sizes on the wire of the control messages the node sends, measured with protocol/'s own codecs.

The simulator does not move these bytes over modelled links (they are tiny
next to images) but counts them as control overhead.
"""

from __future__ import annotations

import functools
import math

from protocol import cbor
from protocol.cid import CID
from protocol.exchange_messages import BlockAbsent, BlockData, BlockRequest, HaveReply, HaveRequest, encode_request, encode_response
from protocol.manifest import InstanceEntry

FRAME_PREFIX = 4
REAL_BLOCK = 1 << 20  # the node splits pixel data into 1 MiB blocks
_CID = CID(bytes(32))


def _frame(payload: bytes) -> int:
    return FRAME_PREFIX + len(payload)


HAVE_REQUEST = _frame(encode_request(HaveRequest(_CID)))
HAVE_REPLY_BASE = _frame(encode_response(HaveReply(b"")))
BLOCK_REQUEST_BASE = _frame(encode_request(BlockRequest(_CID, (_CID,)))) - len(cbor.encode(_CID.to_bytes()))
BLOCK_REQUEST_PER_CID = len(cbor.encode(_CID.to_bytes()))
BLOCK_FRAME_OVERHEAD = _frame(encode_response(BlockData(_CID, b""))) - len(cbor.encode(b""))
BLOCK_ABSENT = _frame(encode_response(BlockAbsent(_CID)))
RECEIPT = 600  # a signed receipt with the node certificate (ReceiptDelivery), and its Ack
ANNOUNCE_BASE = 2200  # manifest envelope, body, summary, signature, plus the signer's certificate


def _instance_bytes(blocks: int) -> int:
    entry = InstanceEntry("1.2.840.10008.5.1.4.1.1.2", "1.2.826.0.1.3680043.8.498." + "1" * 37,
                          "1.2.826.0.1.3680043.8.498." + "2" * 37, "1.2.840.10008.1.2.1", 524_288, bytes(32),
                          tuple(_CID for _ in range(blocks)))
    return len(cbor.encode(entry.to_wire()))


_INSTANCE_1 = _instance_bytes(1)
_PER_EXTRA_BLOCK = _instance_bytes(2) - _INSTANCE_1


#: bytes of an instance's header block (meshnode.dicom.blocks: the bytes before the pixel data value) in the
#: model's node-shaped blocks; the emulation's generated CT slices have 1.35 kB, clinical CT a few kB
HEADER_BYTES = 2048


def instance_blocks(instance_bytes: float) -> tuple[float, ...]:
    """The sizes of the blocks the node makes of an instance of this many bytes: its header (HEADER_BYTES, at most
    half the instance), then its pixel data in 1 MiB chunks, the last one the remainder."""
    header = min(float(HEADER_BYTES), instance_bytes / 2)
    pixel = instance_bytes - header
    full = max(0, math.ceil(pixel / REAL_BLOCK) - 1)
    return (header,) + (float(REAL_BLOCK),) * full + (pixel - full * REAL_BLOCK,)


def real_blocks(image_bytes: float) -> int:
    """Blocks the node makes of one instance: its header, then its pixel data in 1 MiB chunks."""
    return 1 + max(1, math.ceil(image_bytes / REAL_BLOCK))


@functools.lru_cache(maxsize=4096)
def manifest_bytes(images: int, image_bytes: float) -> int:
    per_instance = _INSTANCE_1 + (real_blocks(image_bytes) - 1) * _PER_EXTRA_BLOCK
    return ANNOUNCE_BASE + images * per_instance


@functools.lru_cache(maxsize=4096)
def have_exchange(images: int, image_bytes: float) -> int:
    blocks = images * real_blocks(image_bytes)
    return HAVE_REQUEST + HAVE_REPLY_BASE + math.ceil(blocks / 8)


@functools.lru_cache(maxsize=4096)
def block_traffic(nbytes: float, images: int, image_bytes: float, per_request: int) -> int:
    """Request frames and response-frame overhead for fetching `nbytes` of a study as the node would."""
    blocks = max(1, round(images * real_blocks(image_bytes) * nbytes / max(1.0, images * image_bytes)))
    requests = math.ceil(blocks / per_request)
    return requests * BLOCK_REQUEST_BASE + blocks * (BLOCK_REQUEST_PER_CID + BLOCK_FRAME_OVERHEAD)
