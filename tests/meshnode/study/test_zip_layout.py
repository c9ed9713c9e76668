"""The pure ZIP layout: archives Python's zipfile and Info-ZIP's `unzip -t` read, ZIP64 headers parsed back
for sizes and counts no test could write, and every byte range equal to the same slice of the whole."""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import zipfile
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshnode.study.zip_layout import (
    CENTRAL_SIG,
    DESCRIPTOR_SIG,
    EOCD_SIG,
    LOCAL_SIG,
    U32,
    ZIP64_EOCD_SIG,
    ZIP64_LOCATOR_SIG,
    DataPiece,
    MediaSetError,
    ZipLayout,
)

GiB = 1 << 30


def build(files: list[tuple[str, bytes]], *, force_zip64: bool = False) -> bytes:
    layout = ZipLayout.plan([(n, len(d)) for n, d in files], force_zip64=force_zip64)
    crcs = [zlib.crc32(d) for _, d in files]
    out = b"".join(p if isinstance(p, bytes) else files[p.entry][1][p.offset:p.offset + p.length]
                   for p in layout.pieces(0, layout.size, crcs.__getitem__))
    assert len(out) == layout.size
    return out


FILES = [("README.TXT", b"hello\n"), ("DICOMDIR", bytes(range(256)) * 3), ("DICOM/PT000000/ST000000/IM000000", b""),
         ("DICOM/PT000000/ST000000/IM000001", b"x" * 70001)]


@pytest.mark.parametrize("force_zip64", [False, True])
def test_zipfile_reads_it(force_zip64: bool) -> None:
    data = build(FILES, force_zip64=force_zip64)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.testzip() is None
        assert zf.namelist() == [n for n, _ in FILES]
        for name, content in FILES:
            assert zf.read(name) == content
            assert zf.getinfo(name).compress_type == zipfile.ZIP_STORED


