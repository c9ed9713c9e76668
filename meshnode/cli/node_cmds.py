"""meshnode run|share|inbox|outbox|redeliver|fetch|recall|peers|status: the running node."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import signal
import sys
import time
from typing import Any

import trio

from common.cli.output import EXIT_OK, emit
from meshnode.node.forward_reports import forward_text
from meshnode.control.client import ControlClient
from meshnode.home import NodeHome, resolve_home
from meshnode.node import systemd
from protocol.deid import DeidOption, PixelRiskPolicy
from protocol.manifest import Priority, Purpose

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    run = sub.add_parser("run", parents=[common], help="run the node until SIGTERM / Ctrl-C")
    run.set_defaults(func=run_node)
    share = sub.add_parser("share", parents=[common], help="share a study with other organisations")
    share.add_argument("study")
    share.add_argument("--to", required=True, help="recipient organisation codes, comma separated")
    share.add_argument("--priority", choices=[p.value for p in Priority], default="routine")
    share.add_argument("--purpose", choices=[p.value for p in Purpose], default="care")
    share.add_argument("--deid-project", help="de-identify (a research share always does): the research project,"
                                              " whose keyed pseudonyms the copy gets")
    share.add_argument("--deid-option", action="append", default=[], choices=[o.value for o in DeidOption],
                       help="a PS3.15 Annex E option (repeat for several)")
    share.add_argument("--safe-private", action="append", default=[],
                       help="a private attribute retain_safe_private keeps: 'gggg,xxee,Private Creator'")
    share.add_argument("--pixel-risk", choices=[p.value for p in PixelRiskPolicy],
                       help="instances that may carry burned-in identifiers: hold (default) or refuse")
    share.add_argument("--include-unreconciled", action="store_true",
                       help="share although patient reconciliation holds instances of it back (received, the "
                            "sender's patient identity, no confirmed local record)")
    share.add_argument("--origin", help="a received study holding several organisations' instances (one reused "
                       "another's Study UID): the organisation whose instances to share onward")
    share.add_argument("--lifetime-days", type=int,
                       help="how long the recipients may fetch it (default 30; not for a de-identified share)")
    share.add_argument("--attention", metavar="NAME", help="the person at the receiving organisation it is for "
                       "(their user name or email address there; at most 128 printable characters): signed into "
                       "the manifest, shown in their inbox and used for the arrival email")
    share.add_argument("--note", metavar="TEXT", help="a note for the recipients (at most 1,000 characters; "
                       "signed into the manifest, shown in their inbox, never put in an email)")
    share.add_argument("--json", action="store_true")
    share.set_defaults(func=run_share)
    for name, helptext in (("inbox", "studies received or arriving"), ("outbox", "studies sent, per recipient")):
        p = sub.add_parser(name, parents=[common], help=helptext)
        p.add_argument("--watch", action="store_true", help="keep showing live progress")
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=run_box, box=name)
    fetch = sub.add_parser("fetch", parents=[common], help="fetch an announced manifest (when auto-fetch is off)")
    fetch.add_argument("manifest")
    fetch.set_defaults(func=run_fetch)
    recall = sub.add_parser("recall", parents=[common], help="withdraw a manifest this node sent")
    recall.add_argument("manifest")
    recall.add_argument("--reason", default="withdrawn by sender")
    recall.add_argument("--with-research-copies", action="store_true",
                        help="also recall the de-identified research copies made from this study (a correction)")
    recall.set_defaults(func=run_recall)
    redeliver = sub.add_parser("redeliver", parents=[common],
                               help="try announcements, recalls and receipts that failed for good again")
    redeliver.add_argument("manifest", nargs="?", help="only this manifest's deliveries (default: all)")
    redeliver.add_argument("--json", action="store_true")
    redeliver.set_defaults(func=run_redeliver)
    for name, helptext in (("peers", "peers this node knows"), ("status", "the running node's state")):
        p = sub.add_parser(name, parents=[common], help=helptext)
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=run_simple, route=name)


async def _run(home: NodeHome) -> None:
    async with trio.open_nursery() as nursery:
        from meshnode.node.health import node_health
        from meshnode.node.runtime import Node  # libp2p: only when the node runs (keeps other commands quick)

        node = Node(home)
        addrs = await nursery.start(node.run)
        sys.stdout.write(json.dumps({"listening": addrs}) + "\n")
        sys.stdout.flush()
        systemd.notify("READY=1")
        interval = systemd.watchdog_interval()
        if interval is not None:
            nursery.start_soon(systemd.watchdog, lambda: node_health(node.ctx), interval)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("signal %d: stopping", signum)
                nursery.cancel_scope.cancel()
                break


def run_node(args: argparse.Namespace) -> int:
    from meshnode.node.runtime import Node  # noqa: F401  (the node's imports, before freezing the heap)

    # Everything imported so far (libp2p, pydicom, pynetdicom: over 100,000 objects) lives as long as
    # the process. Left to the garbage collector, every full collection walks it all, and collections
    # come often in a node (each frame, block and request allocates): decoding a 300-instance manifest
    # took 80 ms instead of 20. Frozen objects are never scanned; what the node creates from here on
    # is collected as usual.
    gc.freeze()
    trio.run(_run, NodeHome(resolve_home(args.home)))
    return EXIT_OK


def client(args: argparse.Namespace) -> ControlClient:
    return ControlClient(resolve_home(args.home))


def run_share(args: argparse.Namespace) -> int:
    orgs = [o.strip() for o in args.to.split(",") if o.strip()]
    body: dict[str, object] = {"study": args.study, "to": orgs, "priority": args.priority, "purpose": args.purpose}
    if args.include_unreconciled:
        body["include_unreconciled"] = True
    if args.origin:
        body["origin"] = args.origin
    if args.lifetime_days is not None:
        body["lifetime_days"] = args.lifetime_days
    if args.attention:
        body["attention"] = args.attention
    if args.note:
        body["note"] = args.note
    if args.deid_project or args.deid_option or args.safe_private or args.pixel_risk:
        deid: dict[str, object] = {"project": args.deid_project or "", **{o: True for o in args.deid_option}}
        if args.safe_private:
            deid["safe_private"] = args.safe_private
        if args.pixel_risk:
            deid["pixel_risk"] = args.pixel_risk
        body["deid"] = deid
    result = client(args).call("POST", "/share", body)
    if "research_share" in result:
        held = result["state"] == "held"
        emit(result, args.json,
             f"research share {result['research_share']} HELD: {len(result['held'])} instance(s) may carry burned-in"
             " identifiers; decide with `meshnode deid release|refuse`" if held else
             f"de-identified copy shared as manifest {result['manifest_id']} ({result['instances']} instances,"
             f" {result['bytes']:,} bytes) with {', '.join(orgs)}, {args.priority} (research share "
             f"{result['research_share']})")
        return EXIT_OK
    emit(result, args.json, f"shared as manifest {result['manifest_id']} ({result['instances']} instances, "
                            f"{result['bytes']:,} bytes) with {', '.join(orgs)}, {args.priority}")
    return EXIT_OK


def _bar(done: int, total: int, width: int = 24) -> str:
    fraction = done / total if total else 1.0
    return f"[{'#' * int(width * fraction)}{'.' * (width - int(width * fraction))}] {100 * fraction:5.1f}%"


def _inbox_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for r in rows:
        served = ", ".join(f"{p[:12]}..{p[-4:]}={n}" for p, n in sorted(r["served_by"].items())) or "-"
        onward = ", ".join(f"{org}={d['blocks']}" for org, d in sorted(r.get("served_to", {}).items()))
        lines.append(f"{r['manifest_id'][:20]}.. {r['sender_org']:<6} {r['priority']:<7} {r['state']:<9} "
                     f"{_bar(r['blocks_done'], r['blocks_total'])} {r['instances']} inst  served by {served}"
                     + (f"  served to {onward}" if onward else ""))
        if r.get("attention"):
            lines.append(f"    for the attention of {r['attention']}")
        if r.get("note"):
            lines += [f"    note: {line}" for line in r["note"].split("\n")]
        if r.get("failure"):
            lines.append(f"    failed: {r['failure']}")
        if r.get("held_detail"):  # instances held in the conflict queue on arrival (meshnode.storage.conflicts)
            lines.append(f"    {r['held_detail']}")
        for pacs, f in sorted(r.get("forward", {}).items()):
            error = f"  last error: {f['last_error']}" if f["last_error"] and f["state"] != "forwarded" else ""
            held = f.get("held", 0)
            lines.append(f"    -> PACS {pacs}: {f['state']} {f['sent']}/{f['total']}"
                         + (f", {held} held (`meshnode conflicts`)" if held else "")
                         + (f", {f['failed'] - held} failed" if f["failed"] - held else "") + error)
    return lines or ["inbox empty"]


def _outbox_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for r in rows:
        per_org = ", ".join(f"{org}: {d['status']}" + (" (receipt verified)" if d["receipt_verified"] else "")
                            + f", {d['served']['blocks']} block(s) served"
                            + (f", {forward_text(d['pacs_forward'])}" if d.get("pacs_forward") else "")
                            for org, d in sorted(r["recipients"].items()))
        lines.append(f"{r['manifest_id'][:20]}.. {r['state']:<9} {per_org}")
    return lines or ["outbox empty"]


def run_box(args: argparse.Namespace) -> int:
    c = client(args)
    render = _inbox_lines if args.box == "inbox" else _outbox_lines
    while True:
        rows = c.call("GET", f"/{args.box}")
        if args.json:
            emit(rows, True, "")
        else:
            if args.watch and sys.stdout.isatty():
                sys.stdout.write("\x1b[2J\x1b[H")
            sys.stdout.write("\n".join(render(rows)) + "\n")
            sys.stdout.flush()
        if not args.watch:
            return EXIT_OK
        time.sleep(0.5)


def run_fetch(args: argparse.Namespace) -> int:
    result = client(args).call("POST", "/fetch", {"manifest": args.manifest})
    emit(result, False, f"fetching {result['fetching']}")
    return EXIT_OK


def run_recall(args: argparse.Namespace) -> int:
    result = client(args).call("POST", "/recall", {"manifest": args.manifest, "reason": args.reason,
                                                   "research_copies": args.with_research_copies})
    copies = result.get("research_copies") or []
    note = "" if not copies else (f"; {len(copies)} research cop(ies) recalled too" if args.with_research_copies
                                  else f"; {len(copies)} research cop(ies) of this study stay shared"
                                       " (--with-research-copies recalls them)")
    emit(result, False, f"recalled {result['recalled']}; recipients are being told{note}")
    return EXIT_OK


def run_redeliver(args: argparse.Namespace) -> int:
    body = {"manifest": args.manifest} if args.manifest else {}
    result = client(args).call("POST", "/outbox/retry", body)
    emit(result, args.json, f"{result['retried']} failed delivery(ies) queued again")
    return EXIT_OK


def run_simple(args: argparse.Namespace) -> int:
    result = client(args).call("GET", f"/{args.route}")
    emit(result, args.json, json.dumps(result, indent=2, sort_keys=True))
    return EXIT_OK
