"""Content-addressed block files: blocks/ab/cd/<cid>, written crash-safely.

A block becomes visible under its CID only after its bytes are durable:
temp file in blocks/tmp -> write (O_DIRECT where the filesystem allows it,
meshnode.storage.direct_io) -> fsync -> rename into place -> fsync of the
fan-out directory. A crash leaves at most a temp file, which `recover()`
removes at start-up; a name under blocks/ always holds the whole block. The
metadata that points at a block is committed only after `put` returns.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import mmap
import os
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from common.files import DiskFullError, write_new
from meshnode.storage.direct_io import NewFileWriter
from protocol.cid import CID
from protocol.errors import MeshError, StorageError

log = logging.getLogger(__name__)

MAX_BLOCK_SIZE = 8 * 1024 * 1024
STALE_TEMP_S = 600.0  # a temp block file this old belongs to no live writer
_BASE32 = "abcdefghijklmnopqrstuvwxyz234567"
#: What the last group of staged blocks was for (BlockStore.commit_staged).
COMMIT_NOTE = "last-commit"


class BlockCorruptError(StorageError):
    """A stored block no longer hashes to its CID (found on read: it has been moved to quarantine)."""

    code = 701
    name = "block-corrupt"

    def __init__(self, message: str, cid: CID | None = None) -> None:
        super().__init__(message)
        self.cid = cid


#: Told of every block a read found corrupt and moved to quarantine (called once per block, from the
#: reading thread, whichever it is: it must not block, and must hand work to its own loop).
QuarantineListener = Callable[[CID], None]


class BlockMissingError(StorageError):
    code = 702
    name = "block-missing"


def _storage_error(action: str, exc: OSError) -> StorageError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(f"{action}: no space left on device")
    return StorageError(f"{action}: {exc.strerror or exc}")


def _load_syncfs() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    result: Callable[[int], int] = fn
    return result


_SYNCFS = _load_syncfs()


@dataclass(frozen=True)
class StagedBlock:
    """A block written to a temp file, not yet durable nor visible under its CID."""

    cid: CID
    tmp: Path
    size: int


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _datasync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


_SYNC_POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="blocksync")


def _in_parallel(fn: Callable[[Path], None], paths: Sequence[Path]) -> None:
    """fn(path) for every path, the flushes overlapping: a disk flush is latency, not bandwidth, so
    several outstanding at once cost about one. Raises the first OSError, after all have finished."""
    if len(paths) <= 1:
        for path in paths:
            fn(path)
        return
    futures = [_SYNC_POOL.submit(fn, path) for path in paths[1:]]
    first: OSError | None = None
    try:
        fn(paths[0])
    except OSError as exc:
        first = exc
    for future in futures:
        try:
            future.result()
        except OSError as exc:
            first = first or exc
    if first is not None:
        raise first


#: Which file a path names: (device, inode, change time); a new file under the same name differs.
FileIdentity = tuple[int, int, int]


def _identity(st: os.stat_result) -> FileIdentity:
    return (st.st_dev, st.st_ino, st.st_ctime_ns)


@dataclass(frozen=True)
class ScrubResult:
    checked: int
    corrupt: tuple[CID, ...]
    stray: tuple[str, ...]


class BlockStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blocks_dir = root / "blocks"
        self.tmp_dir = root / "tmp"
        self.quarantine_dir = root / "quarantine"
        self._writer = NewFileWriter()
        self.on_quarantined: QuarantineListener | None = None
        try:
            for d in (self.blocks_dir, self.tmp_dir, self.quarantine_dir):
                d.mkdir(parents=True, exist_ok=True)
            self._create_fanout()
        except OSError as exc:
            raise _storage_error(f"cannot create block store at {root}", exc) from None

    def _create_fanout(self) -> None:
        """Create all 32 x 32 fan-out folders once, so storing a block never has to."""
        marker = self.blocks_dir / ".fanout"
        if marker.exists():
            return
        for a in _BASE32:
            for b in _BASE32:
                (self.blocks_dir / a / b).mkdir(parents=True, exist_ok=True)
        if not self._syncfs():
            _fsync_dir(self.blocks_dir)
        marker.touch()

    def path_of(self, cid: CID) -> Path:
        text = str(cid)
        # base32 CIDs share the 'bafkrei' prefix, and the last character carries only
        # 3 bits: fan out on the two characters before it (32 x 32 folders).
        return self.blocks_dir / text[-2] / text[-3] / text

    def recover(self, min_age_s: float = STALE_TEMP_S) -> int:
        """Remove temp files left by a crashed writer. Returns how many were removed.

        Only files older than `min_age_s` go: another process (the running node,
        or an ingest) may be writing the younger ones right now.
        """
        removed = 0
        cutoff = time.time() - min_age_s
        for entry in self.tmp_dir.iterdir():
            try:
                if entry.stat().st_mtime <= cutoff:
                    entry.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("cannot remove stale temp file %s: %s", entry.name, exc)
        if removed:
            log.info("removed %d partial block file(s) left by an interrupted write", removed)
        return removed

    def has(self, cid: CID) -> bool:
        return self.path_of(cid).exists()

    def put(self, data: bytes, cid: CID | None = None) -> CID:
        """Store data durably; returns its CID. With `cid`, refuse data that does not match it."""
        if len(data) > MAX_BLOCK_SIZE:
            raise StorageError(f"block of {len(data)} bytes exceeds {MAX_BLOCK_SIZE}")
        actual = CID.of(data)
        if cid is not None and actual != cid:
            raise BlockCorruptError(f"data does not hash to {cid}")
        final = self.path_of(actual)
        if final.exists():
            return actual  # content-addressed: the same bytes are already durable
        tmp = self.tmp_dir / f"{final.name}.{secrets.token_hex(4)}"
        try:
            self._writer.write_new(tmp, data)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
            _fsync_dir(final.parent)
        except OSError as exc:
            try:
                tmp.unlink()
            except OSError:
                pass
            raise _storage_error(f"cannot store block {actual}", exc) from None
        return actual

    def stage(self, data: bytes, cid: CID | None = None) -> StagedBlock | None:
        """Write a block to a temp file without syncing; None if it is already stored.

        Staged blocks become durable and visible together in `commit_staged`,
        which costs two filesystem syncs for the whole batch instead of two
        fsyncs per block. `cid`, when given, must be the CID the caller has just computed of `data`.
        """
        if len(data) > MAX_BLOCK_SIZE:
            raise StorageError(f"block of {len(data)} bytes exceeds {MAX_BLOCK_SIZE}")
        if cid is None:
            cid = CID.of(data)
        final = self.path_of(cid)
        if final.exists():
            return None
        tmp = self.tmp_dir / f"{final.name}.{secrets.token_hex(4)}"
        try:
            self._writer.write_new(tmp, data)
        except OSError as exc:
            try:
                tmp.unlink()
            except OSError:
                pass
            raise _storage_error(f"cannot store block {cid}", exc) from None
        return StagedBlock(cid, tmp, len(data))

    def stage_aligned(self, buf: mmap.mmap, size: int, cid: CID) -> StagedBlock | None:
        """stage() for a block held at the start of a page-aligned buffer (direct_io.aligned_buffer),
        written from there without a copy; `cid` is the CID the caller has just computed of buf[:size].
        Safe to call from several threads at once (each with its own buffer)."""
        if size > MAX_BLOCK_SIZE:
            raise StorageError(f"block of {size} bytes exceeds {MAX_BLOCK_SIZE}")
        final = self.path_of(cid)
        if final.exists():
            return None
        tmp = self.tmp_dir / f"{final.name}.{secrets.token_hex(4)}"
        try:
            self._writer.write_new_aligned(tmp, buf, size)
        except OSError as exc:
            try:
                tmp.unlink()
            except OSError:
                pass
            raise _storage_error(f"cannot store block {cid}", exc) from None
        return StagedBlock(cid, tmp, size)

    def commit_staged(self, staged: Sequence[StagedBlock], note: bytes | None = None) -> None:
        """Make staged blocks durable, then visible under their CIDs, then durably so.

        `note` (the caller's words on what the group is for) replaces the previous group's note, durable
        with the group's blocks and in place before any of them is renamed: after a crash, `commit_note`
        says what the last group was for, the only one whose blocks can be in place but not yet recorded
        by a caller that commits groups one after another.

        Without syncfs(2) this falls back to fsync per file and per directory.
        """
        note_tmp: list[Path] = []
        try:
            if note is not None:
                note_tmp.append(self.temp_path())
                write_new(note_tmp[0], note)
            # Even with nothing staged, sync once: blocks found already present may have
            # been renamed into place by another writer whose final sync is still pending.
            self._sync([s.tmp for s in staged] + note_tmp)
            parents = set()
            if note_tmp:
                os.replace(note_tmp.pop(), self.root / COMMIT_NOTE)
                parents.add(self.root)
            for block in staged:
                final = self.path_of(block.cid)
                os.replace(block.tmp, final)
                parents.add(final.parent)
            self._sync_dirs(parents)
        except OSError as exc:
            self.discard_staged(staged)
            self.discard_temp(note_tmp)
            raise _storage_error("cannot make blocks durable", exc) from None

    def commit_note(self) -> bytes | None:
        """The note of the last group committed with one (commit_staged), or None."""
        try:
            return (self.root / COMMIT_NOTE).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _storage_error("cannot read the last commit's note", exc) from None

    def temp_path(self) -> Path:
        """A fresh name in the store's temp folder (recover() removes what a crash leaves there)."""
        return self.tmp_dir / f"incoming.{secrets.token_hex(8)}"

    def make_durable(self, paths: Sequence[Path]) -> None:
        """fdatasync temp files written by the caller, in parallel; then drop their pages from the page
        cache (they are on disk, and the next write reuses that memory instead of claiming fresh pages)."""
        try:
            _in_parallel(_datasync, paths)
        except OSError as exc:
            raise _storage_error("cannot make blocks durable", exc) from None

    def write_temp(self, data: bytes | memoryview) -> Path:
        """Write data to a new temp file in the store, not yet durable (make_durable), its CID maybe not known yet.

        `place` then names it by its CID. A crash leaves only the temp file.
        """
        if len(data) > MAX_BLOCK_SIZE:
            raise StorageError(f"block of {len(data)} bytes exceeds {MAX_BLOCK_SIZE}")
        tmp = self.temp_path()
        try:
            write_new(tmp, data)
        except OSError as exc:
            self.discard_temp([tmp])
            raise _storage_error("cannot store a block", exc) from None
        return tmp

    def place(self, written: Sequence[tuple[Path, CID]], present: Sequence[CID] = ()) -> None:
        """Rename durable temp files (write_temp + make_durable) to their CIDs and sync their folders.

        A block already stored under its CID keeps its file (the temp one goes).
        `present` are other blocks of the same instance, already stored: their
        folders are synced too, since the writer that renamed them into place
        may not have synced its folder yet. The fan-out folders themselves are
        durable since the store was created.
        """
        parents = {self.path_of(cid).parent for cid in present}
        try:
            for tmp, cid in written:
                final = self.path_of(cid)
                if final.exists():
                    tmp.unlink()
                else:
                    os.replace(tmp, final)
                parents.add(final.parent)
            _in_parallel(_fsync_dir, sorted(parents))
        except OSError as exc:
            self.discard_temp([tmp for tmp, _ in written])
            raise _storage_error("cannot make blocks durable", exc) from None

    def discard_temp(self, paths: Sequence[Path]) -> None:
        for path in paths:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot remove temp block %s: %s", path.name, exc)

    def discard_staged(self, staged: Sequence[StagedBlock]) -> None:
        for block in staged:
            try:
                block.tmp.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot remove temp block %s: %s", block.tmp.name, exc)

    def _syncfs(self) -> bool:
        if _SYNCFS is None:
            return False
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if _SYNCFS(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
        finally:
            os.close(fd)
        return True

    def _sync(self, files: Sequence[Path]) -> None:
        if self._syncfs():
            return
        for path in files:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _sync_dirs(self, dirs: set[Path]) -> None:
        if self._syncfs():
            return
        for d in sorted(dirs):
            _fsync_dir(d)
            _fsync_dir(d.parent)

    def get(self, cid: CID, *, verify: bool = True) -> bytes:
        """The block's bytes. With `verify`, a block that no longer hashes to its CID is moved to quarantine
        at once (no reader gets it again, `has` says no), `on_quarantined` is told, and BlockCorruptError
        raised."""
        try:
            with open(self.path_of(cid), "rb") as fh:
                st = os.fstat(fh.fileno())
                identity = _identity(st)
                # sized from the file: read(MAX_BLOCK_SIZE + 1) costs an 8 MiB allocation per block (~17x slower
                # for a 512 KiB block); whatever is read is still hashed, so a file that changed size is caught
                data = fh.read(min(st.st_size, MAX_BLOCK_SIZE) + 1)
        except FileNotFoundError:
            raise BlockMissingError(f"block {cid} is not stored") from None
        except OSError as exc:
            raise _storage_error(f"cannot read block {cid}", exc) from None
        if verify and not cid.matches(data):
            self._corrupt(cid, identity)
            raise BlockCorruptError(f"block {cid} is corrupt on disk; quarantined", cid)
        return data

    def _corrupt(self, cid: CID, identity: FileIdentity) -> None:
        try:
            moved = self.quarantine(cid, identity=identity)
        except StorageError as exc:
            log.error("block %s is corrupt and cannot be quarantined: %s", cid, exc)
            return
        if moved is None:
            return  # another reader moved it first (and told the listener)
        log.warning("block %s failed its hash check on read; moved to %s", cid, moved)
        listener = self.on_quarantined
        if listener is not None:
            try:
                listener(cid)
            except Exception:  # noqa: BLE001 - a reader's error path: the block is quarantined regardless
                log.exception("quarantine listener failed for block %s", cid)

    def size_of(self, cid: CID) -> int:
        try:
            return self.path_of(cid).stat().st_size
        except FileNotFoundError:
            raise BlockMissingError(f"block {cid} is not stored") from None

    def delete(self, cid: CID) -> bool:
        try:
            self.path_of(cid).unlink()
            return True
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise _storage_error(f"cannot delete block {cid}", exc) from None

    def quarantine(self, cid: CID, *, identity: FileIdentity | None = None) -> Path | None:
        """Move a corrupt block out of the store, keeping it for inspection; None if it is not there (moved
        by another reader already) or, with `identity` (of the file found corrupt), is another file now
        (a good copy fetched again since)."""
        path = self.path_of(cid)
        target = self.quarantine_dir / f"{cid}.{secrets.token_hex(4)}"
        try:
            if identity is not None and _identity(path.stat()) != identity:
                return None
            os.rename(path, target)  # same filesystem: atomic, so two readers cannot both move it
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _storage_error(f"cannot quarantine block {cid}", exc) from None
        return target

    def iter_cids(self) -> Iterator[CID | str]:
        """Every block file, as its CID, or the file name when it is not a CID (stray)."""
        for path in sorted(self.blocks_dir.glob("*/*/b*")):
            try:
                cid = CID.parse(path.name)
            except MeshError:
                yield path.name
                continue
            yield cid if self.path_of(cid) == path else path.name

    def scrub(self) -> ScrubResult:
        """Verify every block; quarantine those that no longer match their CID."""
        checked, corrupt, stray = 0, [], []
        for item in self.iter_cids():
            if isinstance(item, str):
                stray.append(item)
                continue
            checked += 1
            try:
                self.get(item, verify=True)  # quarantines a corrupt block
            except BlockCorruptError:
                corrupt.append(item)
            except BlockMissingError:
                continue  # removed meanwhile (gc, or a reader quarantined it)
        return ScrubResult(checked, tuple(corrupt), tuple(stray))
