"""Keep both: a held newcomer re-encoded under a new SOP Instance UID (protocol.conflict, policy keep-both).

The renamed instance is a DERIVED instance: pydicom reads the held bytes, sets SOP Instance UID
(0008,0018) and Media Storage SOP Instance UID (0002,0003) to the new UID and writes the data set
again in its own transfer syntax. Pixel data is not decoded (encapsulated fragments are copied as
they are), but the header is re-encoded, so the derived file is not byte-identical to what the
sender sent apart from the UID: its own blocks and digest are what byte-exact retrieval then
returns. The held original stays in the conflict queue's record (its digest in the audit) until gc.

The renamed instance says so itself (PS3.3 C.12.1.1.9, Original Attributes Sequence): one item is
appended (after any the instance carried) whose Modified Attributes Sequence holds the original SOP
Instance UID, with Reason for the Attribute Modification CORRECT (the defined terms are COERCE, for a
value changed to fit the receiving system's conventions, and CORRECT, for an incorrect value replaced:
a UID that names another instance's bytes is incorrect), Modifying System, Attribute Modification
DateTime and Source of Previous Values (who sent the newcomer: a calling AE, or the sender
organisation of a received one). Media Storage SOP Instance UID (0002,0003) is file meta
information, not part of the data set the sequence describes (PS3.10 7.1: group 0002 only in the file
meta); it always equals the SOP Instance UID, so the original of both is the one value recorded.
"""

from __future__ import annotations

import hashlib
import io
import uuid
from dataclasses import replace
from datetime import UTC, datetime

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID

from meshnode.dicom.blocks import DEFAULT_CHUNK_SIZE, block_ranges
from meshnode.dicom.errors import DicomError
from meshnode.dicom.layout import plan_layout
from meshnode.dicom.structure import scan_layout_bytes
from meshnode.storage.conflicts import KIND_STORE
from meshnode.storage.node_storage import NodeStorage, now_ms
from meshnode.storage.records import InstanceRecord, hash_uid
from meshnode.study.export import DigestMismatchError
from meshnode.study.staging import instance_record
from protocol.cid import CID
from protocol.conflict import ConflictPolicy, ConflictState, Decision, new_instance_uid


def fresh_uid() -> str:
    return new_instance_uid(uuid.uuid4())


MODIFYING_SYSTEM = "dicom-mesh meshnode (keep-both)"


def renamed_bytes(data: bytes, new_uid: str, source: str = "", when: datetime | None = None) -> bytes:
    """The Part 10 file `data` with its SOP Instance UID (data set and file meta) set to `new_uid`, the original
    recorded in an Original Attributes Sequence item (module docstring); `source`: who sent the newcomer."""
    try:
        ds = dcmread(io.BytesIO(data), force=False)
    except (InvalidDicomError, ValueError, EOFError, OSError) as exc:
        raise DicomError(f"cannot re-encode the held instance: {exc}") from None
    original = Dataset()
    original.SOPInstanceUID = UID(str(ds.get("SOPInstanceUID", "")))
    item = Dataset()
    item.ModifiedAttributesSequence = DicomSequence([original])
    item.AttributeModificationDateTime = (when or datetime.now(UTC)).strftime("%Y%m%d%H%M%S.%f%z")
    item.ModifyingSystem = MODIFYING_SYSTEM[:64]
    item.SourceOfPreviousValues = source[:64]
    item.ReasonForTheAttributeModification = "CORRECT"
    history = list(ds.OriginalAttributesSequence) if "OriginalAttributesSequence" in ds else []
    ds.OriginalAttributesSequence = DicomSequence([*history, item])
    ds.SOPInstanceUID = UID(new_uid)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(new_uid)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def held_bytes(storage: NodeStorage, held: InstanceRecord) -> bytes:
    """The held newcomer's bytes, each block verified against its CID, the whole against its digest."""
    data = b"".join(storage.blocks.get(cid, verify=True) for cid in held.blocks)
    if len(data) != held.size or hashlib.sha256(data).digest() != held.digest:
        raise DigestMismatchError(f"held instance {hash_uid(held.sop_instance_uid)} does not reassemble")
    return data


def store_renamed(storage: NodeStorage, held: InstanceRecord, new_uid: str,
                  chunk_size: int = DEFAULT_CHUNK_SIZE, source: str = "") -> InstanceRecord:
    """The held newcomer (its blocks verified on read) re-encoded under `new_uid`, its blocks durable under
    their CIDs; the record to give decide_conflict (no metadata is written here: unreferenced blocks, should
    the decision fail, are removed by gc). Checked as every instance at ingest (meshnode.dicom.layout).
    The record keeps the newcomer's lineage (source, origin): a received one stays its sender's."""
    data = renamed_bytes(held_bytes(storage, held), new_uid, source or held.origin)
    plan = plan_layout(data, scan_layout_bytes(data))
    if plan.attributes.sop_instance_uid != new_uid:
        raise DicomError("the re-encoded instance does not carry its new UID")
    ranges = block_ranges(plan, chunk_size)
    view = memoryview(data)
    cids = [CID(hashlib.sha256(view[a:b]).digest()) for a, b in ranges]
    blocks = storage.blocks
    written = []
    try:
        for a, b in ranges:
            written.append(blocks.write_temp(view[a:b]))
        blocks.make_durable(written)
    except BaseException:
        blocks.discard_temp(written)
        raise
    blocks.place(list(zip(written, cids)))
    record = instance_record(plan, cids, [b - a for a, b in ranges], len(data), hashlib.sha256(data).digest(),
                             held.source)
    return replace(record, origin=held.origin)


def keep_both(storage: NodeStorage, actor: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """Decide every pending conflict held under policy keep-both (single-threaded callers: `meshnode ingest`;
    the running node's conflict desk does the same on its database thread). Returns how many."""
    n = 0
    for row in storage.metadata.conflicts(ConflictState.PENDING):
        if row.policy is not ConflictPolicy.KEEP_BOTH or row.kind != KIND_STORE or row.newcomer is None:
            continue
        renamed = store_renamed(storage, row.newcomer, fresh_uid(), chunk_size, row.source)
        storage.metadata.decide_conflict(row.conflict_id, Decision.KEEP_BOTH, f"policy:keep-both ({actor})", [],
                                         now_ms(), renamed=renamed)
        n += 1
    storage.write_head()
    return n
