"""The DICOM media set a patient downloads: one ZIP with a README, a DICOMDIR and the PS3.10 files, served by
byte range (issue 14).

    README.TXT                                 plain-language text for the patient (the caller's `readme`)
    DICOMDIR                                   the Basic Directory (meshnode.study.dicomdir)
    DICOM/PT000000/ST000000/SE000000/IM000000  each instance, byte for byte as stored (PS3.10/PS3.11 File IDs:
                                               components of at most 8 characters, A-Z 0-9 _, no extension)

Deterministic: studies in Study Instance UID order, patients as first met in that order, series by Series
Number then UID, instances by Instance Number then SOP Instance UID; fixed timestamps. The same studies
holding the same instances give the same bytes, so a resumed download (If-Range with the ETag) continues the
same archive; the ETag is a hash of every entry's name, size and sha256 digest, the README and the DICOMDIR.

Planning reads only metadata and one header per series (and per non-image instance), so it is quick for a
study of any size. Reading is by blocks, each verified against its CID; a corrupt block is moved to
quarantine by the block store (and alerted: by the running node's listener, or here as export does when
there is none) and StorageError is raised, so nothing after it is served.

Streamed (review C1): `read` is a generator and each entry's local header has ZIP flag bit 3, so a header
needs no CRC-32 and `read(0, size)` yields its first bytes after the README alone; an instance's CRC-32 goes
in the data descriptor after its data and in its central directory record. While an instance's data streams
whole its CRC-32 is computed and, once the whole-file sha256 matched, remembered: in a process-wide LRU
(CRC_CACHE_SIZE entries, about CRC_CACHE_ENTRY_BYTES each) and in the metadata store (table instance_crcs,
kept across restarts). A descriptor or central directory record whose CRC-32 is not known either way costs
one verified pass over that instance (sha256 checked too); a range reaching the central directory first asks
the store for every CRC-32 in one batch, so after a restart with a warm table it reads no instance.
`warm_crcs(storage, records)` fills the table ahead (the caller starts it when a share is created). A cached
CRC-32 is used only for a record of the same size. Memory: one block at a time, plus the DICOMDIR.

A record whose blocks do not reassemble to its digest (lying metadata): its data is checked as it streams,
and DigestMismatchError is raised at its end, before the data descriptor, so the archive a client holds is
truncated inside that entry and no reader accepts it.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import threading
import zlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pydicom
from pydicom.dataset import Dataset

from meshnode.storage.blockstore import BlockCorruptError
from meshnode.storage.node_storage import NodeStorage
from meshnode.storage.records import InstanceRecord, hash_uid
from meshnode.study.dicomdir import DirInstance, build_dicomdir, patient_key, record_type
from meshnode.study.export import DigestMismatchError
from meshnode.study.zip_layout import DataPiece, MediaSetError, ZipLayout
from protocol.errors import NotFoundError

log = logging.getLogger(__name__)

__all__ = ["CRC_CACHE_SIZE", "MediaSet", "MediaSetError", "instance_crc", "media_set_from_records",
           "plan_media_set", "readme_text", "warm_crcs"]

#: instances whose CRC-32 is remembered in this process (the store keeps them all, across restarts)
CRC_CACHE_SIZE = 50_000
#: measured bytes per cache entry (digest bytes object, (size, crc) tuple and ints, OrderedDict node: about
#: 270 on CPython 3.11, tests/meshnode/study/test_media_set.py::test_crc_cache_memory_is_bounded), so the
#: cache holds at most about 15 MB
CRC_CACHE_ENTRY_BYTES = 300
#: at most this much of an instance is read for its header (the DICOMDIR keys come before the pixel data)
MAX_HEADER_BYTES = 1 << 20
#: the File ID scheme allows 1,000,000 of each level under its parent (six digits after a two-letter prefix)
MAX_PER_LEVEL = 1_000_000
_UID_RE = re.compile(r"[0-9]+(\.[0-9]+)*")

_crc_lock = threading.Lock()
_crc_cache: OrderedDict[bytes, tuple[int, int]] = OrderedDict()


def _cached_crc(record: InstanceRecord) -> int | None:
    """The remembered CRC-32 of the record's digest, if it was computed over the record's size (review m1)."""
    with _crc_lock:
        known = _crc_cache.get(record.digest)
        if known is None or known[0] != record.size:
            return None
        _crc_cache.move_to_end(record.digest)
        return known[1]


def _remember_crcs(rows: Sequence[tuple[bytes, int, int]]) -> None:
    with _crc_lock:
        for digest, size, crc in rows:
            _crc_cache[digest] = (size, crc)
            _crc_cache.move_to_end(digest)
        while len(_crc_cache) > CRC_CACHE_SIZE:
            _crc_cache.popitem(last=False)


def _learned_crc(storage: NodeStorage, record: InstanceRecord, crc: int) -> None:
    """A CRC-32 computed over bytes whose sha256 and size matched the record: kept here and in the store."""
    _remember_crcs([(record.digest, record.size, crc)])
    storage.metadata.record_instance_crcs([(record.digest, record.size, crc)])


def _stored_crcs(storage: NodeStorage, records: Sequence[InstanceRecord]) -> int:
    """Load the store's CRC-32s of those of `records` not in the cache (sizes checked); returns how many of
    `records` have none anywhere."""
    missing = [r for r in records if _cached_crc(r) is None]
    if not missing:
        return 0
    known = storage.metadata.instance_crcs(r.digest for r in missing)
    rows = [(r.digest, r.size, known[r.digest][1]) for r in missing
            if r.digest in known and known[r.digest][0] == r.size]
    _remember_crcs(rows)
    return len(missing) - len(rows)


def _block(storage: NodeStorage, record: InstanceRecord, index: int) -> bytes:
    try:
        return storage.blocks.get(record.blocks[index], verify=True)
    except BlockCorruptError as exc:
        if exc.cid is not None and storage.blocks.on_quarantined is None:
            # no running node listening (the CLI, a test): forget it and alert here, as export does
            storage.block_quarantined(exc.cid, "patient download")
        log.warning("patient download of instance %s stopped: a block is corrupt",
                    hash_uid(record.sop_instance_uid))
        raise


def _mismatch(record: InstanceRecord) -> DigestMismatchError:
    return DigestMismatchError(f"instance {hash_uid(record.sop_instance_uid)} does not reassemble to the "
                               "ingested bytes")


def instance_crc(storage: NodeStorage, record: InstanceRecord) -> int:
    """The instance's CRC-32 (cached by its sha256 digest and size, in this process or the store; else one
    verified pass, sha256 checked, and remembered in both)."""
    crc = _cached_crc(record)
    if crc is not None:
        return crc
    if not _stored_crcs(storage, [record]):
        crc = _cached_crc(record)
        if crc is not None:
            return crc
    crc, digest, size = 0, hashlib.sha256(), 0
    for i in range(len(record.blocks)):
        data = _block(storage, record, i)
        crc = zlib.crc32(data, crc)
        digest.update(data)
        size += len(data)
    if size != record.size or digest.digest() != record.digest:
        raise _mismatch(record)
    _learned_crc(storage, record, crc)
    return crc


def warm_crcs(storage: NodeStorage, records: Sequence[InstanceRecord]) -> int:
    """Compute and store the CRC-32 of each of `records` not known yet (one verified pass each), so a later
    download's data descriptors and central directory need no pass. For the integrator: start it in a worker
    thread when a share is created (trio.to_thread.run_sync(warm_crcs, storage, records), abandon_on_cancel
    as you see fit: each instance's CRC-32 is stored as soon as it is known, so an interrupted warm-up keeps
    what it did). Raises StorageError as `read` does for a corrupt or missing block. Returns how many
    CRC-32s were computed."""
    computed = 0
    unique = list({r.digest: r for r in records}.values())
    for i in range(0, len(unique), 500):
        chunk = unique[i:i + 500]
        if not _stored_crcs(storage, chunk):
            continue
        for record in chunk:
            if _cached_crc(record) is None:
                instance_crc(storage, record)
                computed += 1
    return computed


def readme_text(org_name: str, studies: int, instances: int) -> str:
    """The default README.TXT: plain language, nothing about the patient."""
    study_word = "study" if studies == 1 else "studies"
    return f"""YOUR MEDICAL IMAGES
