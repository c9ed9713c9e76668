"""A stored instance as a seekable file object over its blocks, for pydicom; or whole (`read_instance`).

Only the blocks the requested bytes lie in are read (each checked against its CID when `verify`), and
only the last one read is kept, so parsing a header never reads the pixel data. Blocks the caller
already holds (`preloaded`, by index) are used as they are.
"""

from __future__ import annotations

import bisect
import hashlib
import io
from collections.abc import Mapping, Sequence

from meshnode.storage.blockstore import BlockStore
from meshnode.storage.records import InstanceRecord, hash_uid
from protocol.cid import CID
from protocol.errors import StorageError


def read_instance(blocks: BlockStore, record: InstanceRecord) -> bytes:
    """The whole instance, every block checked against its CID and the whole against its digest."""
    data = b"".join(blocks.get(cid, verify=True) for cid in record.blocks)
    if len(data) != record.size or hashlib.sha256(data).digest() != record.digest:
        raise StorageError(f"instance {hash_uid(record.sop_instance_uid)} does not reassemble to its digest")
    return data


class BlockStream(io.RawIOBase):
    def __init__(self, blocks: BlockStore, cids: Sequence[CID], sizes: Sequence[int], *, verify: bool = True,
                 preloaded: Mapping[int, bytes] | None = None) -> None:
        self._store, self._cids, self._verify = blocks, tuple(cids), verify
        self._preloaded = preloaded or {}
        self._starts: list[int] = []
        offset = 0
        for size in sizes:
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
        block = self._preloaded.get(index)
        if block is not None:
            return block
        if self._cached is None or self._cached[0] != index:
            self._cached = (index, self._store.get(self._cids[index], verify=self._verify))
        return self._cached[1]

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        """Fills the buffer (across blocks) unless the instance ends first: pydicom takes a short read for
        the end of the file."""
        done = 0
        while done < len(buffer) and self._pos < self._size:
            index = bisect.bisect_right(self._starts, self._pos) - 1
            block = self._block(index)
            start = self._pos - self._starts[index]
            n = min(len(buffer) - done, len(block) - start)
            if n <= 0:
                raise OSError("an instance block is shorter than recorded")
            buffer[done:done + n] = block[start:start + n]
            self._pos += n
            done += n
        return done
