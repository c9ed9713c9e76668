"""The patient's media set: extracted files byte-exact to the stored instances, a DICOMDIR pydicom's FileSet
and dcmtk accept, any byte range equal to the slice of the whole, and corrupt storage never served."""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import tracemalloc
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.fileset import FileSet

from meshnode.dicom import synthetic
from meshnode.storage.node_storage import NodeStorage
from meshnode.storage.records import InstanceRecord
from meshnode.study import media_set as media
from meshnode.study.ingest import Ingester
from meshnode.study.media_set import (
    MediaSet,
    MediaSetError,
    plan_media_set,
    readme_text,
)
from protocol.errors import NotFoundError

README = readme_text("Example NHS Trust", 2, 7)


@pytest.fixture(autouse=True)
def fresh_crc_cache() -> Iterator[None]:
    media._crc_cache.clear()
    yield
    media._crc_cache.clear()


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[NodeStorage]:
    home = tmp_path / "node"
    home.mkdir()
    s = NodeStorage.open(home)
    src = tmp_path / "src"
    synthetic.generate_ct_study(src / "ct", slices=4, rows=64, columns=64, seed=1)
    synthetic.generate_multiframe(src / "mf", frames=3, rows=64, columns=64, seed=3)
    synthetic.generate_ct_study(src / "other", slices=2, rows=32, columns=32, seed=5, patient_id="OTHER01",
                                patient_name="OTHER^PERSON")
    report = Ingester(s, chunk_size=4096).ingest([src])
    assert report.added == 7
    yield s
    s.close()


def studies(storage: NodeStorage) -> list[str]:
    return [st.attributes.study_uid for st in storage.metadata.studies()]


def whole(ms: MediaSet) -> bytes:
    data = b"".join(ms.read(0, ms.size))
    assert len(data) == ms.size
    return data


def records(storage: NodeStorage) -> dict[str, InstanceRecord]:
    return {r.sop_instance_uid: r for uid in studies(storage) for r in storage.metadata.instances(uid)}


def test_extracted_set_is_byte_exact_and_a_valid_file_set(storage: NodeStorage, tmp_path: Path) -> None:
    ms = plan_media_set(storage, studies(storage), readme=README)
    data = whole(ms)
    out = tmp_path / "out"
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.testzip() is None
        assert zf.namelist()[:2] == ["README.TXT", "DICOMDIR"]
        assert zf.read("README.TXT").decode() == README.replace("\n", "\r\n")
        zf.extractall(out)
    stored = records(storage)
    names = [n for n in ms.names if n.startswith("DICOM/")]
    assert len(names) == 7 and {n.split("/")[1] for n in names} == {"PT000000", "PT000001"}
    for name in names:
        parts = name.split("/")
        assert all(len(p) <= 8 and p.isalnum() and p.upper() == p for p in parts)
    fs = FileSet(pydicom.dcmread(out / "DICOMDIR"))
    found = {inst.SOPInstanceUID: inst for inst in fs}
    assert set(found) == set(stored)
    for uid, inst in found.items():
        path = Path(inst.path)
        assert hashlib.sha256(path.read_bytes()).digest() == stored[uid].digest  # byte-exact to the store
        assert inst.ReferencedTransferSyntaxUIDInFile == stored[uid].transfer_syntax
        assert path.relative_to(out).as_posix() in names
    assert len(fs.find(PatientID="OTHER01")) == 2


@pytest.mark.skipif(shutil.which("dcmmkdir") is None or shutil.which("unzip") is None,
                    reason="dcmtk and unzip (Makefile SYSTEM_DEPS)")
