"""meshnode patients import|list|set|delete: the local patient lookup table reconciliation matches against.

Works on the node folder's database directly (the node may be running or not); every change is audited
(Patient Record, 110110) as the local account that made it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common.cli.output import EXIT_OK, emit
from common.files import read_file
from meshnode.cli.storage_cmds import open_storage
from meshnode.gateway.patient_table import (
    MAX_CSV_BYTES,
    SEXES,
    PatientInput,
    check_record,
    parse_csv,
)
from meshnode.storage.audit import AuditEvent, EventCode
from meshnode.storage.node_storage import local_actor, now_ms
from meshnode.storage.records import hash_uid
from protocol.errors import NotFoundError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("patients", help="the local patient lookup table (NHS number -> local patient ID)")
    actions = parser.add_subparsers(dest="action", required=True)
    imp = actions.add_parser("import", parents=[common],
                             help="load a CSV (local_id,issuer,nhs_number,name,birth_date,sex); all rows or none")
    imp.add_argument("file")
    imp.add_argument("--json", action="store_true")
    imp.set_defaults(func=run_import)
    listing = actions.add_parser("list", parents=[common], help="the table, or the records of one NHS number")
    listing.add_argument("--nhs-number", default=None)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=run_list)
    put = actions.add_parser("set", parents=[common], help="add or replace one record")
    put.add_argument("local_id")
    put.add_argument("--issuer", required=True, help="the local Issuer of Patient ID")
    put.add_argument("--nhs-number", required=True)
    put.add_argument("--name", default="", help="DICOM PN: FAMILY^GIVEN")
    put.add_argument("--birth-date", default="", help="YYYYMMDD")
    put.add_argument("--sex", default="", choices=[s for s in SEXES if s] + [""])
    put.add_argument("--json", action="store_true")
    put.set_defaults(func=run_set)
    delete = actions.add_parser("delete", parents=[common], help="remove one record")
    delete.add_argument("local_id")
    delete.add_argument("--json", action="store_true")
    delete.set_defaults(func=run_delete)


def run_import(args: argparse.Namespace) -> int:
    data = read_file(Path(args.file), "patient CSV", max_bytes=MAX_CSV_BYTES)
    actor = local_actor()
    records = parse_csv(data, now_ms=now_ms(), by=actor)  # strict: a bad row raises and nothing is written
    with open_storage(args) as storage:
        existing = {r.local_id for r in storage.metadata.patients()}
        storage.metadata.put_patients(records)
        replaced = sum(1 for r in records if r.local_id in existing)
        storage.audit(AuditEvent(EventCode.PATIENT_RECORD, "patient-table-import", actor=actor,
                                 detail=f"{len(records)} record(s) from a CSV file: {len(records) - replaced} new, "
                                        f"{replaced} replaced"))
    emit({"imported": len(records), "new": len(records) - replaced, "replaced": replaced}, args.json,
         f"imported {len(records)} record(s): {len(records) - replaced} new, {replaced} replaced")
    return EXIT_OK


def run_list(args: argparse.Namespace) -> int:
    number = args.nhs_number.replace(" ", "") if args.nhs_number else None
    with open_storage(args) as storage:
        rows = storage.metadata.patients(number)
    lines = [f"{r.local_id:<20} {r.issuer:<10} {r.nhs_number}  {r.name:<32} {r.birth_date:<8} {r.sex}" for r in rows]
    emit([r.json() for r in rows], args.json, "\n".join(lines) or "no records (meshnode patients import FILE.csv)")
    return EXIT_OK


def run_set(args: argparse.Namespace) -> int:
    actor = local_actor()
    record = check_record(PatientInput(args.local_id, args.issuer, args.nhs_number, args.name, args.birth_date,
                                       args.sex), now_ms=now_ms(), by=actor)
    with open_storage(args) as storage:
        existed = storage.metadata.patient(record.local_id) is not None
        storage.metadata.put_patients([record])
        storage.audit(AuditEvent(EventCode.PATIENT_RECORD, "patient-table-update" if existed else "patient-table-add",
                                 actor=actor, detail=f"local record {hash_uid(record.local_id)} ({record.issuer})"))
    emit(record.json(), args.json, f"{'replaced' if existed else 'added'} {record.local_id}")
    return EXIT_OK


def run_delete(args: argparse.Namespace) -> int:
    actor = local_actor()
    with open_storage(args) as storage:
        if not storage.metadata.delete_patient(args.local_id):
            raise NotFoundError(f"no local record {args.local_id!r}")
        storage.audit(AuditEvent(EventCode.PATIENT_RECORD, "patient-table-delete", actor=actor,
                                 detail=f"local record {hash_uid(args.local_id)}"))
    emit({"deleted": args.local_id}, args.json, f"deleted {args.local_id}")
    return EXIT_OK
