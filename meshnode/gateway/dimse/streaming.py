"""A C-STORE data set split into blocks, hashed and written while it is still arriving.

storescu waits for each C-STORE response before it sends the next instance,
so every millisecond between the last PDU and the response counts. Here the
DUL thread hands each data set fragment to the association's StreamWorker
thread, which hashes it (the whole-file digest, and the CID of the block it
belongs to) and writes it to the block's temp file, while the DUL thread
decodes the next PDU: hashlib and file writes release the GIL, so this runs
on the other core. The block boundaries are those of meshnode.dicom.blocks
(header, native pixel value in chunk_size pieces, trailer), known as soon as
the pixel data element's header has arrived.

Nothing streamed is trusted: once the data set is complete, StudyIntake
checks the whole instance exactly as before (structure, pydicom cross-check,
UIDs) and uses the streamed blocks only if their ranges are the ones the
full check computes; otherwise, and whenever streaming gave up (deflated or
encapsulated data, an I/O error), the temp files are removed and the
instance is stored the ordinary way. Temp files are never visible under a
CID until StudyIntake places them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from meshnode.dicom.structure import find_native_pixel_value
from meshnode.storage.blockstore import BlockStore
from protocol.cid import CID
from protocol.errors import StorageError

log = logging.getLogger(__name__)

MAX_HEAD = 1 << 20  # the pixel data element must start within this many bytes, or streaming gives up
COLLECT_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class StreamedBlocks:
    """What the worker made of a complete data set: every block's range, CID and temp file (written, not
    synced: StudyIntake syncs them, with the rest of its commit group, before any metadata names them)."""

    ranges: tuple[tuple[int, int], ...]
    cids: tuple[CID, ...]
    temps: tuple[Path, ...]
    digest: bytes
    size: int


class StreamWorker:
    """One thread per association that runs its streams' work in order."""

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], None]) -> None:
        self._queue.put(fn)

    def close(self) -> None:
        self._queue.put(None)

    def _run(self) -> None:
        while True:
            fn = self._queue.get()
            if fn is None:
                return
            try:
                fn()
            except Exception:  # a task boundary: each stream records its own failure
                log.exception("stream worker task failed")


class StreamedInstance:
    def __init__(self, prefix: bytes, blocks: BlockStore, chunk_size: int, worker: StreamWorker) -> None:
        self.chunks: list[bytes] = [prefix]
        self.size = len(prefix)
        self._blocks = blocks
        self._chunk = chunk_size
        self._worker = worker
        self._done = threading.Event()
        # worker-side state (only the worker thread touches it)
        self._digest = hashlib.sha256()
        self._head = bytearray()
        self._layout: tuple[int, int] | None = None  # (pixel value offset, pixel value end)
        self._pos = 0
        self._current: tuple[int, int | None, hashlib._Hash, Path, int] | None = None  # start, end, hash, temp, fd
        self._finished: list[tuple[int, int, CID, Path]] = []
        self._abandoned = False
        self._result: StreamedBlocks | None = None
        worker.submit(lambda: self._take(prefix))

    # -- the DUL thread --------------------------------------------------------------------------
    def feed(self, fragment: bytes) -> None:
        self.chunks.append(fragment)
        self.size += len(fragment)
        self._worker.submit(lambda: self._take(fragment))

    def finish(self) -> None:
        self._worker.submit(self._finish)

    def abandon(self) -> None:
        """The data set will not be stored (too large, association gone): drop what was written."""
        self._worker.submit(self._give_up)
        self._worker.submit(self._done.set)

    # -- the handler thread ------------------------------------------------------------------------
    def collect(self) -> tuple[bytes, StreamedBlocks | None]:
        """The complete Part 10 bytes, and the streamed blocks when streaming succeeded."""
        if not self._done.wait(COLLECT_TIMEOUT_S):
            log.error("streamed data set not finished after %d s; storing it the ordinary way",
                      COLLECT_TIMEOUT_S)
            self.abandon()
            return b"".join(self.chunks), None
        return b"".join(self.chunks), self._result

    # -- the worker thread -------------------------------------------------------------------------
    def _take(self, data: bytes) -> None:
        if self._abandoned:
            return
        self._digest.update(data)
        if self._layout is None:
            self._head += data
            head = bytes(self._head)
            found = find_native_pixel_value(head)
            if found is None:
                if len(self._head) > MAX_HEAD:
                    self._give_up()
                return
            value_pos, length = found
            self._layout = (value_pos, value_pos + length)
            self._head = bytearray()
            self._consume(memoryview(head))
        else:
            self._consume(memoryview(data))

    def _block_end(self, pos: int) -> tuple[int, int | None]:
        """(start, end) of the block the byte at file offset `pos` belongs to (end None: open trailer)."""
        assert self._layout is not None
        value_pos, pixel_end = self._layout
        start: int
        end: int | None
        if pos < value_pos:
            start, end = 0, value_pos
        elif pos < pixel_end:
            start, end = value_pos, pixel_end
        else:
            start, end = pixel_end, None
        block_start = start + (pos - start) // self._chunk * self._chunk
        block_end = block_start + self._chunk
        return block_start, block_end if end is None else min(block_end, end)

    def _consume(self, data: memoryview) -> None:
        try:
            while data:
                if self._current is None:
                    start, end = self._block_end(self._pos)
                    tmp = self._blocks.temp_path()
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                    self._current = (start, end, hashlib.sha256(), tmp, fd)
                start, end, hasher, tmp, fd = self._current
                take = len(data) if end is None else min(len(data), end - self._pos)
                piece, data = data[:take], data[take:]
                hasher.update(piece)
                while piece:
                    piece = piece[os.write(fd, piece):]
                self._pos += take
                if end is not None and self._pos == end:
                    self._close_block()
        except OSError as exc:
            log.warning("streaming a data set to disk failed (%s); it is stored the ordinary way", exc)
            self._give_up()

    def _close_block(self) -> None:
        assert self._current is not None
        start, _, hasher, tmp, fd = self._current
        self._current = None
        os.close(fd)
        self._finished.append((start, self._pos, CID(hasher.digest()), tmp))

    def _finish(self) -> None:
        try:
            if self._abandoned or self._layout is None:
                self._give_up()
                return
            if self._current is not None:
                self._close_block()
            self._result = StreamedBlocks(
                ranges=tuple((start, end) for start, end, _, _ in self._finished),
                cids=tuple(cid for _, _, cid, _ in self._finished),
                temps=tuple(tmp for *_, tmp in self._finished), digest=self._digest.digest(), size=self._pos)
        except (OSError, StorageError) as exc:
            log.warning("closing a streamed data set failed (%s); it is stored the ordinary way", exc)
            self._give_up()
        finally:
            self._done.set()

    def _give_up(self) -> None:
        self._abandoned = True
        temps = [tmp for *_, tmp in self._finished]
        if self._current is not None:
            temps.append(self._current[3])
            try:
                os.close(self._current[4])
            except OSError:
                pass
        self._blocks.discard_temp(temps)
        self._finished, self._current, self._head = [], None, bytearray()
        self._result = None
