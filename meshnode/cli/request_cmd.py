"""meshnode request send|list|show|approve|decline, and meshnode priors ORG --nhs N: study requests to and
from other organisations, and prior-study queries (meshnode.node.request_routes; the portal's requests page
does the same)."""

from __future__ import annotations

import argparse
from typing import Any

from common.cli.output import EXIT_OK, emit
from meshnode.control.client import ControlClient
from meshnode.home import resolve_home
from meshnode.storage.node_storage import local_actor
from protocol.manifest import Priority, Purpose
from protocol.study_request import RequestState


def _actor() -> str:
    return local_actor().removeprefix("local:")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("request", parents=[common], help="ask another organisation for a patient's studies, "
                            "or answer what others asked this one for")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    send = actions.add_parser("send", parents=[common], help="sign and send a study request to ORG")
    send.add_argument("holder", metavar="ORG", help="the organisation that holds the studies")
    send.add_argument("--nhs", default="", help="the patient's NHS number")
    send.add_argument("--patient-id", default="", help="the holder's local patient ID, if known")
    send.add_argument("--from", dest="date_from", default="", metavar="YYYYMMDD", help="studies from this date")
    send.add_argument("--to", dest="date_to", default="", metavar="YYYYMMDD", help="studies up to this date")
    send.add_argument("--modality", default="", help="CT, MR, ...")
    send.add_argument("--reason", required=True, help="why the studies are needed (the holder sees it)")
    send.add_argument("--priority", default="routine", choices=[p.value for p in Priority])
    send.add_argument("--purpose", default="care", choices=[p.value for p in Purpose])
    send.add_argument("--expires-in", type=int, default=7, metavar="DAYS",
                      help="days the holder has to answer (1-30; default 7)")
    send.add_argument("--json", action="store_true")
    send.set_defaults(func=run_send)
    listing = actions.add_parser("list", parents=[common], help="requests sent and received")
    listing.add_argument("--direction", choices=["incoming", "outgoing"], default=None)
    listing.add_argument("--state", choices=[s.value for s in RequestState], default=None)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=run_list)
    show = actions.add_parser("show", parents=[common], help="one request (incoming: the local studies it matches)")
    show.add_argument("id")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=run_show)
    approve = actions.add_parser("approve", parents=[common],
                                 help="share the chosen studies with the requester (audited with your name)")
    approve.add_argument("id")
    approve.add_argument("--study", action="append", required=True, metavar="STUDY_UID",
                         help="a study to send (repeat; `meshnode request show ID` lists the matching ones)")
    approve.add_argument("--json", action="store_true")
    approve.set_defaults(func=run_approve)
    decline = actions.add_parser("decline", parents=[common], help="decline a request with a reason")
    decline.add_argument("id")
    decline.add_argument("--reason", required=True)
    decline.add_argument("--json", action="store_true")
    decline.set_defaults(func=run_decline)
    priors = sub.add_parser("priors", parents=[common],
                            help="ask ORG which studies it holds for an NHS number (study-level metadata only)")
    priors.add_argument("org", metavar="ORG")
    priors.add_argument("--nhs", required=True, help="the patient's NHS number")
    priors.add_argument("--json", action="store_true")
    priors.set_defaults(func=run_priors)


def request_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for r in rows:
        other = r["holder_org"] if r["direction"] == "outgoing" else r["requester_org"]
        arrow = "to" if r["direction"] == "outgoing" else "from"
        patient = r["nhs_number"] or r["patient_id"]
        lines.append(f"{r['request_id']} {r['state']:<8} {arrow} {other} {r['priority']} {r['purpose']} "
                     f"patient {patient} by {r['requested_by']}"
                     + (f" ({len(r['manifests'])} share(s))" if r["manifests"] else "")
                     + (f": {r['decision_reason']}" if r["decision_reason"] else ""))
    return lines or ["no requests"]


def _call(args: argparse.Namespace, path: str, body: dict[str, Any]) -> Any:
    return ControlClient(resolve_home(args.home)).call("POST", path, body)


def run_send(args: argparse.Namespace) -> int:
    result = _call(args, "/requests/send", {
        "holder": args.holder, "nhs_number": args.nhs, "patient_id": args.patient_id, "date_from": args.date_from,
        "date_to": args.date_to, "modality": args.modality, "reason": args.reason, "priority": args.priority,
        "purpose": args.purpose, "lifetime_days": args.expires_in, "actor": _actor()})
    emit(result, args.json, f"request {result['request_id']} sent to {result['holder_org']} (pending)")
    return EXIT_OK


def run_list(args: argparse.Namespace) -> int:
    result = _call(args, "/requests", {"direction": args.direction, "state": args.state})
    emit(result, args.json, "\n".join(request_lines(result)))
    return EXIT_OK


def run_show(args: argparse.Namespace) -> int:
    result = _call(args, "/requests/show", {"id": args.id})
    lines = request_lines([result])
    lines.append(f"    reason: {result['reason']}")
    for s in result.get("matching", []):
        lines.append(f"    matches {s['study_uid']} {s['study_date']} {','.join(s['modalities'])} "
                     f"{s['description']} ({s['series']} series, {s['instances']} instances)")
    emit(result, args.json, "\n".join(lines))
    return EXIT_OK


def run_approve(args: argparse.Namespace) -> int:
    result = _call(args, "/requests/approve", {"id": args.id, "studies": args.study, "actor": _actor()})
    emit(result, args.json, f"request {result['request_id']} approved: {len(result['manifests'])} share(s)")
    return EXIT_OK


def run_decline(args: argparse.Namespace) -> int:
    result = _call(args, "/requests/decline", {"id": args.id, "reason": args.reason, "actor": _actor()})
    emit(result, args.json, f"request {result['request_id']} declined")
    return EXIT_OK


def run_priors(args: argparse.Namespace) -> int:
    result = _call(args, "/priors", {"org": args.org, "nhs_number": args.nhs, "actor": _actor()})
    lines = [f"{s['study_uid']} {s['study_date']} {','.join(s['modalities'])} {s['description']} "
             f"({s['series']} series, {s['instances']} instances)" for s in result["studies"]]
    if result["truncated"]:
        lines.append("(more studies held: only the newest are listed)")
    emit(result, args.json, "\n".join(lines) or f"{args.org} holds no studies for this NHS number")
    return EXIT_OK
