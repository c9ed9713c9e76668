"""meshnode.patient.upload_check: each check on its own (the hostile upload cases are in
tests/adversary/test_uploads.py)."""

from __future__ import annotations

import io
import posixpath
import struct
import subprocess
import sys
import textwrap
import zipfile
import zlib
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from meshnode.patient.upload_check import (
    Outcome,
    UploadLimits,
    central_directory_refusal,
    check_file,
    preamble_refusal,
    zip_name_refusal,
)
from tests.meshnode.patient.upload_files import ct_files, dicomdir_bytes, zip_bytes

LIMITS = UploadLimits(max_file_bytes=10 << 20, total_bytes_left=100 << 20, files_left=100)


def test_zero_and_tiff_preambles_pass_others_are_refused() -> None:
    assert preamble_refusal(bytes(128)) is None
    assert preamble_refusal(b"II*\x00" + bytes(124)) is None
    assert preamble_refusal(b"MM\x00*" + bytes(124)) is None
    assert "Windows executable" in (preamble_refusal(b"MZ" + bytes(126)) or "")
    assert "ELF" in (preamble_refusal(b"\x7fELF" + bytes(124)) or "")
    assert "Mach-O" in (preamble_refusal(b"\xcf\xfa\xed\xfe" + bytes(124)) or "")
    assert "script" in (preamble_refusal(b"#!/bin/sh\n" + bytes(118)) or "")
    assert "not empty" in (preamble_refusal(b"hello" + bytes(123)) or "")


def test_a_good_instance_is_accepted_with_its_attributes(tmp_path: Path) -> None:
    path = ct_files(tmp_path / "in", 1)[0]
    [v] = check_file(path, "IMG0001", LIMITS, tmp_path)
    assert v.outcome is Outcome.ACCEPTED and v.instance is not None
    assert v.instance.attributes.study_instance_uid and v.instance.size == path.stat().st_size
    assert len(v.instance.sha256) == 64


def test_a_dicomdir_is_skipped_as_an_index(tmp_path: Path) -> None:
    path = tmp_path / "DICOMDIR"
    path.write_bytes(dicomdir_bytes())
    [v] = check_file(path, "DICOMDIR", LIMITS, tmp_path)
    assert v.outcome is Outcome.SKIPPED and "DICOMDIR" in v.reason


def test_a_zip_of_a_cd_gives_one_verdict_per_member(tmp_path: Path) -> None:
    files = ct_files(tmp_path / "in", 2)
    archive = tmp_path / "cd.zip"
    archive.write_bytes(zip_bytes([("DICOMDIR", dicomdir_bytes()), ("DICOM/IM1", files[0].read_bytes()),
                                   ("DICOM/IM2", files[1].read_bytes()), ("AUTORUN.INF", b"[autorun]\n")]))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    verdicts = {v.name: v for v in check_file(archive, "cd.zip", LIMITS, scratch)}
    assert verdicts["cd.zip/DICOMDIR"].outcome is Outcome.SKIPPED
    assert verdicts["cd.zip/DICOM/IM1"].outcome is Outcome.ACCEPTED
    assert verdicts["cd.zip/AUTORUN.INF"].outcome is Outcome.REFUSED
    assert "not a DICOM file" in verdicts["cd.zip/AUTORUN.INF"].reason
    im1 = verdicts["cd.zip/DICOM/IM1"].instance
    assert im1 is not None and im1.path.parent == scratch and im1.path.read_bytes() == files[0].read_bytes()
    assert len(list(scratch.iterdir())) == 2  # refused members leave nothing behind