def test_dcmtk_and_unzip_accept_it(storage: NodeStorage, tmp_path: Path) -> None:
    path = tmp_path / "set.zip"
    path.write_bytes(whole(plan_media_set(storage, studies(storage), readme=README)))
    test = subprocess.run(["unzip", "-t", str(path)], capture_output=True, text=True, timeout=60)
    assert test.returncode == 0 and "No errors detected" in test.stdout
    out = tmp_path / "out"
    subprocess.run(["unzip", "-q", str(path), "-d", str(out)], check=True, timeout=60)
    dump = subprocess.run(["dcmdump", "-q", "DICOMDIR"], cwd=out, capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0 and dump.stderr == ""
    assert dump.stdout.count("Directory Record") == 2 + 3 + 3 + 7  # patients, studies, series, instances
    # dcmmkdir reads our DICOMDIR and updates it with every file: records it recognises are not added again
    update = subprocess.run(["dcmmkdir", "+U", "-Pgp", "+r", "DICOM"], cwd=out, capture_output=True, text=True,
                            timeout=60)
    assert update.returncode == 0, update.stdout + update.stderr
    assert "E:" not in update.stdout + update.stderr
    again = subprocess.run(["dcmdump", "-q", "DICOMDIR"], cwd=out, capture_output=True, text=True, timeout=60)
    assert again.stdout.count("Directory Record") == 15


def test_the_same_studies_give_the_same_bytes(storage: NodeStorage) -> None:
    uids = studies(storage)
    a = plan_media_set(storage, uids, readme=README)
    b = plan_media_set(storage, list(reversed(uids)) + uids[:1], readme=README)
    assert (a.size, a.etag, whole(a)) == (b.size, b.etag, whole(b))
    assert a.etag.startswith('"') and a.etag.endswith('"')
    assert plan_media_set(storage, uids, readme=README + "x").etag != a.etag
    assert plan_media_set(storage, uids[:1], readme=README).etag != a.etag
    assert a.filename.endswith(".zip")


def test_unknown_study_and_empty_request_refused(storage: NodeStorage) -> None:
    with pytest.raises(NotFoundError):
        plan_media_set(storage, studies(storage) + ["1.2.3.4"], readme=README)
    with pytest.raises(MediaSetError):
        plan_media_set(storage, [], readme=README)
    ms = plan_media_set(storage, studies(storage), readme=README)
    with pytest.raises(MediaSetError):
        next(ms.read(0, ms.size + 1))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_range_is_the_slice_of_the_whole(storage: NodeStorage, data: st.DataObject) -> None:
    ms = plan_media_set(storage, studies(storage), readme=README)
    full = whole(ms)
    start = data.draw(st.integers(0, ms.size))
    stop = data.draw(st.integers(start, ms.size))
    assert b"".join(ms.read(start, stop)) == full[start:stop]


def test_every_boundary(storage: NodeStorage) -> None:
    ms = plan_media_set(storage, studies(storage), readme=README)
    full = whole(ms)
    edges = {0, 1, ms.size - 1, ms.size}
    for e in ms.layout.entries:
        edges |= {e.header_offset, e.data_offset, e.data_offset + e.size}
    points = sorted({p + d for p in edges for d in (-1, 0, 1) if 0 <= p + d <= ms.size})
    for a in points:
        assert b"".join(ms.read(a, a)) == b""
        for b in points[points.index(a):][:6]:
            assert b"".join(ms.read(a, b)) == full[a:b], (a, b)


def test_big_study_read_in_bounded_memory(tmp_path: Path) -> None:
    home = tmp_path / "node"
    home.mkdir()
    s = NodeStorage.open(home)
    try:
        synthetic.generate_ct_study(tmp_path / "src", slices=24, rows=256, columns=256, seed=9)
        Ingester(s, chunk_size=64 * 1024).ingest([tmp_path / "src"])
        ms = plan_media_set(s, studies(s), readme=README)
        assert ms.size > 3_000_000
        tracemalloc.start()
        total, biggest = 0, 0
        for piece in ms.read(0, ms.size):
            total += len(piece)
            biggest = max(biggest, len(piece))
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert total == ms.size and biggest <= 64 * 1024
        assert peak < 1_000_000  # a few blocks, never the study (3+ MB)
    finally:
        s.close()


def test_readme_says_what_a_patient_needs_and_nothing_about_them() -> None:
    text = readme_text("Example NHS Trust", 1, 3)
    for words in ("Example NHS Trust", "DICOMDIR", "DICOM viewer", "personal health information", "1 imaging study",
                  "3 image files"):
        assert words in text
    assert text.isascii()


def _sr_with_latin1_name(path: Path) -> Path:
    """A Basic Text SR (no pixels: a non-IMAGE leaf, built by pydicom's SR DOCUMENT recorder) of a patient
    whose name needs Latin-1."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.BasicTextSRStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["sr-instance"])
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["sr-study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["sr-series"])
    ds.PatientName, ds.PatientID = "Müller^Jörg", "LAT1"
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240102", "101010", "77", "ACC7"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "SR", 1, 1
    ds.ContentDate, ds.ContentTime = "20240102", "101500"
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    name = Dataset()
    name.CodeValue, name.CodingSchemeDesignator, name.CodeMeaning = "18748-4", "LN", "Diagnostic Imaging Report"
    ds.ConceptNameCodeSequence = [name]
    ds.ValueType = "CONTAINER"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_non_image_leaf_and_a_latin1_name(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    home = tmp_path / "node"
    home.mkdir()
    s = NodeStorage.open(home)
    try:
        (tmp_path / "src").mkdir()
        _sr_with_latin1_name(tmp_path / "src" / "sr.dcm")
        assert Ingester(s).ingest([tmp_path / "src"]).added == 1
        data = whole(plan_media_set(s, studies(s), readme=README))
        out = tmp_path / "out"
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            zf.extractall(out)
        dicomdir = pydicom.dcmread(out / "DICOMDIR")
        types = [r.DirectoryRecordType for r in dicomdir.DirectoryRecordSequence]
        assert types == ["PATIENT", "STUDY", "SERIES", "SR DOCUMENT"]
        assert "lacks keys" not in caplog.text and "not readable" not in caplog.text  # pydicom's recorders
        assert str(dicomdir.DirectoryRecordSequence[0].PatientName) == "Müller^Jörg"
        [inst] = list(FileSet(dicomdir))
        assert inst.SOPClassUID == pydicom.uid.BasicTextSRStorage
        assert inst.load().PatientName == "Müller^Jörg"
        if shutil.which("dcmdump"):
            dump = subprocess.run(["dcmdump", "-q", str(out / "DICOMDIR")], capture_output=True, timeout=60,
                                  check=False)
            assert dump.returncode == 0 and dump.stderr == b""
    finally:
        s.close()


def _count_gets(storage: NodeStorage) -> list[object]:
    """Every block read from now on (the real block store's get, counted)."""
    calls: list[object] = []
    orig = storage.blocks.get

    def get(cid, verify=True):  # type: ignore[no-untyped-def]
        calls.append(cid)
        return orig(cid, verify=verify)

    storage.blocks.get = get  # type: ignore[method-assign]
    return calls


def test_the_download_streams_its_first_bytes_before_reading_the_set(storage: NodeStorage) -> None:
    """Review C1: read(0, size) used to read and hash every instance (for the CRC-32 in each local header)
    before its first byte. Now its first piece needs no block, and the bytes up to the end of the first
    instance's data need at most that instance's blocks (failed before: every block of the set was read)."""
    ms = plan_media_set(storage, studies(storage), readme=README)
    calls = _count_gets(storage)
    first_instance = next(i for i, e in enumerate(ms._entries) if e.record is not None)
    record = ms._entries[first_instance].record
    assert record is not None
    it = ms.read(0, ms.size)
    head = next(it)
    assert head[:4] == b"PK\x03\x04" and calls == []
    served = len(head)
    end = ms.layout.entries[first_instance].data_offset + record.size
    while served < end:
        served += len(next(it))
    assert len(calls) <= len(record.blocks)
    rest = b"".join(it)
    assert served + len(rest) == ms.size


def test_a_tail_range_after_a_restart_with_a_warm_table_reads_no_instance(tmp_path: Path) -> None:
    """Review C1 (c): CRC-32s learned while a download streamed are kept in the store: after a restart
    (process cache empty, storage reopened) the central directory comes from the table; a set whose CRCs
    warm_crcs filled likewise. Failed before: the tail range read every instance."""
    home = tmp_path / "node"
    home.mkdir()
    s = NodeStorage.open(home)
    synthetic.generate_ct_study(tmp_path / "src", slices=3, rows=32, columns=32, seed=2)
    synthetic.generate_ct_study(tmp_path / "src2", slices=2, rows=32, columns=32, seed=4, patient_id="P2")
    Ingester(s, chunk_size=4096).ingest([tmp_path / "src"])
    first = studies(s)
    full = whole(plan_media_set(s, first, readme=README))  # streams: learns every CRC-32
    Ingester(s, chunk_size=4096).ingest([tmp_path / "src2"])
    second = [uid for uid in studies(s) if uid not in first]
    assert media.warm_crcs(s, s.metadata.instances(second[0])) == 2
    assert media.warm_crcs(s, s.metadata.instances(second[0])) == 0  # known: no pass
    s.close()
    media._crc_cache.clear()

    s = NodeStorage.open(home)
    try:
        for uids, expected in ((first, full), (studies(s), None)):
            media._crc_cache.clear()
            ms = plan_media_set(s, uids, readme=README)
            calls = _count_gets(s)
            tail = b"".join(ms.read(ms.layout.central_offset, ms.size))
            assert calls == []
            if expected is not None:
                assert tail == expected[ms.layout.central_offset:]
            s.blocks.get = type(s.blocks).get.__get__(s.blocks)  # type: ignore[method-assign]
            with zipfile.ZipFile(io.BytesIO(whole(ms))) as zf:
                assert zf.testzip() is None
    finally:
        s.close()


def test_a_cached_crc_is_used_only_for_the_same_size(storage: NodeStorage) -> None:
    """Review m1: the cache was keyed by digest alone, so a record claiming another instance's digest with
    another size got that CRC-32. Now (size, crc) is kept and a size mismatch is a miss, in the process
    cache and in the store."""
    import dataclasses
    recs = sorted(records(storage).values(), key=lambda r: r.sop_instance_uid)
    crc = media.instance_crc(storage, recs[0])
    assert media._cached_crc(recs[0]) == crc
    other_size = dataclasses.replace(recs[0], size=recs[0].size + 1)
    assert media._cached_crc(other_size) is None
    media._crc_cache.clear()
    assert media._stored_crcs(storage, [other_size]) == 1  # the stored row is for the other size
    with pytest.raises(media.DigestMismatchError):
        media.instance_crc(storage, other_size)


def test_crc_cache_memory_is_bounded() -> None:
    """CRC_CACHE_ENTRY_BYTES is what an entry really costs (measured), and the cache never holds more than
    CRC_CACHE_SIZE entries."""
    n = 20_000
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    media._remember_crcs([(hashlib.sha256(i.to_bytes(4, "big")).digest(), 1_000_000 + i, 0x80000000 + i)
                          for i in range(n)])
    after, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert (after - before) / n <= media.CRC_CACHE_ENTRY_BYTES
    media._remember_crcs([(hashlib.sha256(b"x" + i.to_bytes(4, "big")).digest(), 1, 1)
                          for i in range(media.CRC_CACHE_SIZE)])
    assert len(media._crc_cache) == media.CRC_CACHE_SIZE


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_instance_crc_store(tmp_path: Path, kind: str) -> None:
    from meshnode.storage.memory_metadata import MemoryMetadataStore
    from meshnode.storage.metadata import MetadataStore
    store: MetadataStore
    if kind == "memory":
        store = MemoryMetadataStore()
    else:
        home = tmp_path / "node"
        home.mkdir()
        store = NodeStorage.open(home).metadata
    a, b = bytes(32), b"\x01" * 32
    assert store.instance_crcs([a, b]) == {}
    store.record_instance_crcs([(a, 10, 0xFFFFFFFF)])
    store.record_instance_crcs([(a, 11, 1), (b, 0, 0)])  # a known digest stays as it was
    assert store.instance_crcs([a, b, b"\x02" * 32]) == {a: (10, 0xFFFFFFFF), b: (0, 0)}
    assert len(store.instance_crcs([bytes([i % 256]) * 32 for i in range(1200)] + [a])) == 2
    # a download's worker thread records while the database thread's transaction is open and then rolled
    # back: the row is its own (SQLite: its own connection), neither joined to nor lost with that transaction
    import threading
    c = b"\x03" * 32
    worker = threading.Thread(target=store.record_instance_crcs, args=([(c, 3, 3)],))
    with pytest.raises(RuntimeError), store.atomic():
        worker.start()
        raise RuntimeError("the database thread's transaction fails")
    worker.join(timeout=30)
    assert store.instance_crcs([c]) == {c: (3, 3)}
    store.close()


def _extracted_set(tmp_path: Path, src: Path, mutate: Callable[[pydicom.Dataset], None] | None = None) -> Path:
    """Ingest `src` (after `mutate(ds)` on each file), extract its media set; the extracted folder."""
    if mutate is not None:
        for f in sorted(p for p in src.rglob("*") if p.is_file()):
            ds = pydicom.dcmread(f)
            mutate(ds)
            ds.save_as(f, enforce_file_format=True)
    home = tmp_path / "node"
    home.mkdir()
    s = NodeStorage.open(home)
    try:
        assert Ingester(s).ingest([src]).added >= 1
        data = whole(plan_media_set(s, studies(s), readme=README))
    finally:
        s.close()
    out = tmp_path / "out"
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        zf.extractall(out)
    return out


def _type1_empty(out: Path) -> list[str]:
    """Type 1 keys (PS3.3 F.5) a record of the extracted DICOMDIR has empty or lacks."""
    ds = pydicom.dcmread(out / "DICOMDIR")
    required = {"PATIENT": ["PatientID"], "STUDY": ["StudyDate", "StudyTime", "StudyID", "StudyInstanceUID"],
                "SERIES": ["Modality", "SeriesInstanceUID", "SeriesNumber"], "IMAGE": ["InstanceNumber"],
                "ENCAP DOC": ["InstanceNumber", "MIMETypeOfEncapsulatedDocument"]}
    return [f"{r.DirectoryRecordType}.{kw}" for r in ds.DirectoryRecordSequence
            for kw in required.get(r.DirectoryRecordType, [])
            if kw not in r or r[kw].value in (None, "", b"")]


def _dcmmkdir_accepts(out: Path, *, same_patient_id: bool = True) -> None:
    """dcmmkdir reads our DICOMDIR and updates it with every file (+I: the files themselves have the Type 2
    keys empty, which dcmmkdir refuses unless it may invent them as we did): no error, nothing added (when
    the files have a Patient ID: dcmmkdir matches PATIENT records by it, so an invented one is not matched)."""
    if shutil.which("dcmmkdir") is None:
        return
    before = pydicom.dcmread(out / "DICOMDIR").DirectoryRecordSequence
    update = subprocess.run(["dcmmkdir", "+U", "+I", "-Pgp", "+r", "DICOM"], cwd=out, capture_output=True,
                            text=True, timeout=60)
    assert update.returncode == 0 and "E:" not in update.stdout + update.stderr, update.stdout + update.stderr
    if same_patient_id:
        assert len(pydicom.dcmread(out / "DICOMDIR").DirectoryRecordSequence) == len(before)


def test_type1_keys_filled_when_the_instance_has_type2_values_empty(tmp_path: Path) -> None:
    """Review M5: Study ID and Instance Number are Type 2 in the instance (often empty) but Type 1 in the STUDY
    and IMAGE records; they were written empty (dcmmkdir refused the set). Now, as dcmmkdir's +I invents them:
    Study ID from the Accession Number (else MESHST + a number), Instance Number a sequence number."""
    src = tmp_path / "src"
    synthetic.generate_ct_study(src, slices=2, rows=16, columns=16, seed=11)

    def mutate(ds: pydicom.Dataset) -> None:
        ds.StudyID = ""
        ds.InstanceNumber = None
        ds.SeriesNumber = None
        ds.AccessionNumber = ""
    out = _extracted_set(tmp_path, src, mutate)
    assert _type1_empty(out) == []
    records = pydicom.dcmread(out / "DICOMDIR").DirectoryRecordSequence
    assert [r.StudyID for r in records if r.DirectoryRecordType == "STUDY"] == ["MESHST000000"]
    assert [r.InstanceNumber for r in records if r.DirectoryRecordType == "IMAGE"] == [1, 2]
    assert len(list(FileSet(pydicom.dcmread(out / "DICOMDIR")))) == 2
    _dcmmkdir_accepts(out)


@pytest.mark.skipif(shutil.which("pdf2dcm") is None, reason="dcmtk (Makefile SYSTEM_DEPS)")
def test_encapsulated_pdf_from_dcmtk_pdf2dcm(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Review M5: dcmtk's own pdf2dcm leaves Patient ID, Study ID and Instance Number empty (Type 2 in the
    IOD): the PATIENT record had an empty Patient ID, and the ENCAP DOC leaf, its recorder raising, lost its
    MIME type and title."""
    src = tmp_path / "src"
    src.mkdir()
    (tmp_path / "a.pdf").write_bytes(b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n")
    subprocess.run(["pdf2dcm", str(tmp_path / "a.pdf"), str(src / "a.dcm")], check=True, timeout=60)
    out = _extracted_set(tmp_path, src)
    ds = pydicom.dcmread(out / "DICOMDIR")
    assert len(list(FileSet(ds))) == 1
    assert _type1_empty(out) == []
    [doc] = [r for r in ds.DirectoryRecordSequence if r.DirectoryRecordType == "ENCAP DOC"]
    assert doc.MIMETypeOfEncapsulatedDocument == "application/pdf"
    [patient] = [r for r in ds.DirectoryRecordSequence if r.DirectoryRecordType == "PATIENT"]
    assert patient.PatientID == "MESHPT000000"
    assert "lacks keys" not in caplog.text
    _dcmmkdir_accepts(out, same_patient_id=False)


def test_a_leaf_whose_recorder_refuses_it_keeps_its_keys(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Review M5: a non-IMAGE leaf whose header lacks a key its recorder requires (here an SR without its
    Completion Flag) kept only its Instance Number; now it keeps every key of its record type it has."""
    src = tmp_path / "src"
    src.mkdir()
    _sr_with_latin1_name(src / "sr.dcm")
    ds = pydicom.dcmread(src / "sr.dcm")
    del ds.CompletionFlag
    ds.save_as(src / "sr.dcm", enforce_file_format=True)
    out = _extracted_set(tmp_path, src)
    assert "lacks keys" in caplog.text
    [leaf] = [r for r in pydicom.dcmread(out / "DICOMDIR").DirectoryRecordSequence
              if r.DirectoryRecordType == "SR DOCUMENT"]
    assert (leaf.VerificationFlag, leaf.ContentDate, leaf.ContentTime, leaf.InstanceNumber) == (
        "UNVERIFIED", "20240102", "101500", 1)
    assert leaf.ConceptNameCodeSequence[0].CodeValue == "18748-4"


def test_one_patient_id_two_spellings_gives_one_patient_record(tmp_path: Path) -> None:
    """Review m5: the same Patient ID with its name spelled differently in two studies gave two PATIENT
    records with one Patient ID (dcmmkdir reports such a set inconsistent). Patients are one per Patient ID
    now (by name only when the ID is empty)."""
    src = tmp_path / "src"
    synthetic.generate_ct_study(src / "a", slices=1, rows=16, columns=16, seed=1, patient_id="P1",
                                patient_name="DOE^JOHN")
    synthetic.generate_ct_study(src / "b", slices=1, rows=16, columns=16, seed=2, patient_id="P1",
                                patient_name="Doe^John^^^")
    out = _extracted_set(tmp_path, src)
    records = pydicom.dcmread(out / "DICOMDIR").DirectoryRecordSequence
    assert [r.PatientID for r in records if r.DirectoryRecordType == "PATIENT"] == ["P1"]
    assert len([r for r in records if r.DirectoryRecordType == "STUDY"]) == 2
    assert sorted(p.name for p in (out / "DICOM").iterdir()) == ["PT000000"]
    _dcmmkdir_accepts(out)


def test_record_types_come_from_pydicoms_table_or_import_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review m6: the SOP class -> record type table is pydicom's private one; its absence used to fall back
    silently to {} (every SR, PDF, RT object an IMAGE record). Now the import fails loudly."""
    import dataclasses

    import pydicom.fileset

    from meshnode.study import dicomdir
    from tests.meshnode.storage.helpers import instance
    by_class = {"1.2.840.10008.5.1.4.1.1.88.11": "SR DOCUMENT", "1.2.840.10008.5.1.4.1.1.104.1": "ENCAP DOC",
                "1.2.840.10008.5.1.4.1.1.481.3": "RT STRUCTURE SET", "1.2.840.10008.5.1.4.1.1.88.59": "KEY OBJECT DOC",
                "1.2.840.10008.5.1.4.1.1.2": "IMAGE"}
    template = instance(1)
    for uid, kind in by_class.items():
        assert dicomdir.record_type(dataclasses.replace(template, sop_class_uid=uid)) == kind
    monkeypatch.delattr(pydicom.fileset, "_FOUR_LEVEL_SOP_CLASSES")
    with pytest.raises(ImportError):
        dicomdir._four_level_table()
