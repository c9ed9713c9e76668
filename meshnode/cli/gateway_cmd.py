"""meshnode gateway [status] | gateway retry: the running node's hospital gateway (DIMSE, routes, forwarding)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from common.cli.output import EXIT_OK, emit
from meshnode.control.client import ControlClient
from meshnode.home import resolve_home


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("gateway", parents=[common],
                            help="the DIMSE gateway: listening AE, routes, pending announcements, PACS forwarding")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    status = actions.add_parser("status", parents=[common], help="what the gateway is doing (the default)")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=run_status)
    retry = actions.add_parser("retry", parents=[common], help="queue instances the PACS refused again")
    retry.add_argument("manifest", nargs="?", help="only this received manifest (default: all)")
    retry.add_argument("--pacs", help="only this [[pacs]] destination (its name)")
    retry.add_argument("--json", action="store_true")
    retry.set_defaults(func=run_retry)
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=run_status)


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    delta = ms / 1000 - time.time()
    return f"in {delta:.0f} s" if delta > 0 else "now"


def _new(a: dict[str, Any]) -> str:
    """How many of a pending study's instances arrived since its last revision (when it had one)."""
    new, revision = a.get("new_instances"), a.get("revision", 0)
    return f" ({new} new since revision {revision})" if revision and new is not None else ""


def status_lines(s: dict[str, Any]) -> list[str]:
    dimse = s.get("dimse")
    lines = [f"DIMSE: {dimse['ae_title']} on {dimse['host']}:{dimse['port']}" if dimse else "DIMSE: off ([dimse] enabled = false)"]
    intake = s["intake"]
    lines.append(f"intake since start: {intake['stored']} stored ({intake['bytes']:,} bytes), "
                 f"{intake['duplicates']} duplicate(s), {intake['refused']} refused"
                 + (f", {intake['held']} held as UID conflict(s)" if intake.get("held") else ""))
    for c in s.get("conflicts", []):  # same SOP Instance UID, other bytes: waiting for `meshnode conflicts decide`
        lines.append(f"CONFLICT #{c['id']} ({c['kind']}): study {c['study_uid']} instance {c['sop_instance_uid']}: "
                     f"stored sha256 {c['existing_sha256'][:16]}.., newcomer sha256 {c['newcomer_sha256'][:16]}.. "
                     f"from {c['source'] or '-'}; decide with `meshnode conflicts decide {c['id']} ...`")
    recon = s.get("reconciliation") or {}
    if recon.get("waiting") or recon.get("arrived"):
        lines.append(f"RECONCILIATION: {recon.get('waiting', 0)} received stud(ies) waiting for a patient match "
                     f"(not forwarded; decide with `meshnode reconcile`)"
                     + (f", {recon['arrived']} being decided" if recon.get("arrived") else ""))
    for r in s.get("research_held", []):
        lines.append(f"RESEARCH SHARE HELD: {r['share_id']} of study {r['study_uid']} ({r['project']}): "
                     "instances at pixel risk; decide with `meshnode deid release|refuse`")
    for r in s["routes"]:
        lines.append(f"route {r['name']}: AE {r['called_ae'] or '-'} -> {', '.join(r['to'])} "
                     f"({r['priority']}, {r['purpose']}, quiet {r['quiet_period_seconds']} s)")
    for a in s["pending_announcements"]:
        error = f", last error: {a['last_error']}" if a["last_error"] else ""
        if a.get("state") == "failed":  # given up after the policy's attempts: a new instance queues it again
            lines.append(f"NOT ANNOUNCED: study {a['study_uid']} on {a['route']}: {a['instances']} instance(s), "
                         f"given up after {a['attempts']} attempt(s){error}")
            continue
        lines.append(f"pending: study {a['study_uid']} on {a['route']}: {a['instances']} instance(s){_new(a)}, "
                     f"announced {_when(a['announce_at_ms'])}{error}")
    for name, d in sorted(s["forward"].items()):
        items = ", ".join(f"{n} {state}" + (" (for `meshnode conflicts`)" if state == "held" else "")
                          for state, n in sorted(d["items"].items())) or "nothing queued"
        down = f"; UNREACHABLE: {d['unreachable']}" if d["unreachable"] else ""
        lines.append(f"PACS {name} ({d['ae_title']}@{d['host']}:{d['port']}): {items}{down}")
    return lines


def run_status(args: argparse.Namespace) -> int:
    result = ControlClient(resolve_home(args.home)).call("GET", "/gateway")
    emit(result, args.json, "\n".join(status_lines(result)))
    return EXIT_OK


def run_retry(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {}
    if args.manifest:
        body["manifest"] = args.manifest
    if args.pacs:
        body["destination"] = args.pacs
    result = ControlClient(resolve_home(args.home)).call("POST", "/forward/retry", body)
    emit(result, args.json, f"{result['requeued']} instance(s) queued for the PACS again")
    return EXIT_OK
