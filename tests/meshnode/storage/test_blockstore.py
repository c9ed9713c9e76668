"""BlockStore: durable, content-addressed, never a partial block under a CID, clean errors when the disk fills."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from common.files import DiskFullError
from meshnode.storage.blockstore import BlockCorruptError, BlockMissingError, BlockStore
from protocol.cid import CID
from tests.conftest import SmallFs


def test_put_get_dedupe(tmp_path: Path) -> None:
    store = BlockStore(tmp_path)
    cid = store.put(b"hello block")
    assert cid == CID.of(b"hello block") and store.has(cid)
    assert store.get(cid) == b"hello block"
    mtime = store.path_of(cid).stat().st_mtime_ns
    assert store.put(b"hello block") == cid  # stored once
    assert store.path_of(cid).stat().st_mtime_ns == mtime
    assert list(store.iter_cids()) == [cid]
    assert str(store.path_of(cid)).endswith(str(cid))


def test_put_with_expected_cid_refuses_mismatch(tmp_path: Path) -> None:
    store = BlockStore(tmp_path)
    with pytest.raises(BlockCorruptError):
        store.put(b"evil bytes", CID.of(b"good bytes"))
    assert list(store.iter_cids()) == [] and list(store.tmp_dir.iterdir()) == []


def test_scrub_quarantines_corrupt_blocks(tmp_path: Path) -> None:
    store = BlockStore(tmp_path)
    good, bad = store.put(b"good"), store.put(b"will rot")
    store.path_of(bad).write_bytes(b"bit rot!")
    assert store.get(bad, verify=False) == b"bit rot!"  # only a verified read checks
    result = store.scrub()
    assert result.checked == 2 and result.corrupt == (bad,)
    assert not store.has(bad) and store.get(good) == b"good"
    assert [p.read_bytes() for p in store.quarantine_dir.iterdir()] == [b"bit rot!"]
    with pytest.raises(BlockMissingError):
        store.get(bad)


def test_a_verified_read_that_finds_corruption_quarantines_at_once_and_tells_once(tmp_path: Path) -> None:
    store = BlockStore(tmp_path)
    good, bad = store.put(b"good"), store.put(b"will rot")
    told: list[CID] = []
    store.on_quarantined = told.append
    path = store.path_of(bad)
    path.write_bytes(b"bit rot!")
    with pytest.raises(BlockCorruptError) as raised:
        store.get(bad)
    assert raised.value.cid == bad and told == [bad]
    assert not store.has(bad) and [p.read_bytes() for p in store.quarantine_dir.iterdir()] == [b"bit rot!"]
    with pytest.raises(BlockMissingError):  # no reader is handed it again, and nobody is told twice
        store.get(bad)
    assert told == [bad] and store.get(good) == b"good"
    assert store.scrub().corrupt == ()


@pytest.mark.parametrize("rot", ["appended", "truncated", "emptied", "grown past the block limit"])
def test_a_verified_read_sized_from_the_file_still_catches_a_changed_length(tmp_path: Path, rot: str) -> None:
    """get() reads as many bytes as the file holds (not MAX_BLOCK_SIZE + 1): a block file whose length
    changed, however, is still corrupt, quarantined, and none of it returned."""
    store = BlockStore(tmp_path)
    data = os.urandom(300_000)
    cid = store.put(data)
    changed = {"appended": data + b"tail", "truncated": data[:-1], "emptied": b"",
               "grown past the block limit": data + bytes(8 * 1024 * 1024)}[rot]
    store.path_of(cid).write_bytes(changed)
    with pytest.raises(BlockCorruptError):
        store.get(cid)
    assert not store.has(cid) and len(list(store.quarantine_dir.iterdir())) == 1


def test_a_good_copy_fetched_again_is_not_quarantined_by_a_late_reader(tmp_path: Path) -> None:
    store = BlockStore(tmp_path)
    cid = store.put(b"the block")
    st = os.stat(store.path_of(cid))
    stale = (st.st_dev, st.st_ino, st.st_ctime_ns)
    store.delete(cid)
    store.put(b"the block")  # fetched again: a new file under the same name
    assert store.quarantine(cid, identity=stale) is None  # the reader that found the old file corrupt
    assert store.get(cid) == b"the block"
    assert store.quarantine(CID.of(b"never stored")) is None


def test_recover_removes_stale_partial_writes_only(tmp_path: Path) -> None:
    store = BlockStore(tmp_path)
    stale = store.tmp_dir / "bafkreisomething.1234"
    stale.write_bytes(b"half a blo")
    os.utime(stale, (1_000_000, 1_000_000))
    fresh = store.tmp_dir / "bafkreiother.5678"
    fresh.write_bytes(b"being written by a live process")
    assert BlockStore(tmp_path).recover() == 1
    assert list(store.tmp_dir.iterdir()) == [fresh]
    assert store.recover(min_age_s=0) == 1 and list(store.tmp_dir.iterdir()) == []


def test_injected_enospc_is_a_clean_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = BlockStore(tmp_path)
    kept = store.put(b"already stored")
    real_write = os.write

    def full(fd: int, data: bytes | memoryview) -> int:
        if len(data) > 100:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(DiskFullError, match="no space left"):
        store.put(b"x" * 1000)
    monkeypatch.undo()
    assert list(store.tmp_dir.iterdir()) == []  # the partial temp file is gone
    assert list(store.iter_cids()) == [kept] and store.get(kept) == b"already stored"


def test_real_full_filesystem(small_fs: SmallFs) -> None:
    store = BlockStore(small_fs("1m"))
    stored = [store.put(os.urandom(200_000)) for _ in range(3)]
    with pytest.raises(DiskFullError):
        for _ in range(10):
            stored.append(store.put(os.urandom(200_000)))
    assert list(store.tmp_dir.iterdir()) == []
    assert set(store.iter_cids()) == set(stored)
    for cid in stored:
        assert cid.matches(store.get(cid))


def test_a_commit_note_is_the_last_groups_and_durable_with_it(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "store")
    assert store.commit_note() is None
    store.commit_staged([s for s in (store.stage(b"one"), store.stage(b"two")) if s is not None], b"group 1")
    assert store.commit_note() == b"group 1"
    store.commit_staged([s for s in (store.stage(b"three"),) if s is not None], b"group 2")
    assert store.commit_note() == b"group 2"  # replaced: only the last group can be in place but unrecorded
    store.commit_staged([s for s in (store.stage(b"four"),) if s is not None])
    assert store.commit_note() == b"group 2"  # a group committed without a note (ingest) leaves it
    assert list(store.tmp_dir.iterdir()) == []  # no temp file left behind
    assert {store.get(c) for c in (CID.of(b"one"), CID.of(b"three"), CID.of(b"four"))} == {b"one", b"three", b"four"}
