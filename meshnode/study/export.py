"""Export a study to a folder, byte-exact to what was ingested.

Each instance is reassembled from its blocks (each verified against its
CID; a corrupt one is quarantined, marked absent and alerted, 110113), its
whole-file sha256 checked against the digest recorded at ingest,
written to a temp file, fsynced and only then renamed into place. File
names come from UIDs (digits and dots only), never from other strings.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from meshnode.storage.audit import AuditEvent, EventCode, Outcome
from meshnode.storage.blockstore import BlockCorruptError
from meshnode.storage.node_storage import NodeStorage, local_actor
from meshnode.storage.records import InstanceRecord, hash_uid
from protocol.errors import NotFoundError, StorageError

log = logging.getLogger(__name__)

_SAFE_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class DigestMismatchError(StorageError):
    code = 704
    name = "digest-mismatch"


def safe_name(uid: str) -> str:
    if len(uid) > 64 or not _SAFE_UID.match(uid):
        raise StorageError(f"refusing to use {hash_uid(uid)} as a file name: not a plain DICOM UID")
    return uid


@dataclass(frozen=True)
class ExportReport:
    study_uid: str
    folder: Path
    instances: int
    bytes: int


def instance_path(folder: Path, record: InstanceRecord, taken: set[Path]) -> Path:
    """folder/<series UID>/<SOP instance UID>.dcm (with the digest added if the UID repeats)."""
    path = folder / safe_name(record.series_uid) / f"{safe_name(record.sop_instance_uid)}.dcm"
    if path in taken:
        path = path.with_name(f"{record.sop_instance_uid}.{record.digest.hex()[:12]}.dcm")
    taken.add(path)
    return path


def write_instance(storage: NodeStorage, record: InstanceRecord, path: Path) -> int:
    """Reassemble one instance into `path`, verified, durably. Returns its size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    digest = hashlib.sha256()
    size = 0
    try:
        with open(tmp, "wb") as out:
            for cid in record.blocks:
                block = storage.blocks.get(cid, verify=True)
                digest.update(block)
                size += len(block)
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if size != record.size or digest.digest() != record.digest:
            raise DigestMismatchError(
                f"instance {hash_uid(record.sop_instance_uid)} does not reassemble to the ingested bytes"
            )
        os.replace(tmp, path)
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return size


def export_study(storage: NodeStorage, study_uid: str, folder: Path) -> ExportReport:
    records = storage.metadata.instances(study_uid)
    if not records:
        raise NotFoundError(f"no study {hash_uid(study_uid)} on this node")
    taken: set[Path] = set()
    total = 0
    try:
        for record in records:
            total += write_instance(storage, record, instance_path(folder, record, taken))
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except StorageError as exc:
        if isinstance(exc, BlockCorruptError) and exc.cid is not None:
            # the block store has moved it to quarantine: no longer present, and alerted (110113)
            storage.block_quarantined(exc.cid, "export")
        storage.audit(AuditEvent(EventCode.EXPORT, "export", Outcome.SERIOUS_FAILURE, actor=local_actor(),
                                 study=hash_uid(study_uid), detail=exc.name))
        raise
    storage.audit(AuditEvent(EventCode.EXPORT, "export", actor=local_actor(), study=hash_uid(study_uid),
                             detail=f"{len(records)} instance(s), {total} bytes"))
    return ExportReport(study_uid, folder, len(records), total)
