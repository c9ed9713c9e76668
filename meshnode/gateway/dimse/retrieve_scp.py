"""C-GET and C-MOVE SCP: send stored instances, byte for byte, by C-STORE sub-operations.

C-GET sends them back on the caller's own association; C-MOVE opens an
association to the move destination, which must be configured
([[move_destination]]: AE title, host, port): a C-MOVE only names an AE
title, and the node never sends to an address it was not told about.
Every instance is reassembled from its verified blocks (meshnode.gateway.
dimse.sending). Each retrieve is audited (Instances Transferred, 110104).
Statuses: pynetdicom's (0xFF00 pending, 0x0000, 0xB000 some failed), plus
0x0124 caller may not retrieve, 0xA801 a move destination not configured,
0xA702 (every sub-operation failed, Number of Failed Sub-operations = all)
when the configured destination cannot be reached (as dcmtk's dcmqrscp
answers: PS3.4 Table C.4-2), 0xA900 identifier does not fit the model,
0xC000 identifier that cannot be read.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import build_context, evt

from meshnode.gateway.catalog import retrieve
from meshnode.gateway.config import GatewayConfig
from meshnode.gateway.dimse.bridge import AssociationInfo, AuditFn, TrioBridge
from meshnode.gateway.dimse.contexts import GET_MODELS, MOVE_MODELS
from meshnode.gateway.dimse.conversion import DEFAULT_CONVERSIONS, Conversions
from meshnode.gateway.dimse.query_scp import identifier_keys
from meshnode.gateway.dimse.sending import (
    MAX_CONTEXTS,
    RawInstance,
    install_raw_sending,
    move_contexts,
    read_instance,
)
from meshnode.gateway.matching import Level, QueryError
from meshnode.storage.audit import AuditEvent, EventCode, Outcome
from meshnode.storage.blockstore import BlockStore
from meshnode.storage.dbthread import DatabaseThread
from meshnode.storage.records import InstanceRecord, hash_uid
from protocol.errors import MeshError, StorageError

log = logging.getLogger(__name__)

PENDING = 0xFF00
CANCELLED = 0xFE00
NOT_AUTHORISED = 0x0124
OUT_OF_RESOURCES = 0xA701
SUB_OPERATIONS_FAILED = 0xA702  # Refused: Out of Resources - Unable to perform sub-operations
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
                 tmp_dir: Path, conversions: Conversions = DEFAULT_CONVERSIONS) -> None:
        self.config = config
        self.db = db
        self.blocks = blocks
        self.audit = audit
        self.tmp_dir = tmp_dir
        self.conversions = conversions

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

    def _send(self, event: Any, records: list[InstanceRecord], tally: Tally) -> Iterator[tuple[int, Dataset | None]]:
        """Yield the instances for pynetdicom to send; `tally` learns what each sub-operation became."""
        for rec in records:
            if event.is_cancelled:
                tally.cancelled = True
                yield CANCELLED, None
                return
            try:
                data = read_instance(self.blocks, rec)
            except MeshError as exc:
                log.error("cannot send instance %s: %s", hash_uid(rec.sop_instance_uid), exc)
                tally.count(rec, False)
                continue  # pynetdicom counts the sub-operations it was not given as failed
            raw = RawInstance(rec, data)
            yield PENDING, raw
            tally.count(rec, raw.delivered)  # resumed once pynetdicom's C-STORE returned

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
        tally = Tally()
        yield from self._send(event, records, tally)
        self._audit_transfer(bridge, info, "dimse-get", records, tally, f"to {info.calling_ae} (C-GET)")

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
        contexts = [build_context(sop_class, syntaxes) for sop_class, syntaxes in move_contexts(records)]
        if refusal is None and len(contexts) > MAX_CONTEXTS:
            refusal = _status(OUT_OF_RESOURCES,
                              f"more than {MAX_CONTEXTS} presentation contexts needed in one retrieve")
        if refusal is not None:
            # pynetdicom answers with a status only after the destination's association: not opened at all
            yield destination.host, destination.port, {"move_attempt": MoveAttempt(connect=False)}
            yield 1
            yield refusal, None
            return
        tmp_dir, conversions = self.tmp_dir, self.conversions
        attempt = MoveAttempt()
        kwargs = {"contexts": contexts, "move_attempt": attempt,
                  "evt_handlers": [(evt.EVT_ESTABLISHED,
                                    lambda e: install_raw_sending(e.assoc, tmp_dir, conversions))]}
        yield destination.host, destination.port, kwargs
        yield len(records)
        where = f"{destination.ae_title}@{destination.host}:{destination.port}"
        if records and not attempt.reached:
            log.warning("C-MOVE from %s: move destination %s unreachable (%s); %d sub-operation(s) failed",
                        info.source, where, attempt.reason, len(records))
            unreachable = Tally()
            for rec in records:
                unreachable.count(rec, False)
            self._audit_transfer(bridge, info, "dimse-move", records, unreachable,
                                 f"to {where} (C-MOVE): unreachable ({attempt.reason})")
            failed = Dataset()
            failed.FailedSOPInstanceUIDList = [r.sop_instance_uid for r in records]
            yield _status(SUB_OPERATIONS_FAILED, f"cannot reach {destination.ae_title}: {attempt.reason}"), failed
            return
        tally = Tally()
        yield from self._send(event, records, tally)
        self._audit_transfer(bridge, info, "dimse-move", records, tally, f"to {where} (C-MOVE)")

    # -- audit --------------------------------------------------------------------------------
    def _audit_transfer(self, bridge: TrioBridge, info: AssociationInfo, action: str,
                        records: list[InstanceRecord], tally: Tally, where: str) -> None:
        """One Instances Transferred entry per study: what was delivered, what failed, the outcome
        (0: all delivered, 4: some failed, 8: none delivered)."""
        info.retrieved += sum(tally.completed.values())
        info.not_retrieved += sum(tally.failed.values())
        studies = sorted({r.study_uid for r in records})
        for study in studies:
            done, failed = tally.completed.get(study, 0), tally.failed.get(study, 0)
            not_sent = sum(1 for r in records if r.study_uid == study) - done - failed  # cancelled
            outcome = (Outcome.SUCCESS if not failed and not not_sent
                       else Outcome.SERIOUS_FAILURE if not done else Outcome.MINOR_FAILURE)
            detail = f"{done} instance(s) {where}"
            if failed:
                detail += f", {failed} failed"
            if not_sent:
                detail += f", {not_sent} not sent (cancelled)"
            try:
                bridge.call(self.audit, AuditEvent(EventCode.INSTANCES_TRANSFERRED, action, outcome,
                                                   actor=info.source, study=hash_uid(study), detail=detail[:300]))
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


@dataclass
class Tally:
    """What a retrieve's sub-operations became, per study UID."""

    completed: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    cancelled: bool = False

    def count(self, record: InstanceRecord, delivered: bool) -> None:
        into = self.completed if delivered else self.failed
        into[record.study_uid] = into.get(record.study_uid, 0) + 1


