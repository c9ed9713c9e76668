"""meshnode reconcile list|match|reject: received studies waiting for their patient to be matched (running node).

A study whose patient could not be matched to a local record with confidence (no NHS number, an invalid
one, demographics that disagree, several or no local records) is not forwarded to the PACS until someone
matches it to a local record (from the lookup table, or entered here) or rejects it.
"""

from __future__ import annotations

import argparse
from typing import Any

from common.cli.output import EXIT_OK, emit
from meshnode.control.client import ControlClient
from meshnode.gateway.patient_table import SEXES
from meshnode.home import resolve_home
from meshnode.storage.node_storage import local_actor


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("reconcile", help="received studies waiting for a patient match before the PACS")
    actions = parser.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", parents=[common], help="what waits for a decision")
    listing.add_argument("--all", action="store_true", help="decided ones too")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=run_list)
    match = actions.add_parser("match", parents=[common], help="forward a waiting study under a local record")
    match.add_argument("manifest")
    match.add_argument("local_id", help="the local patient ID (a record of `meshnode patients list`)")
    match.add_argument("--new", action="store_true",
                       help="a record not in the table, given with --issuer and --nhs-number (and demographics)")
    match.add_argument("--issuer", default="")
    match.add_argument("--nhs-number", default="")
    match.add_argument("--name", default="")
    match.add_argument("--birth-date", default="")
    match.add_argument("--sex", default="", choices=[s for s in SEXES if s] + [""])
    match.add_argument("--override-nhs-mismatch", metavar="REASON", default="",
                       help="match although the record's NHS number is not the study's (the reason is audited)")
    match.add_argument("--json", action="store_true")
    match.set_defaults(func=run_match)
    reject = actions.add_parser("reject", parents=[common], help="do not forward a waiting study")
    reject.add_argument("manifest")
    reject.add_argument("--reason", default="")
    reject.add_argument("--json", action="store_true")
    reject.set_defaults(func=run_reject)


def _actor() -> str:
    return local_actor().removeprefix("local:")


def queue_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for r in rows:
        a = r["arriving"]
        line = (f"{r['manifest']}  from {r['sender_org']}  {r['state']}  {r['reason']}"
                + (f" ({r['detail']})" if r["detail"] else "")
                + f"\n    arrived as {a['patient_id']} ({a['issuer'] or 'no issuer'}) {a['name']} {a['birth_date']} "
                f"{a['sex']}; NHS number {a['nhs_number'] or '-'}; study {r['study_uid']}")
        if r["local"]:
            line += f"\n    matched to {r['local']['local_id']} ({r['local']['issuer']}) by {r['decided_by']}"
        elif r["decided_by"]:
            line += f"\n    {r['state']} by {r['decided_by']}"
        lines.append(line)
    return lines


def run_list(args: argparse.Namespace) -> int:
    rows = ControlClient(resolve_home(args.home)).call("POST", "/reconcile/list", {"all": bool(args.all)})
    emit(rows, args.json, "\n".join(queue_lines(rows)) or "nothing waits for a patient match")
    return EXIT_OK


def run_match(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"manifest": args.manifest, "action": "match", "actor": _actor()}
    if args.new:
        body["record"] = {"local_id": args.local_id, "issuer": args.issuer, "nhs_number": args.nhs_number,
                          "name": args.name, "birth_date": args.birth_date, "sex": args.sex}
    else:
        body["local_id"] = args.local_id
    if args.override_nhs_mismatch:
        body["override_reason"] = args.override_nhs_mismatch
    row = ControlClient(resolve_home(args.home)).call("POST", "/reconcile/decide", body)
    emit(row, args.json, f"matched to {row['local']['local_id']}: forwarded to the PACS under it")
    return EXIT_OK


def run_reject(args: argparse.Namespace) -> int:
    row = ControlClient(resolve_home(args.home)).call(
        "POST", "/reconcile/decide", {"manifest": args.manifest, "action": "reject", "reason": args.reason,
                                      "actor": _actor()})
    emit(row, args.json, "rejected: not forwarded to the PACS")
    return EXIT_OK
