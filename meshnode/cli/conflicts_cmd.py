"""meshnode conflicts [list] | conflicts decide ID DECISION: the conflict queue (same SOP Instance UID, other bytes)."""

from __future__ import annotations

import argparse
from typing import Any

from common.cli.output import EXIT_OK, emit
from meshnode.control.client import ControlClient
from meshnode.home import resolve_home
from meshnode.storage.node_storage import local_actor
from protocol.conflict import ConflictState, Decision


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("conflicts", parents=[common],
                            help="instances that came with a SOP Instance UID held here with other bytes")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    listing = actions.add_parser("list", parents=[common], help="the conflicts waiting for a decision (default)")
    listing.add_argument("--state", default="pending", choices=["all", *(s.value for s in ConflictState)])
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=run_list)
    decide = actions.add_parser("decide", parents=[common], help="decide one conflict (audited with your name)")
    decide.add_argument("id", type=int, help="the conflict's number (`meshnode conflicts list`)")
    decide.add_argument("decision", choices=[d.value for d in Decision],
                        help="replace: the newcomer supersedes the stored version; keep-both: the newcomer is "
                             "kept under a new UID; discard: the newcomer is dropped")
    decide.add_argument("--existing-sha256", default="", metavar="SHA256",
                        help="the stored version's sha256 you decided on (from the listing): refused if it "
                             "changed since")
    decide.add_argument("--json", action="store_true")
    decide.set_defaults(func=run_decide)
    parser.add_argument("--state", default="pending", choices=["all", *(s.value for s in ConflictState)])
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=run_list)


def conflict_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for r in rows:
        decided = (f", {r['state']} by {r['decided_by']}" + (f" (new UID {r['new_uid']})" if r["new_uid"] else "")
                   if r["state"] != "pending" else "")
        lines.append(f"#{r['id']} {r['kind']} study {r['study_uid']} instance {r['sop_instance_uid']} "
                     f"from {r['source'] or '-'}" + (f" on route {r['route']}" if r["route"] else "")
                     + f" (policy {r['policy']}{decided})")
        lines.append(f"    stored sha256 {r['existing_sha256']}")
        lines.append(f"    newcomer sha256 {r['newcomer_sha256']}")
    return lines or ["no conflicts"]


def run_list(args: argparse.Namespace) -> int:
    result = ControlClient(resolve_home(args.home)).call("POST", "/conflicts", {"state": args.state})
    emit(result, args.json, "\n".join(conflict_lines(result)))
    return EXIT_OK


def run_decide(args: argparse.Namespace) -> int:
    result = ControlClient(resolve_home(args.home)).call(
        "POST", "/conflicts/decide", {"id": args.id, "decision": args.decision,
                                      "actor": local_actor().removeprefix("local:"),
                                      "existing_sha256": args.existing_sha256})
    emit(result, args.json, "\n".join(conflict_lines([result])))
    return EXIT_OK