===================

This download was prepared for you by {org_name}.
It holds {studies} imaging {study_word} ({instances} image files) in the DICOM format,
the standard format hospitals use for X-rays, CT and MRI scans, ultrasound and other images.

WHAT IS IN IT
  README.TXT   this note
  DICOMDIR     the index of the images (a DICOM viewer reads it first)
  DICOM/       the image files themselves (they have no file extension: that is normal)

HOW TO LOOK AT THE IMAGES
  1. Unpack (extract) the whole ZIP file into a folder first. Keep the folder structure as it is.
  2. Open the images with a DICOM viewer. Free viewers exist for every computer (for example
     Weasis, Horos for Mac, MicroDicom for Windows, or a web viewer). In the viewer, choose
     "open DICOMDIR" or "open folder" and pick the folder you unpacked.
  3. An ordinary photo viewer cannot open these files.

If a doctor or hospital asks for your images, you can give them this ZIP file or the unpacked
folder (for example on a USB stick). Their systems know the DICOM format.

KEEP IT SAFE
  These files contain personal health information: your name, date of birth, hospital
  numbers and details of your examinations are stored inside the images.
  - Keep them on a device only you use, or one protected by a password.
  - Do not post them online or send them by ordinary email to people you do not trust.
  - Delete copies you no longer need (also from your Downloads folder and your recycle bin).
  - If you lose a device that holds them, treat it like losing your medical records.