@dataclass
class MoveAttempt:
    """What became of the association to a C-MOVE's destination (filled in by `associate_for_move`)."""

    connect: bool = True  # False: a refusal, answered without contacting the destination
    reached: bool = False
    reason: str = ""


class UnreachableDestination:
    """Stands in for a move destination's association that was not opened, so that pynetdicom lets the
    C-MOVE handler answer (0xA702 with every sub-operation failed) instead of answering 0xA801 itself."""

    is_established = True

    def send_c_store(self, *args: object, **kwargs: object) -> Dataset:
        raise StorageError("the move destination is not connected")

    def release(self) -> None:
        pass

    def abort(self) -> None:
        pass


class _ConnectErrors(logging.Handler):
    """pynetdicom's 'TCP Initialisation Error: ...' lines while a move destination is dialled: the reason."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def reason(self, thread: int | None) -> str:
        """The connection error logged by this association's DUL thread (others may be dialling too)."""
        for record in self.records:
            text = record.getMessage()
            if record.thread == thread and text.startswith("TCP Initialisation Error:"):
                return text.split(":", 1)[1].strip()[:120]
        return ""


def _connect_error(addr: str, port: int, timeout: float | None) -> str:
    """Why the destination cannot be reached, when pynetdicom's log did not say (an operator may set its
    loggers above ERROR): one TCP connection of our own, only after pynetdicom's failed."""
    try:
        with socket.create_connection((addr, port), timeout=timeout or 10):
            return "connection failed, then succeeded on a second try"
    except OSError as exc:
        return str(exc)[:120] or type(exc).__name__


def associate_for_move(original: Callable[..., Any], addr: str, port: int, *args: Any,
                       move_attempt: MoveAttempt | None = None, **kwargs: Any) -> Any:
    """AE.associate for the gateway's AE: a C-MOVE handler's `move_attempt` learns whether it connected."""
    if move_attempt is None:
        return original(addr, port, *args, **kwargs)
    if not move_attempt.connect:
        return UnreachableDestination()
    errors = _ConnectErrors()
    transport_log = logging.getLogger("pynetdicom.transport")
    transport_log.addHandler(errors)
    try:
        assoc = original(addr, port, *args, **kwargs)
    finally:
        transport_log.removeHandler(errors)
    if assoc.is_established:
        move_attempt.reached = True
        return assoc
    if assoc.is_rejected:
        move_attempt.reason = "it rejected the association"
    else:
        move_attempt.reason = (errors.reason(getattr(assoc.dul, "ident", None))
                               or _connect_error(addr, port, getattr(assoc, "connection_timeout", None))
                               or "no association")
    try:
        assoc.dul.socket.close()  # as pynetdicom does for a failed move association
    except (AttributeError, OSError):  # the socket may never have been opened
        pass
    return UnreachableDestination()
