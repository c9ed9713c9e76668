"""Split a planned instance into blocks, and put blocks back together.

The blocks of an instance, concatenated, are the file byte for byte:

    header region   [0, header_end)          chunk_size pieces (usually one)
    pixel value     [header_end, pixel_end)  chunk_size pieces, aligned to
                                             the start of the value
    trailer         [pixel_end, file_size)   chunk_size pieces (usually one)

Because pixel blocks start at the pixel value and not at a file offset, an
edit that changes only header attributes (and so the header's length) leaves
every pixel block, and its CID, unchanged. A file without a pixel data region
(including a deflated one) is cut into chunk_size pieces from offset 0.
Reading streams: at most one block is held in memory at a time.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from protocol.errors import LocalProtocolError
from meshnode.dicom.errors import InstanceChangedError

DEFAULT_CHUNK_SIZE = 1 << 20


class Regions(Protocol):
    """What splitting needs from a plan (InstancePlan and FileLayout both have it)."""

    @property
    def file_size(self) -> int: ...

    @property
    def header_end(self) -> int: ...

    @property
    def pixel_end(self) -> int: ...

    @property
    def has_pixel_data(self) -> bool: ...


def block_ranges(plan: Regions, chunk_size: int = DEFAULT_CHUNK_SIZE) -> list[tuple[int, int]]:
    """The [start, end) byte range of every block, in order."""
    if chunk_size < 1:
        raise LocalProtocolError("chunk_size must be at least 1")
    if not 0 <= plan.header_end <= plan.pixel_end <= plan.file_size:
        raise LocalProtocolError("plan regions are not ordered within the file")
    if plan.has_pixel_data:
        bounds = [(0, plan.header_end), (plan.header_end, plan.pixel_end)]
        bounds.append((plan.pixel_end, plan.file_size))
    else:
        bounds = [(0, plan.file_size)]
    return [
        (start, min(start + chunk_size, end))
        for region_start, end in bounds
        for start in range(region_start, end, chunk_size)
    ]


def iter_instance_blocks(
    path: Path, plan: Regions, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> Iterator[bytes]:
    """Stream the blocks of the instance at `path`, as planned.

    Raises InstanceChangedError if the file no longer has the planned size.
    """
    ranges = block_ranges(plan, chunk_size)
    with path.open("rb") as stream:
        if os.fstat(stream.fileno()).st_size != plan.file_size:
            raise InstanceChangedError("file size changed since the instance was planned")
        for start, end in ranges:
            data = stream.read(end - start)
            if len(data) != end - start:
                raise InstanceChangedError(f"file shrank while reading it, at offset {start}")
            yield data
        if stream.read(1):
            raise InstanceChangedError("file grew while reading it")


def reassemble(blocks: Iterable[bytes], out: BinaryIO) -> tuple[int, bytes]:
    """Write `blocks` to `out` in order; return (size, sha256 digest of the whole)."""
    hashed = HashingBlocks(blocks)
    for block in hashed:
        out.write(block)
    return hashed.size, hashed.digest()


class HashingBlocks:
    """Pass blocks through while hashing the whole file they make up.

        hashed = HashingBlocks(iter_instance_blocks(path, plan))
        for block in hashed:
            store(block)
        file_sha256 = hashed.digest()
    """

    def __init__(self, blocks: Iterable[bytes]) -> None:
        self._blocks = blocks
        self._hash = hashlib.sha256()
        self._done = False
        self.size = 0
        self.count = 0

    def __iter__(self) -> Iterator[bytes]:
        for block in self._blocks:
            self._hash.update(block)
            self.size += len(block)
            self.count += 1
            yield block
        self._done = True

    def digest(self) -> bytes:
        """sha256 of every block so far; only valid once the blocks are exhausted."""
        if not self._done:
            raise LocalProtocolError("digest asked for before every block was read")
        return self._hash.digest()
