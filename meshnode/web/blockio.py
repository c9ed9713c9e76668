"""Reading a stored instance from its blocks: streamed, each block checked against its CID.

`read_header` parses a header over meshnode.storage.block_stream.BlockStream, so
the pixel data is never read. `read_parts` reads a batch of WADO-RS response
parts in one worker-thread hop (the blocks read with their exact size and
hashed; part heads and small blocks joined, large blocks written as read).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

import meshnode.dicom  # noqa: F401  (pydicom reading validation off: no patient data in logs)
from meshnode.storage.block_stream import BlockStream
from meshnode.storage.blockstore import BlockStore
from meshnode.storage.records import InstanceRecord, hash_uid
from protocol.errors import MeshError, StorageError

log = logging.getLogger(__name__)


def read_header(blocks: BlockStore, record: InstanceRecord) -> Dataset:
    """The instance's data set up to (not including) its pixel data, read from its blocks."""
    reader = io.BufferedReader(BlockStream(blocks, record.blocks, record.block_sizes), buffer_size=64 * 1024)
    try:
        return pydicom.dcmread(reader, stop_before_pixels=True, force=True)
    except (InvalidDicomError, ValueError, KeyError, EOFError, OSError) as exc:
        log.warning("stored instance %s has an unreadable header: %s", hash_uid(record.sop_instance_uid),
                    type(exc).__name__)
        raise StorageError(f"instance {hash_uid(record.sop_instance_uid)} has an unreadable header") from None


@dataclass(frozen=True)
class PartSlice:
    """Blocks start..stop of one response part's instance, with the part's head when start is 0."""

    head: bytes
    record: InstanceRecord
    start: int
    stop: int

    @property
    def size(self) -> int:
        return (len(self.head) if self.start == 0 else 0) + sum(self.record.block_sizes[self.start:self.stop])


#: pieces smaller than this are joined into one write (a copy that cheap is cheaper than a write); a block
#: this size or larger is written as read: joining large buffers costs as much as hashing them (fresh pages)
JOIN_BELOW = 64 * 1024


@dataclass(frozen=True)
class PartBatch:
    """Consecutive slices of response parts read in one thread hop, every block verified: `pieces` to write
    in order. A slice that could not be read ends the batch: `pieces` hold the `slices` whole slices before
    it and `error` says why."""

    pieces: list[bytes]
    slices: int
    error: MeshError | None


def read_parts(blocks: BlockStore, slices: Sequence[PartSlice]) -> PartBatch:
    """Read and verify the slices in order, stopping at the first that fails (corrupt: quarantined, or
    missing): nothing of a slice is in `pieces` unless all of its blocks hashed to their CIDs. Each block is
    read with its exact size and written as read; part heads and small blocks are joined (JOIN_BELOW)."""
    pieces: list[bytes] = []
    small: list[bytes] = []
    small_size = 0

    def add(data: bytes) -> None:
        nonlocal small_size
        if small and small_size + len(data) > JOIN_BELOW:
            pieces.append(b"".join(small))
            small.clear()
            small_size = 0
        if len(data) >= JOIN_BELOW:
            pieces.append(data)
        else:
            small.append(data)
            small_size += len(data)

    done = 0
    error: MeshError | None = None
    for item in slices:
        try:
            data = [blocks.get(cid, verify=True) for cid in item.record.blocks[item.start:item.stop]]
        except MeshError as exc:
            error = exc
            break
        if item.start == 0:
            add(item.head)
        for block in data:
            add(block)
        done += 1
    if small:
        pieces.append(b"".join(small))
    return PartBatch(pieces, done, error)


def plan_batches(parts: Sequence[tuple[bytes, InstanceRecord]], limit: int) -> list[list[PartSlice]]:
    """The parts (head, instance) in order, as batches of about `limit` bytes: whole instances grouped until
    a batch reaches `limit`; an instance larger than `limit` split at block boundaries into slices of about
    `limit` (so a response never holds a whole large instance). One worker-thread hop per batch."""
    out: list[list[PartSlice]] = []
    batch: list[PartSlice] = []
    size = 0

    def add(item: PartSlice) -> None:
        nonlocal batch, size
        batch.append(item)
        size += item.size
        if size >= limit:
            out.append(batch)
            batch, size = [], 0

    for head, record in parts:
        if len(head) + record.size <= limit or not record.blocks:
            add(PartSlice(head, record, 0, len(record.blocks)))
            continue
        start, acc = 0, len(head)
        for i, block_size in enumerate(record.block_sizes):
            acc += block_size
            if acc >= limit or i == len(record.blocks) - 1:
                add(PartSlice(head, record, start, i + 1))
                start, acc = i + 1, 0
    if batch:
        out.append(batch)
    return out
