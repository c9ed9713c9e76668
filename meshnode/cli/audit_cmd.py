"""meshnode audit verify|export|acknowledge: the hash-chained, signed audit log."""

from __future__ import annotations

import argparse
import json
import sys

from common.cli.output import EXIT_ERROR, EXIT_OK, emit
from meshnode.cli.storage_cmds import open_storage
from common.describe import iso
from meshnode.storage.audit import AuditEntry, AuditEvent, EventCode
from meshnode.storage.node_storage import local_actor


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("audit", help="verify or export the audit log")
    actions = parser.add_subparsers(dest="action", required=True)
    verify = actions.add_parser("verify", parents=[common], help="check the hash chain; say which entry is broken")
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(func=run_verify)
    ack = actions.add_parser("acknowledge", parents=[common],
                             help="accept the log as it is after a truncation or rewrite alert (audited, signed)")
    ack.add_argument("--reason", required=True, help="why (incident or ticket); recorded in the audit log")
    ack.add_argument("--json", action="store_true")
    ack.set_defaults(func=run_acknowledge)
    export = actions.add_parser("export", parents=[common], help="print the log (JSON lines with --json), for a SIEM")
    export.add_argument("--json", action="store_true", help="one JSON object per line")
    export.add_argument("--since", type=int, default=0, metavar="SEQ", help="only entries after this sequence number")
    export.set_defaults(func=run_export)


def entry_view(e: AuditEntry) -> dict[str, object]:
    return {
        "seq": e.seq, "time": iso(e.at_ms // 1000), "at_ms": e.at_ms, "event_code": int(e.event.code),
        "event": e.event.code.name, "action": e.event.action, "outcome": int(e.event.outcome),
        "actor": e.event.actor, "actor_org": e.event.actor_org, "study": e.event.study,
        "manifest_id": e.event.manifest_id, "detail": e.event.detail, "prev_hash": e.prev_hash.hex(),
        "hash": e.hash.hex(),
    }


def run_verify(args: argparse.Namespace) -> int:
    with open_storage(args) as storage:
        count, problems = storage.verify_audit()
        spooled = storage.metadata.audit_spool_size()
    data = {"entries": count, "ok": not problems, "spooled_for_repository": spooled,
            "problems": [{"seq": p.seq, "problem": p.problem} for p in problems]}
    text = (f"audit chain intact: {count} entries, signed" if not problems else
            f"audit chain BROKEN ({len(problems)} problem(s) in {count} entries):\n"
            + "\n".join(f"  entry {p.seq}: {p.problem}" for p in problems))
    if spooled:
        text += f"\n{spooled} alert(s) and checkpoint(s) waiting for the audit repository"
    emit(data, args.json, text)
    return EXIT_OK if not problems else EXIT_ERROR


def run_acknowledge(args: argparse.Namespace) -> int:
    with open_storage(args) as storage:
        done = storage.acknowledge_audit(args.reason, local_actor())
    data = {"head": done.head_seq, "rebase_from": done.rebase_from, "rebase_to": done.rebase_to,
            "remaining": [{"seq": p.seq, "problem": p.problem} for p in done.remaining]}
    text = (f"audit alert acknowledged: entries {done.rebase_from}..{done.rebase_to} accepted as they are; "
            f"head now entry {done.head_seq}")
    if done.remaining:
        text += "\nstill broken (an acknowledgement cannot excuse these):\n" + "\n".join(
            f"  entry {p.seq}: {p.problem}" for p in done.remaining)
    emit(data, args.json, text)
    return EXIT_OK if not done.remaining else EXIT_ERROR


def run_export(args: argparse.Namespace) -> int:
    with open_storage(args) as storage:
        entries = [e for e in storage.metadata.audit_entries() if e.seq > args.since]
        storage.audit(AuditEvent(EventCode.AUDIT_LOG_USED, "audit-export", actor=local_actor(),
                                 detail=f"{len(entries)} entries exported"))
    for e in entries:
        if args.json:
            sys.stdout.write(json.dumps(entry_view(e), sort_keys=True) + "\n")
        else:
            sys.stdout.write(f"{e.seq:>6} {iso(e.at_ms // 1000)} {int(e.event.code)} {e.event.code.name:<22} "
                             f"{e.event.action:<20} outcome={int(e.event.outcome)} {e.event.actor} "
                             f"{e.event.study} {e.event.detail}\n")
    return EXIT_OK
