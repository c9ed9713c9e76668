"""Received blocks kept in memory until their instance is verified, so its digest is checked without a re-read.

An instance is verified (meshnode.node.completion.verify_instance) once its
last block is durable: its blocks, concatenated, must have the size and
sha2-256 digest the signed manifest promises. Reading those blocks back from
disk for that cost a whole second pass over the study through the kernel (the
block files are written with O_DIRECT, so the page cache does not hold them):
a quarter of a recipient's time. The fetcher instead keeps the bytes of each
block it has just made durable, when an instance still waiting for
verification needs it, and verifies from those.

They are the very bytes written to the block file, already checked against
the block's CID before they were staged (BlockSink), so nothing unverified is
used and the instance digest still covers every byte. What is kept is
bounded (`limit` bytes): a block arriving while the limit is reached is not
kept, and its instance reads it from disk as before. Blocks are released when
their instance is verified or fails, and when its manifest stops.
"""

from __future__ import annotations

from collections.abc import Iterable

from protocol.cid import CID

#: Bytes of received blocks kept for verification at most (per fetcher).
RETAIN_BYTES = 32 * 1024 * 1024


class RetainedBlocks:
    """cid -> bytes, at most `limit` bytes in all. Used from the event loop's thread only."""

    def __init__(self, limit: int = RETAIN_BYTES) -> None:
        self.limit = limit
        self._blocks: dict[CID, bytes] = {}
        self._bytes = 0
        #: blocks not kept because the limit was reached (for tests and status)
        self.overflowed = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._blocks)

    def keep(self, cid: CID, data: bytes) -> bool:
        """Keep a block's verified bytes; False (not kept) when that would pass the limit."""
        if cid in self._blocks:
            return True
        if self._bytes + len(data) > self.limit:
            self.overflowed += 1
            return False
        self._blocks[cid] = data
        self._bytes += len(data)
        return True

    def get(self, cid: CID) -> bytes | None:
        return self._blocks.get(cid)

    def release(self, cids: Iterable[CID]) -> None:
        for cid in cids:
            data = self._blocks.pop(cid, None)
            if data is not None:
                self._bytes -= len(data)