The images are an exact copy of those held by {org_name}. The images are not a diagnosis:
if you have questions about them, ask the clinician who looks after you.
"""


@dataclass(frozen=True)
class _Entry:
    name: str
    record: InstanceRecord | None  # None: README or DICOMDIR (held in memory)
    data: bytes = b""


class MediaSet:
    """A planned archive: `.size`, `.etag` (strong), `.filename`, and `.read(start, stop)` by byte range.
    Blocking: call it from a worker thread (trio.to_thread.run_sync)."""

    def __init__(self, storage: NodeStorage, entries: list[_Entry], *, studies: int) -> None:
        self._storage = storage
        self._entries = entries
        self.layout = ZipLayout.plan([(e.name, e.record.size if e.record else len(e.data)) for e in entries])
        self.size = self.layout.size
        self.studies = studies
        self.instances = sum(1 for e in entries if e.record is not None)
        h = hashlib.sha256(b"dicom-mesh/media-set/v1\n")
        for e in entries:
            h.update(f"{e.name}\n{e.record.size if e.record else len(e.data)}\n".encode())
            h.update(e.record.digest if e.record else hashlib.sha256(e.data).digest())
        self.etag = '"' + h.hexdigest()[:40] + '"'
        self.filename = "medical-images.zip"

    @property
    def names(self) -> list[str]:
        return [e.name for e in self._entries]

    def _crc(self, index: int) -> int:
        entry = self._entries[index]
        if entry.record is None:
            return zlib.crc32(entry.data)
        return instance_crc(self._storage, entry.record)

    def read(self, start: int, stop: int) -> Iterator[bytes]:
        """Bytes [start, stop) of the archive, in pieces of at most one block. Raises MediaSetError for a
        range outside [0, size] and StorageError (BlockCorruptError, DigestMismatchError, BlockMissingError)
        when stored data is not what it should be: nothing after the bad block is yielded."""
        self.layout.check_range(start, stop)
        if stop > self.layout.central_offset:
            # the central directory holds every CRC-32: ask the store for the ones not cached, in batches
            records = [e.record for e in self._entries if e.record is not None]
            for i in range(0, len(records), 500):
                _stored_crcs(self._storage, records[i:i + 500])
        for piece in self.layout.pieces(start, stop, self._crc):
            if isinstance(piece, bytes):
                yield piece
            else:
                yield from self._data(piece)

    def _data(self, piece: DataPiece) -> Iterator[bytes]:
        entry = self._entries[piece.entry]
        if entry.record is None:
            yield entry.data[piece.offset:piece.offset + piece.length]
            return
        record = entry.record
        whole = piece.offset == 0 and piece.length == record.size
        digest = hashlib.sha256() if whole else None
        crc = 0
        pos = 0
        lo, hi = piece.offset, piece.offset + piece.length
        for i, size in enumerate(record.block_sizes):
            if pos >= hi:
                break
            if pos + size > lo:
                data = _block(self._storage, record, i)
                if len(data) != size:
                    raise _mismatch(record)
                if digest is not None:
                    digest.update(data)
                    crc = zlib.crc32(data, crc)
                yield data[max(lo - pos, 0):min(hi - pos, size)]
            pos += size
        if digest is not None:
            if digest.digest() != record.digest:
                raise _mismatch(record)
            if _cached_crc(record) is None:
                _learned_crc(self._storage, record, crc)


def _file_ids(records: list[InstanceRecord]) -> list[tuple[tuple[str, ...], InstanceRecord]]:
    """DICOM/PTnnnnnn/STnnnnnn/SEnnnnnn/IMnnnnnn for each instance, in the set's order."""
    by_study: dict[str, list[InstanceRecord]] = {}
    for r in records:
        by_study.setdefault(r.study_uid, []).append(r)
    patients: dict[tuple[str, str], int] = {}
    studies_of: dict[int, int] = {}
    out: list[tuple[tuple[str, ...], InstanceRecord]] = []
    for study_uid in sorted(by_study):
        group = by_study[study_uid]
        first = group[0]
        pt = patients.setdefault(patient_key(first), len(patients))
        st = studies_of.get(pt, 0)
        studies_of[pt] = st + 1
        series: dict[str, list[InstanceRecord]] = {}
        for r in group:
            series.setdefault(r.series_uid, []).append(r)

        def series_key(uid: str, series: dict[str, list[InstanceRecord]] = series) -> tuple[int, int, str]:
            number = series[uid][0].series.series_number
            return (0 if number is not None else 1, number or 0, uid)

        for se, series_uid in enumerate(sorted(series, key=series_key)):
            members = sorted(series[series_uid], key=lambda r: (
                0 if r.instance_number is not None else 1, r.instance_number or 0, r.sop_instance_uid,
                r.digest))
            if max(pt, st, se, len(members)) >= MAX_PER_LEVEL:
                raise MediaSetError("too many instances for one media set")
            for im, r in enumerate(members):
                out.append((("DICOM", f"PT{pt:06d}", f"ST{st:06d}", f"SE{se:06d}", f"IM{im:06d}"), r))
    return out


