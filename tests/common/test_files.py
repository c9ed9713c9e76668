"""common.files: a full disk while writing a small durable file (the audit head, a key file) is a
DiskFullError, like a full disk under the block store or the database, and leaves no temporary file."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.files import DiskFullError, write_atomic
from protocol.errors import StorageError


def test_a_full_disk_is_disk_full_and_leaves_nothing(small_fs: object) -> None:
    mnt: Path = small_fs("64k")  # type: ignore[operator]
    (mnt / "filler").write_bytes(b"\0" * (60 * 1024))
    with pytest.raises(DiskFullError, match="no space left"):
        write_atomic(mnt / "audit-head", b"x" * (32 * 1024))
    assert sorted(p.name for p in mnt.iterdir()) == ["filler"]


def test_other_failures_stay_storage_errors(tmp_path: Path) -> None:
    with pytest.raises(StorageError) as caught:
        write_atomic(tmp_path / "missing-dir" / "f", b"x")
    assert not isinstance(caught.value, DiskFullError)
