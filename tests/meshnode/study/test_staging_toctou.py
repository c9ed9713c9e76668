"""FileStager: the layout, its security flags and the attributes describe the very bytes stored (review of
issue 12, finding 4). A file rewritten in place while it is staged is refused (InstanceChangedError) or
staged consistently, never stored with flags or attributes read from other bytes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest

from meshnode.dicom import synthetic
from meshnode.dicom.blocks import block_ranges
from meshnode.dicom.errors import InstanceChangedError
from meshnode.dicom.structure import scan_layout_stream
from meshnode.storage.blockstore import BlockStore
from meshnode.study import staging
from meshnode.study.staging import FileStager


def one_ct(tmp_path: Path) -> Path:
    synthetic.generate_ct_study(tmp_path / "ct", slices=1, rows=64, columns=64, seed=3)
    return next(p for p in (tmp_path / "ct").rglob("*") if p.is_file())


def test_a_preamble_rewritten_after_the_scan_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = one_ct(tmp_path)
    real_scan = scan_layout_stream

    def scan_then_rewrite(*args: Any) -> Any:
        layout = real_scan(*args)
        with path.open("r+b") as f:  # another writer puts an executable preamble in, same size
            f.write(b"MZ\x90\x00" + b"\x00" * 124)
        return layout

    monkeypatch.setattr(staging, "scan_layout_stream", scan_then_rewrite)
    store = BlockStore(tmp_path / "store")
    stager = FileStager(store, 1 << 20)
    try:
        with pytest.raises(InstanceChangedError):
            stager.stage(path)
    finally:
        stager.close()
    assert not list(store.tmp_dir.iterdir())


def test_a_large_header_is_planned_from_the_bytes_stored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A header over HEADER_IN_MEMORY (a big private element): pydicom used to reopen the file by name, so
    the attributes recorded and the header blocks stored could come from different contents."""
    path = one_ct(tmp_path)
    ds = pydicom.dcmread(path)
    ds.add_new(0x00091010, "LO", "PRIVATE")
    ds.add_new(0x00091100, "OB", b"\x00" * (staging.HEADER_IN_MEMORY + 4096))
    ds.save_as(path, enforce_file_format=True)
    old_uid = str(ds.SOPInstanceUID)
    new_uid = old_uid[:-1] + ("1" if old_uid[-1] != "1" else "2")  # same length
    data = path.read_bytes()
    assert data.count(old_uid.encode()) >= 1

    real_ranges = block_ranges

    def rewrite_then_ranges(*args: Any) -> Any:  # after the plan, before the blocks are read
        path.write_bytes(data.replace(old_uid.encode(), new_uid.encode()))
        return real_ranges(*args)

    monkeypatch.setattr(staging, "block_ranges", rewrite_then_ranges)
    store = BlockStore(tmp_path / "store")
    stager = FileStager(store, 1 << 20)
    try:
        pending = stager.stage(path)
        stager.drain()
        result = pending.result()
    finally:
        stager.close()
    by_cid = {b.cid: b.tmp.read_bytes() for b in result.staged}
    stored = b"".join(by_cid[c] for c in result.record.blocks)
    assert stored == data  # the bytes read once, before the rewrite
    assert result.record.sop_instance_uid == old_uid
