"""Stage the blocks of DICOM files for ingest: every byte read once, hashed where it lies, written from there.

    stager = FileStager(blocks, chunk_size)
    pending = [stager.stage(path) for path in paths]   # DicomError/StorageError/OSError for a bad file
    stager.drain()                                     # every write handed over has finished
    instances = [p.result() for p in pending]          # StagedInstance; StorageError of a failed write

For each file, through one open descriptor:
- the layout scan (structure.py), then the header region [0, header_end) read once: pydicom reads the
  attributes from those bytes in memory (no second open, no seek/tell system call per element), and the
  same bytes are the header blocks stored, so the attributes listed are those of the bytes kept; every
  byte of it the scan read is checked to be the same (a file rewritten meanwhile is refused), so the
  layout and its flags (executable-preamble, ...) describe the bytes kept too;
- each block read (preadv) straight into a page-aligned buffer, hashed there (its CID and the file's
  sha256) and written from there (O_DIRECT where the filesystem allows it) by a writer thread, while
  this thread reads and hashes the next block. An O_DIRECT write waits for the disk; without the
  overlap every worker idles on each write. hashlib and os.write release the GIL.

The blocks are exactly block_ranges(plan, chunk_size) of the file (what iter_instance_blocks gives), so
their CIDs do not depend on the number of workers or on this module. Nothing here syncs: the blocks stay
temp files until the caller's BlockStore.commit_staged. At most DEPTH buffers of chunk_size are held.
"""

from __future__ import annotations

import hashlib
import mmap
import os
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from meshnode.dicom.blocks import block_ranges
from meshnode.dicom.errors import DicomLimitError, InstanceChangedError
from meshnode.dicom.layout import InstancePlan, plan_layout
from meshnode.dicom.structure import scan_layout_stream
from meshnode.storage.blockstore import MAX_BLOCK_SIZE, BlockStore, StagedBlock
from meshnode.storage.direct_io import aligned_buffer
from meshnode.storage.records import (
    InstanceRecord,
    SeriesAttributes,
    Source,
    StudyAttributes,
)
from protocol.cid import CID
from protocol.errors import StorageError

#: Blocks in flight per stager (read and hashed, being written): buffers of chunk_size each.
DEPTH = 4
WRITERS = 2
#: The header region is read into memory once (stored from there, pydicom reads the attributes from
#: there): one that is larger than this (rare: huge private attributes, an encapsulated document) is still
#: read whole, so that attributes and bytes stored cannot come from two reads of a file being rewritten.
HEADER_IN_MEMORY = MAX_BLOCK_SIZE
#: ...up to this size: a larger header region is refused (DicomLimitError).
MAX_HEADER_BYTES = 1 << 30


class _ReadsSeen:
    """The file as the layout scan reads it (seek, read: all ByteSource calls), keeping what it read, so
    that the header bytes read afterwards can be checked to be those the layout describes."""

    def __init__(self, fd: int) -> None:
        self.fd, self.pos = fd, 0
        self.reads: list[tuple[int, bytes]] = []

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        if whence != os.SEEK_SET:
            raise ValueError("only absolute seeks")  # a bug: the scan seeks to absolute offsets only
        self.pos = pos
        return pos

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = max(0, os.fstat(self.fd).st_size - self.pos)
        data = os.pread(self.fd, n, self.pos)
        self.reads.append((self.pos, data))
        self.pos += len(data)
        return data

    def agrees_with(self, header: bytes) -> bool:
        """Whether every byte the scan read below len(header) is the byte at its offset in `header`."""
        end = len(header)
        return all(data[: end - pos] == header[pos : pos + len(data)] for pos, data in self.reads if pos < end)


def instance_record(plan: InstancePlan, blocks: Sequence[CID], sizes: Sequence[int], size: int, digest: bytes,
                    source: Source) -> InstanceRecord:
    a = plan.attributes
    return InstanceRecord(
        sop_instance_uid=a.sop_instance_uid,
        sop_class_uid=a.sop_class_uid,
        series=SeriesAttributes(a.series_instance_uid, a.modality, a.series_number, a.series_description),
        study=StudyAttributes(a.study_instance_uid, a.patient_name, a.patient_id, a.patient_birth_date,
                              a.patient_sex, a.study_date, a.study_time, a.study_description, a.accession_number),
        transfer_syntax=plan.transfer_syntax_uid,
        size=size,
        digest=digest,
        blocks=tuple(blocks),
        block_sizes=tuple(sizes),
        instance_number=a.instance_number,
        rows=a.rows,
        columns=a.columns,
        frames=a.number_of_frames,
        flags=tuple(sorted(plan.flags)),
        source=source,
    )


@dataclass(frozen=True)
class StagedInstance:
    record: InstanceRecord
    staged: tuple[StagedBlock, ...]


class StagedFile:
    """One file planned and hashed, its blocks handed to the writers (maybe not all written yet)."""

    def __init__(self, plan: InstancePlan, cids: list[CID], sizes: list[int], size: int, digest: bytes,
                 writes: list[Future[StagedBlock | None]], source: Source) -> None:
        self.plan, self.cids, self.sizes, self.size, self.digest = plan, cids, sizes, size, digest
        self.writes, self.source = writes, source

    def result(self) -> StagedInstance:
        """The staged instance, once its writes have finished (FileStager's exit waits for them).

        Raises the StorageError of a failed write; the file's other blocks are then discarded already.
        """
        staged = _written(self.writes)
        return StagedInstance(instance_record(self.plan, self.cids, self.sizes, self.size, self.digest,
                                              self.source), staged)