def _read_header(storage: NodeStorage, record: InstanceRecord) -> Dataset | None:
    """The instance's header without pixel data, from at most MAX_HEADER_BYTES of its verified blocks;
    None when pydicom cannot read it (the DICOMDIR then uses what storage knows)."""
    parts: list[bytes] = []
    have = 0
    for i in range(len(record.blocks)):
        if have >= min(record.size, MAX_HEADER_BYTES):
            break
        data = _block(storage, record, i)
        parts.append(data)
        have += len(data)
    try:
        return pydicom.dcmread(io.BytesIO(b"".join(parts)[:MAX_HEADER_BYTES]), stop_before_pixels=True,
                               force=True, defer_size=4096)
    except Exception as exc:  # untrusted bytes: pydicom fails in many ways; the record still has the keys
        log.warning("header of instance %s not readable for the DICOMDIR (%s)", hash_uid(record.sop_instance_uid),
                    type(exc).__name__)
        return None


def _check_uids(record: InstanceRecord) -> None:
    """The UIDs the DICOMDIR names must be UIDs (ASCII digits and dots, at most 64 characters): a record from
    before ingest checked the SOP Class UID, or odd metadata, is refused here (review M6)."""
    for label, uid in (("SOP Class UID", record.sop_class_uid), ("SOP Instance UID", record.sop_instance_uid),
                       ("Transfer Syntax UID", record.transfer_syntax), ("Study Instance UID", record.study_uid),
                       ("Series Instance UID", record.series_uid)):
        if len(uid) > 64 or not _UID_RE.fullmatch(uid):
            raise MediaSetError(f"instance {hash_uid(record.sop_instance_uid)}: its {label} is not a valid UID, "
                                "so no DICOMDIR can name it")


def media_set_from_records(storage: NodeStorage, records: Sequence[InstanceRecord], *, readme: str) -> MediaSet:
    """The set for these instances (records already read from metadata: storage.metadata is not touched
    unless a corrupt block must be recorded with no node listening). Blocking. MediaSetError when a record's
    UIDs cannot go into a DICOMDIR."""
    for record in records:
        _check_uids(record)
    placed = _file_ids(list(records))
    dir_instances: list[DirInstance] = []
    seen_series: set[tuple[str, str]] = set()
    for file_id, r in placed:
        key = (r.study_uid, r.series_uid)
        need = key not in seen_series or record_type(r) != "IMAGE"
        seen_series.add(key)
        dir_instances.append(DirInstance(file_id, r, _read_header(storage, r) if need else None))
    dicomdir = build_dicomdir(dir_instances)
    entries = [_Entry("README.TXT", None, readme.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")),
               _Entry("DICOMDIR", None, dicomdir)]
    entries += [_Entry("/".join(file_id), r) for file_id, r in placed]
    return MediaSet(storage, entries, studies=len({r.study_uid for r in records}))


def plan_media_set(storage: NodeStorage, study_uids: Sequence[str], *, readme: str) -> MediaSet:
    """The media set of these studies (NotFoundError when one holds no instance here). Blocking: reads
    metadata and one header per series; run it in a worker thread."""
    records: list[InstanceRecord] = []
    for uid in sorted(set(study_uids)):
        found = storage.metadata.instances(uid)
        if not found:
            raise NotFoundError(f"no study {hash_uid(uid)} on this node")
        records.extend(found)
    if not records:
        raise MediaSetError("a media set needs at least one study")
    return media_set_from_records(storage, records, readme=readme)