def test_a_zip_member_limit_counts(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    archive.write_bytes(zip_bytes([(f"f{i}", b"x") for i in range(5)]))
    [v] = check_file(archive, "a.zip", UploadLimits(1 << 20, 1 << 20, files_left=4), tmp_path)
    assert v.outcome is Outcome.REFUSED and v.error == "upload-limit"


@given(st.text(min_size=1, max_size=60))
def test_an_accepted_zip_name_stays_inside_the_archive(name: str) -> None:
    if zip_name_refusal(name) is not None:
        return
    joined = posixpath.normpath(posixpath.join("/base", name))
    assert joined == "/base" or joined.startswith("/base/")
    assert "\\" not in name and "\x00" not in name and ".." not in name.split("/")


@given(st.lists(st.sampled_from(["..", ".", "a", "", "C:", "b\\c", "\x00"]), min_size=1, max_size=6))
def test_traversal_shapes_are_refused(parts: list[str]) -> None:
    name = "/".join(parts)
    hostile = (".." in parts or name.startswith(("/", "C:")) or any("\\" in p or "\x00" in p for p in parts)
               or not name)
    if hostile:
        assert zip_name_refusal(name) is not None


def test_a_huge_central_directory_is_refused_before_zipfile_reads_it(tmp_path: Path) -> None:
    """zipfile makes an object per entry and counts by the directory's size: a lying end record (1 entry)
    over a directory of 3000 entries is refused by the directory's size."""
    import struct

    data = bytearray(zip_bytes([(f"{i:05d}" * 40, b"") for i in range(3000)], zipfile.ZIP_STORED))
    end = data.rindex(b"PK\x05\x06")
    struct.pack_into("<HH", data, end + 8, 1, 1)  # entries on this disk, total entries: a lie
    archive = tmp_path / "many.zip"
    archive.write_bytes(bytes(data))
    [v] = check_file(archive, "many.zip", UploadLimits(1 << 20, 1 << 30, files_left=10), tmp_path)
    assert v.outcome is Outcome.REFUSED and "index" in v.reason and v.error == "upload-limit"
    honest = tmp_path / "honest.zip"
    honest.write_bytes(zip_bytes([(f"f{i}", b"") for i in range(30)]))
    [v] = check_file(honest, "honest.zip", UploadLimits(1 << 20, 1 << 30, files_left=10), tmp_path)
    assert v.outcome is Outcome.REFUSED and "holds 30 files" in v.reason


def test_members_past_the_links_total_or_the_file_limit_are_refused(tmp_path: Path) -> None:
    good = ct_files(tmp_path / "in", 1)[0].read_bytes()
    archive = tmp_path / "big.zip"
    archive.write_bytes(zip_bytes([("a.dcm", good), ("b.dcm", good), ("huge.dcm", bytes(len(good) + 1000))]))
    scratch = tmp_path / "s"
    scratch.mkdir()
    limits = UploadLimits(max_file_bytes=len(good) + 100, total_bytes_left=len(good) + 10, files_left=10,
                          max_ratio=10_000)
    v = {x.name: x for x in check_file(archive, "big.zip", limits, scratch)}
    assert v["big.zip/a.dcm"].outcome is Outcome.ACCEPTED
    assert "total size" in v["big.zip/b.dcm"].reason
    assert "per file" in v["big.zip/huge.dcm"].reason


def test_a_member_that_inflates_past_its_declared_size_is_refused(tmp_path: Path) -> None:
    """The central directory says 100 bytes; the data inflates to 100 000: the extraction's hard cap (or
    zipfile's CRC check) refuses it, and no scratch file is left."""
    import struct

    data = bytearray(zip_bytes([("a.dcm", bytes(100_000))]))
    for sig, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # uncompressed size fields
        at = data.index(sig)
        struct.pack_into("<I", data, at + offset, 100)
    archive = tmp_path / "lie.zip"
    archive.write_bytes(bytes(data))
    scratch = tmp_path / "s"
    scratch.mkdir()
    [v] = check_file(archive, "lie.zip", LIMITS, scratch)
    assert v.outcome is Outcome.REFUSED and v.reason
    assert list(scratch.iterdir()) == []


def test_an_honest_archive_with_large_members_passes_the_index_bound(tmp_path: Path) -> None:
    """The bound is on the central directory's size, not where it starts (a CD of big files, measured: 100 CT
    slices were refused before this test)."""
    files = ct_files(tmp_path / "in", 3)
    padded = [f.read_bytes() for f in files]
    archive = tmp_path / "big.zip"
    archive.write_bytes(zip_bytes([(f"IM{i}", data) for i, data in enumerate(padded)]
                                  + [("pad.bin", bytes(200_000))], zipfile.ZIP_STORED))
    scratch = tmp_path / "s"
    scratch.mkdir()
    v = {x.name: x for x in check_file(archive, "big.zip", UploadLimits(1 << 20, 1 << 30, files_left=4), scratch)}
    assert [v[f"big.zip/IM{i}"].outcome for i in range(3)] == [Outcome.ACCEPTED] * 3


# Hostile review (C1, C2, M6): each failed before its fix

def _many_entries_zip(n: int) -> bytes:
    """n empty stored members; the EOCD's 'entries on this disk'/'total entries' fields spell PK\\x05\\x06, so
    the last 'PK\\x05\\x06' in the tail starts 8 bytes into the real end record."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for i in range(n):
            z.writestr(f"{i:07d}", b"")
    data = bytearray(out.getvalue())
    eocd = len(data) - 22
    assert data[eocd:eocd + 4] == b"PK\x05\x06"
    data[eocd + 8:eocd + 12] = b"PK\x05\x06"  # entries this disk = 0x4b50, total entries = 0x0605
    return bytes(data)


def test_eocd_field_spelling_the_signature_bypasses_the_central_directory_bound(tmp_path: Path) -> None:
    n = 20_000  # ~1.1 MB of central directory for a link that may take 10 files (cap 64 KiB)
    path = tmp_path / "a.zip"
    path.write_bytes(_many_entries_zip(n))
    # zipfile (fast path: EOCD at end-22, comment length 0) still reads the whole directory: n ZipInfo objects
    assert len(zipfile.ZipFile(path).infolist()) == n
    # ...but the pre-check, meant to stop exactly this, saw no end record and let it through
    assert central_directory_refusal(path, files_left=10) is not None


def _zip64_locator_lie(n: int) -> bytes:
    """A ZIP64 end record whose locator points at a decoy record (inside a stored member's data: 10 bytes of
    directory, 1 entry), while zipfile reads the record just before the locator (the real, large directory)."""
    decoy = struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, 1, 1, 10, 0)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        z.writestr("decoy", decoy)
        for i in range(n):
            z.writestr(f"{i:07d}", b"")
    data = out.getvalue()
    decoy_at = 30 + len("decoy")  # the first member's data
    assert data[decoy_at:decoy_at + 4] == b"PK\x06\x06"
    eocd = len(data) - 22
    (_, _, _, _, entries, cd_size, cd_offset, _) = struct.unpack("<IHHHHIIH", data[eocd:])
    body = data[:eocd]
    real = struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, entries, entries, cd_size, cd_offset)
    locator = struct.pack("<IIQI", 0x07064B50, 0, decoy_at, 1)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return body + real + locator + end


def test_zip64_locator_pointing_at_a_decoy_bypasses_the_central_directory_bound(tmp_path: Path) -> None:
    n = 20_000
    path = tmp_path / "b.zip"
    path.write_bytes(_zip64_locator_lie(n))
    assert len(zipfile.ZipFile(path).infolist()) == n + 1  # zipfile ignores the locator's offset (3.11)
    assert central_directory_refusal(path, files_left=10) is not None


def _deflated_dicom(payload_mb: int) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.7")
    meta.MediaStorageSOPInstanceUID = UID("1.2.3.4.5.6")
    meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.1.99")
    meta.FileMetaInformationGroupLength = 0
    ds = Dataset()
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = "1.2.3.4.5.7"
    ds.SeriesInstanceUID = "1.2.3.4.5.8"
    ds.PatientName = "BOMB^DEFLATE"
    body = io.BytesIO()
    ds.is_little_endian, ds.is_implicit_VR = True, False
    ds.save_as(body, enforce_file_format=False)  # explicit VR LE dataset, no meta
    plain = body.getvalue()
    plain += struct.pack("<HH2sHI", 0x0009, 0x1010, b"OB", 0, payload_mb << 20)  # private OB of zeros
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = comp.compress(plain)
    zeros = bytes(1 << 20)
    for _ in range(payload_mb):
        deflated += comp.compress(zeros)
    deflated += comp.flush()
    head = io.BytesIO()
    fm = Dataset()
    fm.file_meta = meta
    fm.preamble = bytes(128)
    from pydicom.filewriter import write_file_meta_info
    head.write(bytes(128) + b"DICM")
    write_file_meta_info(head, meta, enforce_standard=True)
    return head.getvalue() + deflated


def test_a_deflated_dicom_bomb_is_refused_before_inflating_it(tmp_path: Path) -> None:
    path = tmp_path / "bomb.dcm"
    path.write_bytes(_deflated_dicom(1000))
    size = path.stat().st_size
    assert size < 2 << 20  # ~1 MB sent
    probe = textwrap.dedent(f"""
        from pathlib import Path
        from meshnode.patient.upload_check import UploadLimits, check_file
        [v] = check_file(Path({str(path)!r}), "bomb.dcm", UploadLimits(2048 << 20, 8192 << 20, 100), Path({str(tmp_path)!r}))
        # this process's own peak (VmHWM is per address space, reset at exec; ru_maxrss would carry over the
        # peak of the pytest process that forked it, ~1 GB late in the whole suite)
        hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
        print(v.outcome.value, hwm // 1024, v.reason)
    """)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=500, check=True)
    outcome, rss_mb, *_ = out.stdout.split()
    # the ZIP path refuses more than 200x; one DICOM file may inflate ~1000x, into RAM, several copies
    assert int(rss_mb) < 512, f"{size} bytes sent made the check hold {rss_mb} MB ({outcome})"


def test_a_zip64_locator_past_2_63_is_refused_not_raised(tmp_path: Path) -> None:
    locator = struct.pack("<IIQI", 0x07064B50, 0, 1 << 63, 1)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    path = tmp_path / "z.zip"
    path.write_bytes(b"PK\x03\x04" + bytes(60) + locator + end)
    [v] = check_file(path, "z.zip", UploadLimits(1 << 20, 1 << 20, 10), tmp_path)  # raises OverflowError/OSError
    assert v.outcome is Outcome.REFUSED


# Hostile review M4: active content inside the data set (each failed before its fix)

def _instance(**extra: object) -> bytes:
    src = dcmread(io.BytesIO(ct_files_bytes()))
    for k, v in extra.items():
        setattr(src, k, v)
    out = io.BytesIO()
    src.save_as(out, enforce_file_format=True)
    return out.getvalue()


_CT: list[bytes] = []


def ct_files_bytes() -> bytes:
    if not _CT:
        import tempfile
        with tempfile.TemporaryDirectory() as d:
            _CT.append(ct_files(Path(d), 1)[0].read_bytes())
    return _CT[0]


PE = b"MZ" + bytes(58) + struct.pack("<I", 64) + b"PE\x00\x00" + bytes(200)


def test_an_encapsulated_pdf_with_javascript_is_refused(tmp_path: Path) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.104.1")
    meta.MediaStorageSOPInstanceUID = UID("1.2.3.9.1")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = "1.2.3.9.2", "1.2.3.9.3", "DOC"
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = b"%PDF-1.7\n1 0 obj<</Type/Catalog/OpenAction<</S/JavaScript/JS(app.alert(1))>>>>endobj\n%%EOF\n"
    path = tmp_path / "doc.dcm"
    ds.save_as(path, enforce_file_format=True)
    [v] = check_file(path, "doc.dcm", LIMITS, tmp_path)
    assert v.outcome is not Outcome.ACCEPTED, "a PDF with an OpenAction JavaScript is held for the PACS team"


def test_a_windows_executable_in_a_private_tag_is_refused(tmp_path: Path) -> None:
    ds = dcmread(io.BytesIO(ct_files_bytes()))
    block = ds.private_block(0x0009, "EVIL", create=True)
    block.add_new(0x10, "OB", PE)
    path = tmp_path / "pe.dcm"
    ds.save_as(path, enforce_file_format=True)
    [v] = check_file(path, "pe.dcm", LIMITS, tmp_path)
    assert v.outcome is not Outcome.ACCEPTED, "a PE image in a private OB element passes the checks"


def test_a_dicom_zip_polyglot_is_refused(tmp_path: Path) -> None:
    ds = dcmread(io.BytesIO(ct_files_bytes()))
    payload = io.BytesIO()
    with zipfile.ZipFile(payload, "w") as z:
        z.writestr("evil.exe", PE)
    block = ds.private_block(0x7FE1, "EVIL", create=True)  # after Pixel Data (7FE0,0010)
    block.add_new(0x10, "OB", payload.getvalue() + (b"\x00" if len(payload.getvalue()) % 2 else b""))
    path = tmp_path / "poly.dcm"
    ds.save_as(path, enforce_file_format=True)
    [v] = check_file(path, "poly.dcm", LIMITS, tmp_path)
    held_is_zip = v.outcome is Outcome.ACCEPTED and zipfile.is_zipfile(path)
    assert not held_is_zip, "the held file opens as a ZIP with evil.exe in it"


def test_a_pdf_without_actions_and_private_data_without_magic_pass(tmp_path: Path) -> None:
    ds = dcmread(io.BytesIO(ct_files_bytes()))
    block = ds.private_block(0x0009, "VENDOR", create=True)
    block.add_new(0x10, "OB", b"\x01\x02vendor data" * 10)
    path = tmp_path / "ok.dcm"
    ds.save_as(path, enforce_file_format=True)
    [v] = check_file(path, "ok.dcm", LIMITS, tmp_path)
    assert v.outcome is Outcome.ACCEPTED, v.reason


# Hostile review minors: duplicate names, TIFF preamble (each failed before its fix)

def test_case_and_unicode_variants_of_one_name_are_duplicates(tmp_path: Path) -> None:
    data = ct_files_bytes()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name in ("DICOM/IM1", "dicom/im1", "DICOM/Caf\u00e9", "DICOM/Cafe\u0301"):
            z.writestr(name, data)
    path = tmp_path / "d.zip"
    path.write_bytes(out.getvalue())
    verdicts = list(check_file(path, "d.zip", LIMITS, tmp_path))
    accepted = [v.name for v in verdicts if v.outcome is Outcome.ACCEPTED]
    # on the PACS desktop (case-insensitive NTFS/APFS, NFC/NFD) these are two names, each shown as one
    assert len(accepted) <= 2, accepted


def test_a_tiff_signature_with_markup_after_it_is_refused(tmp_path: Path) -> None:
    data = b"II*\x00<html><script>alert(document.domain)</script></html>".ljust(128, b" ") + ct_files_bytes()[128:]
    path = tmp_path / "t.dcm"
    path.write_bytes(data)
    [v] = check_file(path, "t.dcm", LIMITS, tmp_path)
    assert v.outcome is not Outcome.ACCEPTED, "an HTML/script payload after 'II*\\0' (no TIFF IFD) is accepted"


def test_a_tiff_header_must_point_inside_the_file() -> None:
    assert preamble_refusal(b"II*\x00" + struct.pack("<I", 8) + bytes(120), size=1000) is None
    assert "outside the file" in (preamble_refusal(b"II*\x00" + struct.pack("<I", 10**6) + bytes(120), 1000) or "")
    assert "outside the file" in (preamble_refusal(b"MM\x00*" + struct.pack(">I", 5000) + bytes(120), 1000) or "")


def test_an_upload_state_error_is_the_clients_not_ours() -> None:
    from meshnode.patient.upload_errors import UploadStateError
    from protocol.errors import LocalProtocolError, RemoteProtocolError

    assert issubclass(UploadStateError, RemoteProtocolError) and not issubclass(UploadStateError, LocalProtocolError)