def _written(writes: Sequence[Future[StagedBlock | None]]) -> tuple[StagedBlock, ...]:
    """The blocks these finished writes staged; on any failure, discards them and raises the first error."""
    staged: list[StagedBlock] = []
    error: BaseException | None = None
    for future in writes:
        exc = future.exception()
        if exc is not None:
            error = error or exc
            continue
        block = future.result()
        if block is not None:
            staged.append(block)
    if error is not None:
        _discard(staged)
        raise error
    return tuple(staged)


def _discard_when_written(writes: Sequence[Future[StagedBlock | None]]) -> None:
    """Wait for these writes (a temp file being written cannot be removed yet), then remove what they staged."""
    _discard([block for future in writes if future.exception() is None and (block := future.result()) is not None])


def _discard(staged: Sequence[StagedBlock]) -> None:
    for block in staged:
        try:
            block.tmp.unlink()
        except OSError:
            pass  # a temp file: recover() removes what is left


class FileStager:
    """Plans files and stages their blocks with reads, hashing and writes overlapped (see module doc)."""

    def __init__(self, blocks: BlockStore, chunk_size: int, *, depth: int = DEPTH, writers: int = WRITERS) -> None:
        if not 1 <= chunk_size <= MAX_BLOCK_SIZE:
            raise StorageError(f"chunk size must be 1..{MAX_BLOCK_SIZE}")
        self.blocks = blocks
        self.chunk_size = chunk_size
        self._free = [aligned_buffer(chunk_size) for _ in range(max(1, depth))]
        self._in_flight: deque[tuple[Future[StagedBlock | None], mmap.mmap]] = deque()
        self._writers = ThreadPoolExecutor(max(1, writers), thread_name_prefix="blockwrite")

    def drain(self) -> None:
        """Wait for every write handed over so far (their outcomes are their files': StagedFile.result)."""
        while self._in_flight:
            future, buf = self._in_flight.popleft()
            future.exception()
            self._free.append(buf)

    def close(self) -> None:
        """Wait for every write (a temp file is never left half-written by a running thread)."""
        self.drain()
        self._writers.shutdown(wait=True)
        for buf in self._free:
            buf.close()
        self._free.clear()

    def stage(self, path: Path, source: Source = Source.LOCAL) -> StagedFile:
        """Plan `path` and hand its blocks to the writers. Raises DicomError (not DICOM, malformed,
        changed while read), StorageError or OSError; its blocks already written are then discarded."""
        writes: list[Future[StagedBlock | None]] = []
        try:
            with path.open("rb") as stream:
                fd = stream.fileno()
                size = os.fstat(fd).st_size
                seen = _ReadsSeen(fd)
                layout = scan_layout_stream(cast(BinaryIO, seen), size)
                if layout.header_end > MAX_HEADER_BYTES:
                    raise DicomLimitError(f"header of {layout.header_end} bytes before the pixel data exceeds "
                                          f"the limit of {MAX_HEADER_BYTES} bytes")
                # read once: the header blocks stored, what pydicom reads the attributes from, and (checked
                # against what the scan read) what the layout and its flags describe
                header = os.pread(fd, layout.header_end, 0)
                if len(header) != layout.header_end:
                    raise InstanceChangedError("file shrank while reading it, at offset 0")
                if not seen.agrees_with(header):
                    raise InstanceChangedError("file changed while reading it")
                plan = plan_layout(header, layout)
                digest = hashlib.sha256()
                cids, sizes = [], []
                for start, end in block_ranges(plan, self.chunk_size):
                    n = end - start
                    buf = self._buffer()
                    try:
                        cid = self._read(fd, header, start, end, buf, digest)
                    except BaseException:
                        self._free.append(buf)
                        raise
                    writes.append(self._submit(buf, n, cid))
                    cids.append(cid)
                    sizes.append(n)
                if os.pread(fd, 1, size) or os.fstat(fd).st_size != size:
                    raise InstanceChangedError("file grew while reading it")
        except BaseException:
            _discard_when_written(writes)
            raise
        return StagedFile(plan, cids, sizes, size, digest.digest(), writes, source)

    @staticmethod
    def _read(fd: int, header: bytes, start: int, end: int, buf: mmap.mmap, digest: hashlib._Hash) -> CID:
        """Bytes [start, end) of the file into `buf`, added to `digest`; their CID."""
        n = end - start
        with memoryview(buf) as view, view[:n] as block:
            if end <= len(header):
                block[:] = header[start:end]
            elif os.preadv(fd, [block], start) != n:
                raise InstanceChangedError(f"file shrank while reading it, at offset {start}")
            digest.update(block)
            return CID(hashlib.sha256(block).digest())

    def _buffer(self) -> mmap.mmap:
        """A free buffer: the oldest write in flight is waited for when all are taken."""
        if not self._free:
            if not self._in_flight:
                return aligned_buffer(self.chunk_size)
            future, buf = self._in_flight.popleft()
            future.exception()  # its outcome is the file's (StagedFile.result)
            self._free.append(buf)
        return self._free.pop()

    def _submit(self, buf: mmap.mmap, size: int, cid: CID) -> Future[StagedBlock | None]:
        future = self._writers.submit(self.blocks.stage_aligned, buf, size, cid)
        self._in_flight.append((future, buf))
        return future
