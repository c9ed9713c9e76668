"""Reading a stored instance from its blocks: streamed, each block checked against its CID.

`InstanceReader` is a seekable file object over an instance's blocks that
holds one block in memory at a time, so pydicom can parse a header without
the pixel data ever being read; `read_header` does that.
"""

from __future__ import annotations

import bisect
import io
import logging

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

import meshnode.dicom  # noqa: F401  (pydicom reading validation off: no patient data in logs)
from meshnode.storage.blockstore import BlockStore
from meshnode.storage.records import InstanceRecord, hash_uid
from protocol.errors import StorageError

log = logging.getLogger(__name__)


class InstanceReader(io.RawIOBase):
    def __init__(self, blocks: BlockStore, record: InstanceRecord) -> None:
        self._store = blocks
        self._cids = record.blocks
        self._starts: list[int] = []
        offset = 0
        for size in record.block_sizes:
            self._starts.append(offset)
            offset += size
        self._size = offset
        self._pos = 0
        self._cached: tuple[int, bytes] | None = None

    @property
    def name(self) -> str:
        return ""  # pydicom records it as the data set's filename

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def _block(self, index: int) -> bytes:
        if self._cached is None or self._cached[0] != index:
            self._cached = (index, self._store.get(self._cids[index], verify=True))
        return self._cached[1]

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._pos >= self._size or not self._cids:
            return 0
        index = bisect.bisect_right(self._starts, self._pos) - 1
        block = self._block(index)
        start = self._pos - self._starts[index]
        n = min(len(buffer), len(block) - start)
        buffer[:n] = block[start:start + n]
        self._pos += n
        return n


def read_header(blocks: BlockStore, record: InstanceRecord) -> Dataset:
    """The instance's data set up to (not including) its pixel data, read from its blocks."""
    reader = io.BufferedReader(InstanceReader(blocks, record), buffer_size=64 * 1024)
    try:
        return pydicom.dcmread(reader, stop_before_pixels=True, force=True)
    except (InvalidDicomError, ValueError, KeyError, EOFError, OSError) as exc:
        log.warning("stored instance %s has an unreadable header: %s", hash_uid(record.sop_instance_uid),
                    type(exc).__name__)
        raise StorageError(f"instance {hash_uid(record.sop_instance_uid)} has an unreadable header") from None


def read_all_blocks(blocks: BlockStore, record: InstanceRecord) -> list[bytes]:
    """Every block of an instance, verified (for one response part; the caller streams them out)."""
    return [blocks.get(cid, verify=True) for cid in record.blocks]
