"""meshnode.storage.direct_io: new files hold exactly their bytes, through O_DIRECT or the page cache."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshnode.storage.direct_io import ALIGN, MIN_DIRECT, NewFileWriter, aligned_buffer
from tests.conftest import SmallFs

SIZES = [0, 1, MIN_DIRECT - 1, MIN_DIRECT, MIN_DIRECT + 1, ALIGN * 300 - 1, 1 << 20, (1 << 20) + 3, 3 * (1 << 20) + 5]


def payload(size: int) -> bytes:
    """`size` bytes with a pattern that depends on the size (so files cannot be confused)."""
    pattern = bytes((i * 31 + size) % 256 for i in range(251))
    data = (pattern * (size // len(pattern) + 1))[:size]
    assert len(data) == size
    return data


def supports_direct(folder: Path) -> bool:
    probe = folder / "probe"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return False
        raise
    else:
        os.close(fd)
        return True
    finally:
        probe.unlink(missing_ok=True)


@pytest.mark.parametrize("size", SIZES)
def test_new_files_hold_exactly_their_bytes(tmp_path: Path, size: int) -> None:
    writer = NewFileWriter()
    data = payload(size)
    writer.write_new(tmp_path / "block", data)
    assert (tmp_path / "block").read_bytes() == data
    # On a filesystem with O_DIRECT the writer keeps using it (an EINVAL would have turned it off).
    assert writer.direct == supports_direct(tmp_path)


def test_the_buffer_is_reused_and_a_shorter_block_after_a_longer_one_is_not_padded_with_old_bytes(tmp_path: Path) -> None:
    writer = NewFileWriter()
    writer.write_new(tmp_path / "long", b"\xff" * (2 << 20))
    short = b"\x01" * (MIN_DIRECT + 10)
    writer.write_new(tmp_path / "short", short)
    assert (tmp_path / "short").read_bytes() == short


def test_an_existing_file_is_never_overwritten(tmp_path: Path) -> None:
    writer = NewFileWriter()
    (tmp_path / "block").write_bytes(b"keep me")
    for data in (b"small", b"x" * (1 << 20)):
        with pytest.raises(FileExistsError):
            writer.write_new(tmp_path / "block", data)
        assert (tmp_path / "block").read_bytes() == b"keep me"


@pytest.fixture
def ramfs(tmp_path: Path) -> Iterator[Path]:
    """A real ramfs mount: it refuses O_DIRECT with EINVAL (tmpfs accepts it since Linux 6.6)."""
    if os.geteuid() != 0:
        pytest.skip("mounting ramfs needs root (CI runs as root)")
    mnt = tmp_path / "ramfs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "ramfs", "ramfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_filesystem_without_o_direct_falls_back_to_the_page_cache(ramfs: Path) -> None:
    folder = ramfs
    assert not supports_direct(folder)
    writer = NewFileWriter()
    data = payload((1 << 20) + 7)
    writer.write_new(folder / "block", data)
    assert (folder / "block").read_bytes() == data
    assert writer.direct is False
    assert sorted(p.name for p in folder.iterdir()) == ["block"]  # nothing half-written left behind


def test_a_full_disk_raises_and_leaves_no_partial_file(small_fs: SmallFs) -> None:
    folder = small_fs("1m")
    writer = NewFileWriter()
    with pytest.raises(OSError) as caught:
        writer.write_new(folder / "block", b"y" * (2 << 20))
    assert caught.value.errno == errno.ENOSPC
    assert sorted(p.name for p in folder.iterdir()) == []  # not even the part that fitted


def test_a_full_disk_in_an_ordinary_write_leaves_no_partial_file(small_fs: SmallFs) -> None:
    folder = small_fs("1m")
    with pytest.raises(OSError) as caught:
        NewFileWriter(direct=False).write_new(folder / "block", b"z" * (2 << 20))
    assert caught.value.errno == errno.ENOSPC
    assert sorted(p.name for p in folder.iterdir()) == []


@pytest.mark.parametrize("size", SIZES)
def test_a_block_written_from_an_aligned_buffer_holds_exactly_its_bytes(tmp_path: Path, size: int) -> None:
    writer = NewFileWriter()
    buf = aligned_buffer(3 * (1 << 20) + 5)
    buf[:] = b"\xee" * len(buf)  # stale bytes after the block must never reach the file
    data = payload(size)
    buf[:size] = data
    writer.write_new_aligned(tmp_path / "block", buf, size)
    assert (tmp_path / "block").read_bytes() == data
    assert writer.direct == supports_direct(tmp_path)


def test_an_aligned_buffer_without_room_for_the_padding_is_refused(tmp_path: Path) -> None:
    buf = aligned_buffer(ALIGN)
    with pytest.raises(ValueError, match="too small"):
        NewFileWriter().write_new_aligned(tmp_path / "block", buf, ALIGN + 1)
    assert list(tmp_path.iterdir()) == []


def test_aligned_writes_fall_back_to_the_page_cache_without_o_direct(ramfs: Path) -> None:
    writer = NewFileWriter()
    data = payload((1 << 20) + 7)
    buf = aligned_buffer(len(data))
    buf[: len(data)] = data
    writer.write_new_aligned(ramfs / "block", buf, len(data))
    assert (ramfs / "block").read_bytes() == data
    assert writer.direct is False
    assert sorted(p.name for p in ramfs.iterdir()) == ["block"]
