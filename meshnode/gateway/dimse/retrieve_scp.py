"""C-GET and C-MOVE SCP: send stored instances, byte for byte, by C-STORE sub-operations.

C-GET sends them back on the caller's own association; C-MOVE opens an
association to the move destination, which must be configured
([[move_destination]]: AE title, host, port): a C-MOVE only names an AE
title, and the node never sends to an address it was not told about.
Every instance is reassembled from its verified blocks (meshnode.gateway.
dimse.sending). Each retrieve is audited (Instances Transferred, 110104).
Statuses: pynetdicom's (0xFF00 pending, 0x0000, 0xB000 some failed), plus
0x0124 caller may not retrieve, 0xA801 unknown move destination, 0xA900
identifier does not fit the model, 0xC000 identifier that cannot be read.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import build_context, evt

from meshnode.gateway.catalog import retrieve
from meshnode.gateway.config import GatewayConfig
from meshnode.gateway.dimse.bridge import AssociationInfo, AuditFn, TrioBridge
from meshnode.gateway.dimse.contexts import GET_MODELS, MOVE_MODELS
from meshnode.gateway.dimse.query_scp import identifier_keys
from meshnode.gateway.dimse.sending import (
    MAX_CONTEXTS,
    RawInstance,
    install_raw_sending,
    read_instance,
    requested_contexts,
)
from meshnode.gateway.matching import Level, QueryError
from meshnode.storage.audit import AuditEvent, EventCode, Outcome
from meshnode.storage.blockstore import BlockStore
from meshnode.storage.dbthread import DatabaseThread
from meshnode.storage.records import InstanceRecord, hash_uid
from protocol.errors import MeshError

log = logging.getLogger(__name__)

PENDING = 0xFF00
CANCELLED = 0xFE00
NOT_AUTHORISED = 0x0124
OUT_OF_RESOURCES = 0xA701
MOVE_DESTINATION_UNKNOWN = 0xA801
DOES_NOT_MATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000


def _status(code: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment[:64]
    return ds


class RetrieveScp:
    def __init__(self, config: GatewayConfig, db: DatabaseThread, blocks: BlockStore, audit: AuditFn,
                 tmp_dir: Path) -> None:
        self.config = config
        self.db = db
        self.blocks = blocks
        self.audit = audit
        self.tmp_dir = tmp_dir

    def _records(self, event: Any, bridge: TrioBridge, models: dict[str, str]) -> list[InstanceRecord]:
        """The instances the request's identifier names; QueryError when it cannot be answered."""
        model = models.get(str(event.request.AffectedSOPClassUID), "STUDY")
        level, keys, _ = identifier_keys(event.identifier)
        try:
            lvl = Level(level.strip().upper())
        except ValueError:
            raise QueryError(f"unknown query/retrieve level {level!r}") from None
        if lvl is Level.PATIENT and model != "PATIENT":
            raise QueryError("PATIENT level retrieves need the Patient Root information model")
        return bridge.call(self.db.run, partial(retrieve, level=lvl, identifier=keys))

    def _refusal(self, exc: BaseException) -> Dataset:
        if isinstance(exc, QueryError):
            code = DOES_NOT_MATCH if "information model" in str(exc) else UNABLE_TO_PROCESS
            return _status(code, str(exc))
        if isinstance(exc, MeshError):
            return _status(UNABLE_TO_PROCESS, f"{exc.name}: {exc}")
        return _status(UNABLE_TO_PROCESS, f"cannot read the identifier ({type(exc).__name__})")

    def _send(self, event: Any, records: list[InstanceRecord]) -> Iterator[tuple[int, Dataset | None]]:
        for rec in records:
            if event.is_cancelled:
                yield CANCELLED, None
                return
            try:
                data = read_instance(self.blocks, rec)
            except MeshError as exc:
                log.error("cannot send instance %s: %s", hash_uid(rec.sop_instance_uid), exc)
                continue  # pynetdicom counts the sub-operations it was not given as failed
            yield PENDING, RawInstance(rec, data)

    # -- C-GET --------------------------------------------------------------------------------
    def handle_get(self, event: Any, bridge: TrioBridge) -> Iterator[Any]:
        info: AssociationInfo = event.assoc.gateway_info
        if "get" not in info.caller.allow:
            self._audit(bridge, info, "dimse-get", Outcome.MINOR_FAILURE, "not permitted", EventCode.SECURITY_ALERT)
            yield 1  # pynetdicom wants a count first; the failure status is then the final response
            yield _status(NOT_AUTHORISED, f"{info.calling_ae} may not retrieve here"), None
            return
        try:
            records = self._records(event, bridge, GET_MODELS)
        except Exception as exc:  # untrusted identifier: pydicom fails in many ways
            self._audit(bridge, info, "dimse-get", Outcome.MINOR_FAILURE, getattr(exc, "name", "bad identifier"))
            yield 1
            yield self._refusal(exc), None
            return
        yield len(records)
        yield from self._send(event, records)
        info.retrieved += len(records)
        self._audit_transfer(bridge, info, "dimse-get", records, f"to {info.calling_ae} (C-GET)")

    # -- C-MOVE ------------------------------------------------------------------------------
    def handle_move(self, event: Any, bridge: TrioBridge) -> Iterator[Any]:
        info: AssociationInfo = event.assoc.gateway_info
        destination_ae = event.move_destination
        if isinstance(destination_ae, bytes):
            destination_ae = destination_ae.decode("ascii", "replace")
        destination = self.config.move_destination(str(destination_ae or ""))
        if destination is None:
            self._audit(bridge, info, "dimse-move", Outcome.MINOR_FAILURE,
                        f"unknown move destination {str(destination_ae).strip()!r}", EventCode.SECURITY_ALERT)
            yield None, None  # pynetdicom answers 0xA801 Move Destination Unknown
            return
        refusal: Dataset | None = None
        records: list[InstanceRecord] = []
        if "move" not in info.caller.allow:
            self._audit(bridge, info, "dimse-move", Outcome.MINOR_FAILURE, "not permitted", EventCode.SECURITY_ALERT)
            refusal = _status(NOT_AUTHORISED, f"{info.calling_ae} may not retrieve here")
        else:
            try:
                records = self._records(event, bridge, MOVE_MODELS)
            except Exception as exc:  # untrusted identifier: pydicom fails in many ways
                self._audit(bridge, info, "dimse-move", Outcome.MINOR_FAILURE, getattr(exc, "name", "bad identifier"))
                refusal = self._refusal(exc)
        contexts = [build_context(sop_class, syntaxes) for sop_class, syntaxes in requested_contexts(records)]
        if refusal is None and len(contexts) > MAX_CONTEXTS:
            refusal = _status(OUT_OF_RESOURCES,
                              f"more than {MAX_CONTEXTS} presentation contexts needed in one retrieve")
        if refusal is not None:
            # pynetdicom only answers with a status once it holds an association to the destination
            yield destination.host, destination.port, {"contexts": [build_context("1.2.840.10008.1.1")]}
            yield 1
            yield refusal, None
            return
        tmp_dir = self.tmp_dir
        kwargs = {"contexts": contexts,
                  "evt_handlers": [(evt.EVT_ESTABLISHED, lambda e: install_raw_sending(e.assoc, tmp_dir))]}
        yield destination.host, destination.port, kwargs
        yield len(records)
        yield from self._send(event, records)
        info.retrieved += len(records)
        self._audit_transfer(bridge, info, "dimse-move", records,
                             f"to {destination.ae_title}@{destination.host}:{destination.port} (C-MOVE)")

    # -- audit --------------------------------------------------------------------------------
    def _audit_transfer(self, bridge: TrioBridge, info: AssociationInfo, action: str,
                        records: list[InstanceRecord], where: str) -> None:
        studies = sorted({r.study_uid for r in records})
        for study in studies:
            n = sum(1 for r in records if r.study_uid == study)
            try:
                bridge.call(self.audit, AuditEvent(EventCode.INSTANCES_TRANSFERRED, action, actor=info.source,
                                                   study=hash_uid(study), detail=f"{n} instance(s) {where}"[:300]))
            except MeshError as exc:
                log.error("cannot audit a retrieve: %s", exc)
        if not studies:
            self._audit(bridge, info, action, Outcome.SUCCESS, f"nothing matched; {where}",
                        EventCode.INSTANCES_TRANSFERRED)

    def _audit(self, bridge: TrioBridge, info: AssociationInfo, action: str, outcome: Outcome, detail: str,
               code: EventCode = EventCode.INSTANCES_TRANSFERRED) -> None:
        try:
            bridge.call(self.audit, AuditEvent(code, action, outcome, actor=info.source, detail=detail[:300]))
        except MeshError as exc:
            log.error("cannot audit a retrieve: %s", exc)
