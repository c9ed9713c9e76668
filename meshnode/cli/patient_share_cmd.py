"""meshnode patient-share create|list|show|history|revoke|unlock and meshnode upload-link create: patient links
for scripts, through the running node's control API (meshnode.node.patient_routes; the portal's Patient links
page does the same). Needs [patient_access] enabled = true."""

from __future__ import annotations

import argparse
import datetime
from typing import Any

from common.cli.output import EXIT_OK, emit
from meshnode.control.client import ControlClient
from meshnode.home import resolve_home
from meshnode.storage.node_storage import local_actor


def _actor() -> str:
    return local_actor().removeprefix("local:")


def _contacts(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--person", required=True, help="the person's name (shown to them after the code)")
    parser.add_argument("--email", required=True, help="the address the link goes to")
    parser.add_argument("--code-to", required=True, metavar="MOBILE_OR_EMAIL",
                        help="where the one-time code goes: a mobile number (+447700900123) or a second email")
    parser.add_argument("--days", type=int, default=None, help="how long the link works (default: the policy's)")
    parser.add_argument("--json", action="store_true")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("patient-share", parents=[common],
                            help="share studies with a patient or another person without a node, by a secure link")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser("create", parents=[common], help="make a share and email its link")
    create.add_argument("--study", action="append", required=True, metavar="STUDY_UID", help="a study (repeat)")
    _contacts(create)
    create.set_defaults(func=run_create)
    listing = actions.add_parser("list", parents=[common], help="the links, newest first, with their state")
    listing.add_argument("--kind", choices=["share", "upload"], default=None)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=run_list)
    for name, text in (("show", "one link with its history"), ("history", "one link with its history")):
        show = actions.add_parser(name, parents=[common], help=text)
        show.add_argument("id")
        show.add_argument("--json", action="store_true")
        show.set_defaults(func=run_history)
    revoke = actions.add_parser("revoke", parents=[common], help="end a link now (and the shares forwarded from it)")
    revoke.add_argument("id")
    revoke.add_argument("--reason", required=True)
    revoke.add_argument("--json", action="store_true")
    revoke.set_defaults(func=run_revoke)
    unlock = actions.add_parser("unlock", parents=[common],
                                help="unlock a link locked after wrong codes (check who is asking first)")
    unlock.add_argument("id")
    unlock.add_argument("--reason", required=True, help="how the person's identity was checked (kept in the history)")
    unlock.add_argument("--json", action="store_true")
    unlock.set_defaults(func=run_unlock)
    upload = sub.add_parser("upload-link", parents=[common],
                            help="let a person without a node upload images into quarantine, by a secure link")
    uploads = upload.add_subparsers(dest="action", metavar="ACTION", required=True)
    ucreate = uploads.add_parser("create", parents=[common], help="make an upload link and email it")
    _contacts(ucreate)
    ucreate.set_defaults(func=run_upload)


def _call(args: argparse.Namespace, path: str, body: dict[str, Any]) -> Any:
    return ControlClient(resolve_home(args.home)).call("POST", path, body)


def _when(t: float | None) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M") if t else "-"


def link_lines(rows: list[dict[str, Any]]) -> list[str]:
    return [f"{r['id']} {r['kind']:<6} {r['state']:<9} {r['person']} <{r['email']}> until {_when(r['expires_at'])}"
            f" by {r['created_by']}" + (f": {r['revoke_reason']}" if r["revoke_reason"] else "")
            for r in rows] or ["no links"]


def run_create(args: argparse.Namespace) -> int:
    result = _call(args, "/patient-links/create", {"kind": "share", "studies": args.study, "person": args.person,
                                                   "email": args.email, "code_to": args.code_to, "days": args.days,
                                                   "actor": _actor()})
    emit(result, args.json, f"share {result['id']} made; the link was emailed to {args.email}")
    return EXIT_OK


def run_upload(args: argparse.Namespace) -> int:
    result = _call(args, "/patient-links/create", {"kind": "upload", "person": args.person, "email": args.email,
                                                   "code_to": args.code_to, "days": args.days, "actor": _actor()})
    emit(result, args.json, f"upload link {result['id']} made; the link was emailed to {args.email}")
    return EXIT_OK


def run_list(args: argparse.Namespace) -> int:
    result = _call(args, "/patient-links", {"kind": args.kind, "actor": _actor()})
    emit(result, args.json, "\n".join(link_lines(result["links"])))
    return EXIT_OK


def run_history(args: argparse.Namespace) -> int:
    result = _call(args, "/patient-links/show", {"id": args.id, "actor": _actor()})
    lines = link_lines([result])
    lines += [f"    {_when(h['at'])} {h['action']} by {h['actor']}" + (f" from {h['client']}" if h["client"] else "")
              + (f": {h['detail']}" if h["detail"] else "") for h in result["history"]]
    emit(result, args.json, "\n".join(lines))
    return EXIT_OK


def run_revoke(args: argparse.Namespace) -> int:
    result = _call(args, "/patient-links/revoke", {"id": args.id, "reason": args.reason, "actor": _actor()})
    emit(result, args.json, f"link {args.id} revoked")
    return EXIT_OK


def run_unlock(args: argparse.Namespace) -> int:
    result = _call(args, "/patient-links/unlock", {"id": args.id, "reason": args.reason, "actor": _actor()})
    emit(result, args.json, f"link {args.id} unlocked: the person must ask for a new code")
    return EXIT_OK
