"""When every block of a received manifest is on disk: verify each instance, record it, sign a receipt.

Verifying an instance is: its blocks reassemble to the size and digest the
signed manifest promises, and its own header says what the manifest says
about it (study, series, SOP instance and class UIDs, patient ID and name);
once all are verified, the manifest's summary (counts, modalities) must be
what they make up. A manifest that disagrees with its DICOM fails, whoever
signed it: otherwise a hostile sender could list another study's blocks
under a patient of its choosing. Records take their attributes from the
headers, never from the manifest.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence

from meshnode.dicom.attributes import InstanceAttributes, read_header_attributes
from meshnode.dicom.errors import DicomError
from meshnode.study.manifest_builder import summarise
from meshnode.storage.block_stream import BlockStream
from meshnode.storage.blockstore import BlockStore
from meshnode.storage.records import InstanceRecord, SeriesAttributes, Source, StudyAttributes, hash_uid
from protocol.cid import CID
from protocol.errors import DocumentError
from protocol.manifest import InstanceEntry, Manifest

log = logging.getLogger(__name__)


class InstanceMismatchError(DocumentError):
    """The blocks of an instance do not reassemble to the digest its manifest promises."""

    code = 504
    name = "instance-mismatch"


class ContentMismatchError(DocumentError):
    """An instance's own header disagrees with what its manifest says about it (UIDs, patient, counts).

    The message names the attribute, never its value (no patient data in logs or the audit trail)."""

    code = 505
    name = "content-mismatch"


def _header(blocks: BlockStore, entry: InstanceEntry, sizes: list[int], read: dict[int, bytes],
            verify: bool) -> InstanceAttributes:
    """The instance's attributes from its header, decoded as ingest decodes them; ContentMismatchError
    when the header cannot be read (a manifest must describe DICOM)."""
    try:
        return read_header_attributes(BlockStream(blocks, entry.blocks, sizes, verify=verify, preloaded=read))  # type: ignore[arg-type]
    except DicomError as exc:
        raise ContentMismatchError(f"instance {hash_uid(entry.sop_instance_uid)}: its header cannot be read, so it "
                                   f"does not match its manifest ({exc.name})") from None


def _check_header(manifest: Manifest, entry: InstanceEntry, header: InstanceAttributes, study: StudyAttributes) -> None:
    """Every attribute the manifest states about this instance must be what its own header says
    (patient attributes as the sender's summary would put them)."""
    expected = summarise(study, ())
    s = manifest.summary
    for field_name, stated, actual in (
            ("StudyInstanceUID", manifest.study_uid, header.study_instance_uid),
            ("SeriesInstanceUID", entry.series_uid, header.series_instance_uid),
            ("SOPInstanceUID", entry.sop_instance_uid, header.sop_instance_uid),
            ("SOPClassUID", entry.sop_class_uid, header.sop_class_uid),
            ("PatientID", s.patient_id, expected.patient_id),
            ("PatientName", s.patient_name, expected.patient_name)):
        if stated != actual:
            raise ContentMismatchError(f"instance {hash_uid(entry.sop_instance_uid)}: its header's {field_name} "
                                       "does not match its manifest")


def check_summary(manifest: Manifest, records: Sequence[InstanceRecord]) -> None:
    """Once every instance is verified: the manifest's summary must be what the instances make up
    (the counts, computed as the sender computes them, and the modalities when it states any)."""
    if not records:
        raise ContentMismatchError("no instance verified")
    actual = summarise(records[0].study, records)
    s = manifest.summary
    for field_name, stated, made in (("instance count", s.instance_count, actual.instance_count),
                                     ("series count", s.series_count, actual.series_count)):
        if stated != made:
            raise ContentMismatchError(f"the manifest's {field_name} is not what its instances' headers make up")
    if s.modality and not _modalities_agree(s.modality, records):
        raise ContentMismatchError("the manifest's Modality is not what its instances' headers make up")


def _modalities_agree(stated_text: str, records: Sequence[InstanceRecord]) -> bool:
    """Every modality stated is some instance's, and every series has an instance of a stated modality.

    Not equality: the sender lists one modality per series (from whichever of its instances it stored
    last), so a series whose instances disagree among themselves would otherwise fail an honest manifest.
    A summary cut at its 64-character limit may end in a partial modality, which is not checked."""
    names = stated_text.split("\\")
    clipped = len(stated_text) >= 64
    stated = set(names[:-1] if clipped else names)
    by_series: dict[str, set[str]] = {}
    for record in records:
        by_series.setdefault(record.series_uid, set()).add(record.series.modality)
    present = set().union(*by_series.values())
    return stated <= present and (clipped or all(modalities & stated or modalities <= {""}
                                                 for modalities in by_series.values()))


def verify_instances(blocks: BlockStore, manifest: Manifest) -> list[InstanceRecord]:
    """Re-read every instance from its (CID-verified) blocks and check its whole-file digest and size,
    and its header and the manifest's summary against what the manifest states.

    Runs in a worker thread: it reads and hashes the whole study once.
    """
    records = [verify_instance(blocks, manifest, i) for i in range(len(manifest.instances))]
    check_summary(manifest, records)
    log.info("verified %d instance(s) of study %s", len(records), hash_uid(manifest.study_uid))
    return records


def same_bytes(entry: InstanceEntry, known: InstanceRecord) -> bool:
    """Whether a manifest entry names exactly the instance an earlier verification recorded."""
    return (known.sop_instance_uid == entry.sop_instance_uid and known.digest == entry.digest
            and known.size == entry.size and tuple(known.blocks) == tuple(entry.blocks)
            and len(known.block_sizes) == len(entry.blocks))


#: blocks of an instance kept in memory during the full check for reading its header afterwards
_HEADER_KEEP = 1 << 20


def verify_instance(blocks: BlockStore, manifest: Manifest, index: int, *,
                    check_blocks: bool = True, known: InstanceRecord | None = None,
                    retained: Mapping[CID, bytes] | None = None) -> InstanceRecord:
    """Reassemble one instance, check its size and whole-file digest against the manifest, and its header
    against what the manifest states about it (ContentMismatchError names the attribute that differs).

    `check_blocks=False` skips re-hashing each block against its CID, for
    blocks verified as they arrived: the digest covers every byte anyway.
    `known`: this node already verified these very blocks as this instance
    (same UID, digest, size and block list; see `same_bytes`), for example
    under an earlier revision of the manifest. Blocks are immutable and named
    by their hash, so only the header is read again (its blocks, usually the
    first only); the header is checked and the record built as for a full check.
    `retained`: bytes of some of its blocks as they arrived, each already
    checked against its CID (meshnode.node.retained): used instead of reading
    those blocks back from disk. The digest and size are checked over them all
    the same.
    The record's attributes are the header's, never the manifest's.
    """
    entry = manifest.instances[index]
    read: dict[int, bytes] = {}
    if known is not None and same_bytes(entry, known):
        size, sizes = entry.size, list(known.block_sizes)
    else:
        digest = hashlib.sha256()
        size = 0
        sizes = []
        for i, cid in enumerate(entry.blocks):
            kept = retained.get(cid) if retained is not None else None
            data = kept if kept is not None else blocks.get(cid, verify=check_blocks)
            if size < _HEADER_KEEP:
                read[i] = data
            digest.update(data)
            size += len(data)
            sizes.append(len(data))
        if size != entry.size or digest.digest() != entry.digest:
            raise InstanceMismatchError(
                f"instance {hash_uid(entry.sop_instance_uid)} does not match its manifest digest")
    a = _header(blocks, entry, sizes, read, check_blocks)
    study = StudyAttributes(a.study_instance_uid, a.patient_name, a.patient_id, a.patient_birth_date, a.patient_sex,
                            a.study_date, a.study_time, a.study_description, a.accession_number)
    _check_header(manifest, entry, a, study)
    return InstanceRecord(
        sop_instance_uid=entry.sop_instance_uid,
        sop_class_uid=entry.sop_class_uid,
        series=SeriesAttributes(entry.series_uid, a.modality, a.series_number, a.series_description),
        study=study,
        transfer_syntax=entry.transfer_syntax,
        size=size,
        digest=entry.digest,
        blocks=entry.blocks,
        block_sizes=tuple(sizes),
        instance_number=a.instance_number,
        rows=a.rows,
        columns=a.columns,
        frames=a.number_of_frames,
        source=Source.RECEIVED,
        origin=manifest.sender_org,
    )
