"""The reconciliation queue and the patient lookup table as JSON operations, for the control API (the local
admin, meshnode.node.reconcile_routes) and the HTTP listener (PACS-team users, meshnode.web.reconcile_web).

Bodies are JSON objects checked here (SchemaError / LocalProtocolError on anything else); `user` is who
decides, recorded in the queue row and the audit ("control:<name>" or "user:<name>").
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from meshnode.gateway.patient_table import PatientInput, check_record
from meshnode.gateway.reconciler import Reconciler
from meshnode.node.retry_driver import Database
from meshnode.storage.audit import AuditEvent, EventCode
from meshnode.storage.patients import ReconState
from meshnode.storage.records import hash_uid
from protocol.cid import CID
from protocol.errors import LocalProtocolError, NotFoundError, SchemaError

AuditFn = Callable[[AuditEvent], Awaitable[None]]
RECORD_FIELDS = ("local_id", "issuer", "nhs_number", "name", "birth_date", "sex")
MAX_LIST = 5000


def _text(body: dict[str, Any], key: str, *, required: bool = True, limit: int = 400) -> str:
    value = body.get(key, None if required else "")
    if not isinstance(value, str) or (required and not value) or len(value) > limit:
        raise SchemaError(f"'{key}' must be a string of at most {limit} characters" + (", given" if required else ""))
    return value


def _manifest(body: dict[str, Any]) -> CID:
    return CID.parse(_text(body, "manifest", limit=100))


def record_input(value: object) -> PatientInput:
    if not isinstance(value, dict) or set(value) - set(RECORD_FIELDS):
        raise SchemaError(f"a record is an object with {', '.join(RECORD_FIELDS)}")
    return PatientInput(*(_text(value, f, required=f in RECORD_FIELDS[:3]) for f in RECORD_FIELDS))


async def queue(reconciler: Reconciler, body: dict[str, Any]) -> list[dict[str, object]]:
    """The queue: the studies waiting for a decision (with "all": every state, newest decisions too)."""
    everything = body.get("all", False)
    if not isinstance(everything, bool):
        raise SchemaError("'all' must be true or false")
    states = () if everything else (ReconState.WAITING, ReconState.ARRIVED)
    rows = await reconciler.db.run(lambda s: s.reconciliations(states))
    return [r.json() for r in rows[-MAX_LIST:]]


async def decide(reconciler: Reconciler, body: dict[str, Any], user: str) -> dict[str, object]:
    """{"manifest", "action": "match", "local_id"} or {..., "record": {...}} (with "override_reason" when the
    record's NHS number is not the study's), or {..., "action": "reject", "reason"}."""
    if not reconciler.settings.enabled:
        raise LocalProtocolError("patient reconciliation is off ([reconciliation] enabled = false)")
    manifest = _manifest(body)
    action = _text(body, "action", limit=10)
    if action == "match":
        override = _text(body, "override_reason", required=False, limit=200)
        if "record" in body:
            row = await reconciler.match(manifest, user, entered=record_input(body["record"]), override_reason=override)
        else:
            row = await reconciler.match(manifest, user, local_id=_text(body, "local_id", limit=64),
                                         override_reason=override)
    elif action == "reject":
        row = await reconciler.reject(manifest, user, _text(body, "reason", required=False, limit=200))
    else:
        raise SchemaError("'action' is match or reject")
    return row.json()


async def patients(db: Database, body: dict[str, Any]) -> list[dict[str, object]]:
    """The lookup table (or the records of one NHS number: "nhs_number")."""
    number = _text(body, "nhs_number", required=False, limit=20).replace(" ", "") or None
    rows = await db.run(lambda s: s.patients(number))
    return [r.json() for r in rows[:MAX_LIST]]


async def put_patient(db: Database, audit: AuditFn, body: dict[str, Any], user: str, now_ms: int) -> dict[str, object]:
    record = check_record(record_input(body.get("record")), now_ms=now_ms, by=user)
    existed = await db.run(lambda s: s.patient(record.local_id) is not None)
    await db.run(lambda s: s.put_patients([record]))
    await audit(AuditEvent(EventCode.PATIENT_RECORD, "patient-table-update" if existed else "patient-table-add",
                           actor=user, detail=f"local record {hash_uid(record.local_id)} ({record.issuer})"))
    return record.json()


async def delete_patient(db: Database, audit: AuditFn, body: dict[str, Any], user: str) -> dict[str, object]:
    local_id = _text(body, "local_id", limit=64)
    if not await db.run(lambda s: s.delete_patient(local_id)):
        raise NotFoundError("no local record with that ID in the lookup table")
    await audit(AuditEvent(EventCode.PATIENT_RECORD, "patient-table-delete", actor=user,
                           detail=f"local record {hash_uid(local_id)}"))
    return {"deleted": local_id}
