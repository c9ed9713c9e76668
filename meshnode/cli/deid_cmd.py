"""meshnode deid held | release | refuse | export-relink: research shares held for a human, and re-identification.

    meshnode deid held                          research shares waiting (instances at pixel risk)
    meshnode deid release ID [--with-risky --reason TEXT]  send it without (default) or with the risky instances
    meshnode deid refuse ID --reason TEXT       refuse it
    meshnode deid export-relink --project P     the project's pseudonym -> original table (audited)

Each decision names the person taking it (--user, default: the local account); it is audited.
"""

from __future__ import annotations

import argparse
import csv
import io
from typing import Any

from common.cli.output import EXIT_OK, emit
from meshnode.control.client import ControlClient
from meshnode.home import resolve_home


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("deid", parents=[common], help="research shares held for a decision; re-link export")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    held = actions.add_parser("held", parents=[common], help="research shares waiting for a human decision")
    held.add_argument("--json", action="store_true")
    held.set_defaults(func=run_held)
    release = actions.add_parser("release", parents=[common], help="send a held research share")
    release.add_argument("share", help="the research share's ID (meshnode deid held)")
    release.add_argument("--with-risky", action="store_true",
                         help="include the instances at pixel risk (someone checked their pixels)")
    release.add_argument("--reason", default="", help="what was checked (required with --with-risky)")
    release.add_argument("--user", help="who decides (default: the local account)")
    release.add_argument("--json", action="store_true")
    release.set_defaults(func=run_release)
    refuse = actions.add_parser("refuse", parents=[common], help="refuse a held research share")
    refuse.add_argument("share")
    refuse.add_argument("--reason", required=True)
    refuse.add_argument("--user", help="who decides (default: the local account)")
    refuse.add_argument("--json", action="store_true")
    refuse.set_defaults(func=run_refuse)
    export = actions.add_parser("export-relink", parents=[common],
                                help="a research project's pseudonym -> original table, for re-identification")
    export.add_argument("--project", required=True)
    export.add_argument("--user", help="who asks (default: the local account)")
    export.add_argument("--json", action="store_true")
    export.set_defaults(func=run_export)


def _client(args: argparse.Namespace) -> ControlClient:
    return ControlClient(resolve_home(args.home))


def _body(args: argparse.Namespace, **values: object) -> dict[str, object]:
    return {**values, **({"user": args.user} if args.user else {})}


def held_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for r in rows:
        lines.append(f"{r['research_share']}  project {r['project']}  study {r['study_uid']}  to "
                     f"{', '.join(r['to'])}  since {r['created_at']}: {len(r['held'])} instance(s) at pixel risk")
        lines += [f"    #{v['n']} {v['modality'] or '?'} {v['sop_class']} series {v['series_number']}"
                  f" {v['series_description']!r} instance {v['instance_number']}: {v['reason']}"
                  for v in r.get("review", [])] or [f"    {h[0]}: {h[1]}" for h in r["held"]]
    return lines or ["no research share is held"]


def run_held(args: argparse.Namespace) -> int:
    rows = _client(args).call("GET", "/deid/held")
    emit(rows, args.json, "\n".join(held_lines(rows)))
    return EXIT_OK


def run_release(args: argparse.Namespace) -> int:
    result = _client(args).call("POST", "/deid/release", _body(args, share=args.share, include_risky=args.with_risky,
                                                              reason=args.reason))
    emit(result, args.json, f"research share {result['research_share']} sent as manifest {result['manifest_id']} "
                            f"({result['instances']} instance(s))")
    return EXIT_OK


def run_refuse(args: argparse.Namespace) -> int:
    result = _client(args).call("POST", "/deid/refuse", _body(args, share=args.share, reason=args.reason))
    emit(result, args.json, f"research share {result['research_share']} refused")
    return EXIT_OK


def _cell(value: object) -> str:
    """A CSV cell a spreadsheet will not run: a leading = + - @ (or tab, CR) gets a quote (OWASP CSV injection)."""
    text = str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def run_export(args: argparse.Namespace) -> int:
    rows = _client(args).call("POST", "/deid/export-relink", _body(args, project=args.project))
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["kind", "pseudonym", "original"])
    writer.writerows([_cell(r["kind"]), _cell(r["pseudonym"]), _cell(r["original"])] for r in rows)
    emit(rows, args.json, out.getvalue())
    return EXIT_OK
