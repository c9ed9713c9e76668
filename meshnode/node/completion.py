"""When every block of a received manifest is on disk: verify each instance, record it, sign a receipt."""

from __future__ import annotations

import hashlib
import io
import logging

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from meshnode.storage.blockstore import BlockStore
from meshnode.storage.records import InstanceRecord, SeriesAttributes, Source, StudyAttributes, hash_uid
from protocol.errors import DocumentError
from protocol.manifest import InstanceEntry, Manifest

log = logging.getLogger(__name__)

_TAGS = ["SeriesNumber", "SeriesDescription", "InstanceNumber", "Rows", "Columns", "NumberOfFrames",
         "StudyTime", "AccessionNumber", "Modality"]


class InstanceMismatchError(DocumentError):
    """The blocks of an instance do not reassemble to the digest its manifest promises."""

    code = 504
    name = "instance-mismatch"


def _header_fields(header: bytes) -> dict[str, object]:
    """Series/instance attributes from an instance's header block, when pydicom can read it alone."""
    try:
        ds = dcmread(io.BytesIO(header), stop_before_pixels=True, specific_tags=_TAGS, force=True)
    except (InvalidDicomError, ValueError, EOFError, OSError, KeyError, TypeError, AttributeError):
        return {}
    out: dict[str, object] = {}
    for name in _TAGS:
        try:
            value = ds.get(name)
        except (ValueError, TypeError, KeyError, AttributeError):
            continue
        if value is not None and value != "":
            out[name] = value
    return out


def _int(value: object) -> int | None:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


def verify_instances(blocks: BlockStore, manifest: Manifest) -> list[InstanceRecord]:
    """Re-read every instance from its (CID-verified) blocks and check its whole-file digest and size.

    Runs in a worker thread: it reads and hashes the whole study once.
    """
    records = [verify_instance(blocks, manifest, i) for i in range(len(manifest.instances))]
    log.info("verified %d instance(s) of study %s", len(records), hash_uid(manifest.study_uid))
    return records


def same_bytes(entry: InstanceEntry, known: InstanceRecord) -> bool:
    """Whether a manifest entry names exactly the instance an earlier verification recorded."""
    return (known.sop_instance_uid == entry.sop_instance_uid and known.digest == entry.digest
            and known.size == entry.size and tuple(known.blocks) == tuple(entry.blocks)
            and len(known.block_sizes) == len(entry.blocks))


def verify_instance(blocks: BlockStore, manifest: Manifest, index: int, *,
                    check_blocks: bool = True, known: InstanceRecord | None = None) -> InstanceRecord:
    """Reassemble one instance and check its size and whole-file digest against the manifest.

    `check_blocks=False` skips re-hashing each block against its CID, for
    blocks verified as they arrived: the digest covers every byte anyway.
    `known`: this node already verified these very blocks as this instance
    (same UID, digest, size and block list; see `same_bytes`), for example
    under an earlier revision of the manifest. Blocks are immutable and named
    by their hash, so only the header block is read again (for the record's
    attributes); the record is built as for a full check.
    """
    entry = manifest.instances[index]
    if known is not None and same_bytes(entry, known):
        header = blocks.get(entry.blocks[0], verify=check_blocks)
        size, sizes = entry.size, list(known.block_sizes)
    else:
        digest = hashlib.sha256()
        size = 0
        sizes = []
        header = b""
        for i, cid in enumerate(entry.blocks):
            data = blocks.get(cid, verify=check_blocks)
            if i == 0:
                header = data
            digest.update(data)
            size += len(data)
            sizes.append(len(data))
        if size != entry.size or digest.digest() != entry.digest:
            raise InstanceMismatchError(
                f"instance {hash_uid(entry.sop_instance_uid)} does not match its manifest digest")
    fields = _header_fields(header)
    s = manifest.summary
    return InstanceRecord(
        sop_instance_uid=entry.sop_instance_uid,
        sop_class_uid=entry.sop_class_uid,
        series=SeriesAttributes(entry.series_uid, str(fields.get("Modality", s.modality.split("\\")[0])),
                                _int(fields.get("SeriesNumber")), str(fields.get("SeriesDescription", ""))),
        study=StudyAttributes(manifest.study_uid, s.patient_name, s.patient_id, s.birth_date, s.sex, s.study_date,
                              str(fields.get("StudyTime", "")), s.description, str(fields.get("AccessionNumber", ""))),
        transfer_syntax=entry.transfer_syntax,
        size=size,
        digest=entry.digest,
        blocks=entry.blocks,
        block_sizes=tuple(sizes),
        instance_number=_int(fields.get("InstanceNumber")),
        rows=_int(fields.get("Rows")),
        columns=_int(fields.get("Columns")),
        frames=_int(fields.get("NumberOfFrames")),
        source=Source.RECEIVED,
    )
