"""Content-addressed block files: blocks/ab/cd/<cid>, written crash-safely.

A block becomes visible under its CID only after its bytes are durable:
temp file in blocks/tmp -> write -> fsync -> rename into place -> fsync of
the fan-out directory. A crash leaves at most a temp file, which `recover()`
removes at start-up; a name under blocks/ always holds the whole block. The
metadata that points at a block is committed only after `put` returns.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from protocol.cid import CID
from protocol.errors import MeshError, StorageError

log = logging.getLogger(__name__)

MAX_BLOCK_SIZE = 8 * 1024 * 1024


class BlockCorruptError(StorageError):
    """A stored block no longer hashes to its CID."""

    code = 701
    name = "block-corrupt"


class BlockMissingError(StorageError):
    code = 702
    name = "block-missing"


class DiskFullError(StorageError):
    code = 703
    name = "disk-full"


def _storage_error(action: str, exc: OSError) -> StorageError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(f"{action}: no space left on device")
    return StorageError(f"{action}: {exc.strerror or exc}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        try:
            for d in (self.blocks_dir, self.tmp_dir, self.quarantine_dir):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _storage_error(f"cannot create block store at {root}", exc) from None

    def path_of(self, cid: CID) -> Path:
        text = str(cid)
        # base32 CIDs share the 'bafkrei' prefix; fan out on the digest part.
        return self.blocks_dir / text[-2:] / text[-4:-2] / text

    def recover(self) -> int:
        """Remove temp files left by a crash. Returns how many were removed."""
        removed = 0
        for entry in self.tmp_dir.iterdir():
            try:
                entry.unlink()
                removed += 1
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
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
            _fsync_dir(final.parent)
        except OSError as exc:
            try:
                tmp.unlink()
            except OSError:
                pass
            raise _storage_error(f"cannot store block {actual}", exc) from None
        return actual

    def get(self, cid: CID, *, verify: bool = True) -> bytes:
        try:
            with open(self.path_of(cid), "rb") as fh:
                data = fh.read(MAX_BLOCK_SIZE + 1)
        except FileNotFoundError:
            raise BlockMissingError(f"block {cid} is not stored") from None
        except OSError as exc:
            raise _storage_error(f"cannot read block {cid}", exc) from None
        if verify and not cid.matches(data):
            raise BlockCorruptError(f"block {cid} is corrupt on disk; run `meshnode scrub`")
        return data

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

    def quarantine(self, cid: CID) -> Path:
        """Move a corrupt block out of the store, keeping it for inspection."""
        target = self.quarantine_dir / f"{cid}.{secrets.token_hex(4)}"
        try:
            shutil.move(str(self.path_of(cid)), target)
        except OSError as exc:
            raise _storage_error(f"cannot quarantine block {cid}", exc) from None
        return target

    def iter_cids(self) -> Iterator[CID | str]:
        """Every block file, as its CID, or the file name when it is not a CID (stray)."""
        for path in sorted(self.blocks_dir.glob("*/*/*")):
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
                self.get(item, verify=True)
            except BlockCorruptError:
                log.warning("block %s is corrupt; quarantined", item)
                self.quarantine(item)
                corrupt.append(item)
        return ScrubResult(checked, tuple(corrupt), tuple(stray))
