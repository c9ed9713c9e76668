"""Small durable-file helpers shared by the admin tools and the node, and the error for a full disk."""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from protocol.errors import StorageError


class DiskFullError(StorageError):
    """No space left on the device (a block file, a key file or a database)."""

    code = 703
    name = "disk-full"


def write_new(path: Path, data: bytes | memoryview, mode: int = 0o644) -> None:
    """Create `path` (it must not exist) holding `data`; no sync. Raises OSError, and then leaves no
    partial file behind (O_EXCL: the file is this call's own)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write data to path so that readers see the old or the new file, never half of one.

    temp file -> fsync -> rename -> fsync of the directory.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(f"cannot write {path}: no space left on device") from exc
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from exc


def read_file(path: Path, what: str, *, max_bytes: int = 64 * 1024 * 1024) -> bytes:
    """Read a whole (small) file, turning OS errors into one clear StorageError."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except FileNotFoundError:
        raise StorageError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise StorageError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise StorageError(f"{what} {path} is larger than {max_bytes} bytes")
    return data


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created, mode 0600, if missing): one writer at a time across
    processes (and across threads: each call opens its own file description)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StorageError(f"cannot lock {path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