@pytest.mark.skipif(shutil.which("unzip") is None, reason="Debian's unzip (Makefile SYSTEM_DEPS)")
@pytest.mark.parametrize("force_zip64", [False, True])
def test_unzip_tests_it(tmp_path: Path, force_zip64: bool) -> None:
    path = tmp_path / "set.zip"
    path.write_bytes(build(FILES, force_zip64=force_zip64))
    result = subprocess.run(["unzip", "-t", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No errors detected" in result.stdout
    out = tmp_path / "out"
    subprocess.run(["unzip", "-q", str(path), "-d", str(out)], check=True, timeout=60)
    assert (out / "DICOM/PT000000/ST000000/IM000001").read_bytes() == FILES[3][1]


@pytest.mark.skipif(shutil.which("7z") is None, reason="Debian's p7zip-full (Makefile SYSTEM_DEPS)")
@pytest.mark.parametrize("force_zip64", [False, True])
def test_7z_tests_it(tmp_path: Path, force_zip64: bool) -> None:
    """Stored entries with flag bit 3, sizes in the local header and a data descriptor after the data."""
    path = tmp_path / "set.zip"
    path.write_bytes(build(FILES, force_zip64=force_zip64))
    result = subprocess.run(["7z", "t", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "Everything is Ok" in result.stdout, result.stdout + result.stderr
    assert "Warning" not in result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("bsdtar") is None, reason="Debian's libarchive-tools (Makefile SYSTEM_DEPS)")
@pytest.mark.parametrize("force_zip64", [False, True])
@pytest.mark.parametrize("streaming", [False, True])
def test_bsdtar_reads_it(tmp_path: Path, force_zip64: bool, streaming: bool) -> None:
    """libarchive from a file (central directory) and from a pipe (streaming: local headers and data
    descriptors only, the way a reader of a download in progress sees it)."""
    data = build(FILES, force_zip64=force_zip64)
    path = tmp_path / "set.zip"
    path.write_bytes(data)
    out = tmp_path / "out"
    out.mkdir()
    if streaming:
        result = subprocess.run(["bsdtar", "-xf", "-", "-C", str(out)], input=data, capture_output=True,
                                timeout=60)
    else:
        result = subprocess.run(["bsdtar", "-xf", str(path), "-C", str(out)], capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for name, content in FILES:
        assert (out / name).read_bytes() == content


def test_the_same_entries_give_the_same_bytes() -> None:
    assert build(FILES) == build(list(FILES))


def _central_records(layout: ZipLayout, crc: int = 0x12345678) -> bytes:
    """The archive's tail: central directory and end records (no entry data needed)."""
    cd_start = layout.entries[-1].data_offset + layout.entries[-1].size + layout.entries[-1].descriptor_size
    return b"".join(p for p in layout.pieces(cd_start, layout.size, lambda i: crc)  # type: ignore[misc]
                    if isinstance(p, bytes))


def test_zip64_for_huge_entries_parsed_back() -> None:
    """Two 5 GiB entries and a small one after them: sizes and offsets beyond 4 GiB go in ZIP64 extras."""
    sizes = [("A", 5 * GiB), ("B", 5 * GiB), ("C", 10)]
    layout = ZipLayout.plan(sizes)
    assert [e.zip64 for e in layout.entries] == [True, True, True]  # A by size; B, C by offset
    assert layout.entries[1].header_offset > U32
    # the local header of B, parsed
    (head,) = layout.pieces(layout.entries[1].header_offset, layout.entries[1].data_offset, lambda i: 7)
    assert isinstance(head, bytes)
    sig, _v, flags, _m, _t, _d, crc, csize, usize, nlen, elen = struct.unpack_from("<IHHHHHIIIHH", head)
    # bit 3: the CRC-32 is in the data descriptor after the data (the header goes out before it is known)
    assert (sig, flags, crc, csize, usize, nlen, elen) == (LOCAL_SIG, 8, 0, U32, U32, 1, 20)
    end = layout.entries[1].data_offset + 5 * GiB
    (desc,) = layout.pieces(end, end + 24, lambda i: 7)
    assert isinstance(desc, bytes)
    assert struct.unpack("<IIQQ", desc) == (DESCRIPTOR_SIG, 7, 5 * GiB, 5 * GiB)
    assert struct.unpack_from("<HHQQ", head, 31) == (1, 16, 5 * GiB, 5 * GiB)
    tail = _central_records(layout)
    pos = 0
    for entry in layout.entries:
        fields = struct.unpack_from("<IHHHHHHIIIHHHHHII", tail, pos)
        assert fields[0] == CENTRAL_SIG and fields[8] == fields[9] == U32 and fields[16] == U32
        nlen, elen = fields[10], fields[11]
        assert struct.unpack_from("<HHQQQ", tail, pos + 46 + nlen) == (1, 24, entry.size, entry.size,
                                                                     entry.header_offset)
        pos += 46 + nlen + elen
    sig, _size, _mb, _vn, _d, _cd, n1, n2, cd_size, cd_offset = struct.unpack_from("<IQHHIIQQQQ", tail, pos)
    assert (sig, n1, n2, cd_size) == (ZIP64_EOCD_SIG, 3, 3, pos)
    assert cd_offset == 10 * GiB + 10 + sum(30 + 1 + 20 + 24 for _ in range(3))
    sig, _disk, z64_offset, _disks = struct.unpack_from("<IIQI", tail, pos + 56)
    assert (sig, z64_offset) == (ZIP64_LOCATOR_SIG, cd_offset + cd_size)
    assert struct.unpack_from("<I", tail, pos + 76)[0] == EOCD_SIG
    assert layout.size == cd_offset + cd_size + 56 + 20 + 22


def test_zip64_end_records_for_more_than_65535_entries() -> None:
    n = 70_000
    layout = ZipLayout.plan([(f"DICOM/IM{i:06d}", 3) for i in range(n)])
    assert not any(e.zip64 for e in layout.entries)  # small entries, small offsets: no per-entry extras
    tail = layout.pieces(layout.size - 98, layout.size, lambda i: 0)
    raw = b"".join(p for p in tail if isinstance(p, bytes))
    sig, _s, _mb, _vn, _d, _cd, n1, n2, _cds, _cdo = struct.unpack_from("<IQHHIIQQQQ", raw, 0)
    assert (sig, n1, n2) == (ZIP64_EOCD_SIG, n, n)
    eocd = struct.unpack_from("<IHHHHIIH", raw, 76)
    assert eocd[0] == EOCD_SIG and eocd[3] == eocd[4] == 0xFFFF


def test_a_real_archive_over_65535_entries_reads(tmp_path: Path) -> None:
    files = [(f"D/{i:05d}", bytes([i % 251])) for i in range(66_000)]
    data = build(files)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = zf.namelist()
        assert len(names) == 66_000 and zf.read("D/65999") == bytes([65999 % 251])


def test_bad_entries_and_ranges_are_refused() -> None:
    for bad in [("é", 1), ("", 1), ("x" * 70000, 1), ("a", -1)]:
        with pytest.raises(MediaSetError):
            ZipLayout.plan([bad])
    layout = ZipLayout.plan([("a", 3)])
    for start, stop in [(-1, 2), (2, 1), (0, layout.size + 1)]:
        with pytest.raises(MediaSetError):
            layout.check_range(start, stop)
        with pytest.raises(MediaSetError):
            next(layout.pieces(start, stop, lambda i: 0))


def test_pieces_are_produced_lazily_and_headers_need_no_crc() -> None:
    """C1 (review): the first piece of the whole archive comes before any CRC-32 is asked for; an entry's
    CRC-32 is asked for only when its data descriptor is reached (after its data was consumed)."""
    files = [("A", b"a" * 5), ("B", b"b" * 7)]
    layout = ZipLayout.plan([(n, len(d)) for n, d in files])
    asked: list[int] = []

    def crc(i: int) -> int:
        asked.append(i)
        return zlib.crc32(files[i][1])

    it = layout.pieces(0, layout.size, crc)
    assert isinstance(next(it), bytes) and asked == []      # local header of A: no CRC
    assert next(it) == DataPiece(0, 0, 5) and asked == []   # A's data
    desc = next(it)
    assert asked == [0] and isinstance(desc, bytes) and desc[:4] == struct.pack("<I", DESCRIPTOR_SIG)
    assert isinstance(next(it), bytes) and asked == [0]     # local header of B


def _slice(layout: ZipLayout, files: list[tuple[str, bytes]], start: int, stop: int) -> bytes:
    asked: list[int] = []

    def crc(i: int) -> int:
        asked.append(i)
        return zlib.crc32(files[i][1])

    pieces = list(layout.pieces(start, stop, crc))
    for p in pieces:
        assert not (isinstance(p, DataPiece) and p.length == 0) and p != b""
    return b"".join(p if isinstance(p, bytes) else files[p.entry][1][p.offset:p.offset + p.length] for p in pieces)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), force=st.booleans(),
       sizes=st.lists(st.integers(min_value=0, max_value=300), min_size=0, max_size=8))
def test_any_range_equals_the_slice_of_the_whole(data: st.DataObject, force: bool, sizes: list[int]) -> None:
    files = [(f"F{i}", bytes((i * 7 + j) % 256 for j in range(n))) for i, n in enumerate(sizes)]
    whole = build(files, force_zip64=force)
    layout = ZipLayout.plan([(n, len(d)) for n, d in files], force_zip64=force)
    start = data.draw(st.integers(min_value=0, max_value=len(whole)))
    stop = data.draw(st.integers(min_value=start, max_value=len(whole)))
    assert _slice(layout, files, start, stop) == whole[start:stop]


def test_every_boundary() -> None:
    """Each region edge, +-1, the first and last byte, zero-length ranges at every edge."""
    files = [("A", b"a" * 5), ("B", b""), ("C", b"c" * 9)]
    whole = build(files)
    layout = ZipLayout.plan([(n, len(d)) for n, d in files])
    edges = {0, layout.size}
    for e in layout.entries:
        edges |= {e.header_offset, e.data_offset, e.data_offset + e.size, e.data_offset + e.size + e.descriptor_size}
    points = sorted({p for e in edges for p in (e - 1, e, e + 1) if 0 <= p <= layout.size})
    for a in points:
        for b in points:
            if a <= b:
                assert _slice(layout, files, a, b) == whole[a:b], (a, b)
