"""C-STORE SCP: a received data set becomes a durable instance, or a clear DICOM failure status.

The response is sent only after StudyIntake has committed the instance:
blocks fsynced, metadata and audit entry committed (in a group commit with
the instances other associations are storing at the same time). Statuses (PS3.4 B.2.3):
    0x0000  stored (also when these very bytes were held already)
    0x0124  the caller may not store (its [[caller]] allow list)
    0xA700  refused: out of resources (instance too large, disk full, node stopping)
    0xA900  the data set's SOP Class / Instance UID is not the one the request names
    0xC000  cannot understand: the data set is not valid DICOM (truncated, malformed, no UIDs)
"""

from __future__ import annotations

import logging
from typing import Any

from pydicom.dataset import Dataset

from meshnode.dicom.errors import DicomError, DicomLimitError, SopMismatchError
from meshnode.dicom.part10 import part10_file
from meshnode.gateway.dimse.bridge import AssociationInfo, AuditFn, TrioBridge
from meshnode.gateway.group_commit import ThreadGroupCommit
from meshnode.gateway.intake import StudyIntake
from meshnode.storage.audit import AuditEvent, EventCode, Outcome
from meshnode.storage.records import AddOutcome, hash_uid
from protocol.errors import MeshError, StorageError, UnavailableError

log = logging.getLogger(__name__)

SUCCESS = 0x0000
NOT_AUTHORISED = 0x0124
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000


def _status(code: int, comment: str = "") -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]  # LO
    return ds


def status_for(exc: MeshError) -> int:
    if isinstance(exc, SopMismatchError):
        return DOES_NOT_MATCH
    if isinstance(exc, (DicomLimitError, StorageError, UnavailableError)):
        return OUT_OF_RESOURCES
    if isinstance(exc, DicomError):
        return CANNOT_UNDERSTAND
    return OUT_OF_RESOURCES


class StoreScp:
    def __init__(self, intake: StudyIntake, bridge: TrioBridge, audit: AuditFn) -> None:
        self.intake = intake
        self.bridge = bridge
        self.audit = audit
        self.commits = ThreadGroupCommit(intake, bridge.token)

    def handle(self, event: Any) -> Dataset:
        assoc = event.assoc
        info: AssociationInfo = assoc.gateway_info
        req = event.request
        sop_class = str(req.AffectedSOPClassUID or "")
        sop_instance = str(req.AffectedSOPInstanceUID or "")
        if "store" not in info.caller.allow:
            return self._refuse(info, NOT_AUTHORISED, f"{info.calling_ae} may not store here", sop_instance,
                                EventCode.SECURITY_ALERT)
        if req.MessageID in assoc.dimse.oversized:
            assoc.dimse.oversized.discard(req.MessageID)
            limit = self.intake.max_instance_bytes
            return self._refuse(info, OUT_OF_RESOURCES, f"instance exceeds the limit of {limit} bytes",
                                sop_instance, EventCode.SECURITY_ALERT)
        stream = assoc.dimse.streams.pop(req.MessageID, None)
        streamed = None
        if stream is not None:  # the data set was split into blocks while it arrived
            data, streamed = stream.collect()
        else:
            dataset = req.DataSet.getbuffer() if req.DataSet is not None else memoryview(b"")
            transfer_syntax = str(event.context.transfer_syntax)
            data = part10_file(dataset, sop_class, sop_instance, transfer_syntax, info.calling_ae)
        try:
            # the blocks are synced with the commit group (the instances of every association committing now)
            prepared = self.intake.prepare(data, info.source, expect=(sop_class, sop_instance), streamed=streamed,
                                           durable=False)
            stored = self.commits.commit(prepared, info.route)
        except MeshError as exc:
            return self._refuse(info, status_for(exc), f"{exc.name}: {exc}", sop_instance, EventCode.IMPORT)
        if stored.outcome is AddOutcome.DUPLICATE:
            info.duplicates += 1
        else:
            info.stored += 1
            info.bytes += stored.size
        return _status(SUCCESS)

    def _refuse(self, info: AssociationInfo, code: int, why: str, sop_instance: str, audit_code: EventCode) -> Dataset:
        info.refused += 1
        log.warning("C-STORE from %s refused (0x%04X): %s", info.source, code, why)
        try:
            self.bridge.call(self.audit, AuditEvent(
                audit_code, "dimse-store-refused", Outcome.MINOR_FAILURE, actor=info.source,
                detail=f"0x{code:04X} {why} ({hash_uid(sop_instance) if sop_instance else 'no SOP Instance UID'})"
                [:300]))
        except MeshError as exc:
            log.error("cannot audit a refused C-STORE: %s", exc)
        return _status(code, why)
