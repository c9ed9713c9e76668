"""meshadmin revoke SERIAL and meshadmin list: revocation and the issued-certificate list."""

from __future__ import annotations

import argparse
import time

from common.cli.output import EXIT_OK, emit
from tools.authority.home import AuthorityHome, resolve_authority_dir
from common.describe import iso


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("revoke", parents=[common], help="revoke a certificate (takes effect with the next roster)")
    parser.add_argument("serial")
    parser.add_argument("--dir", help="authority folder (or $MESHADMIN_AUTHORITY)")
    parser.add_argument("--reason", default="", help="recorded in the authority's registry")
    parser.add_argument("--force", action="store_true", help="revoke a serial this authority did not issue")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=run_revoke)
    listing = sub.add_parser("list", parents=[common], help="list issued certificates and their status")
    listing.add_argument("--dir")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=run_list)


def run_revoke(args: argparse.Namespace) -> int:
    registry = AuthorityHome(resolve_authority_dir(args.dir)).registry()
    try:
        new = registry.revoke(args.serial, int(time.time()), args.reason, allow_unknown=args.force)
    finally:
        registry.close()
    emit(
        {"serial": args.serial, "newly_revoked": new},
        args.json,
        (f"revoked {args.serial}" if new else f"{args.serial} was already revoked")
        + "; publish a roster (`meshadmin roster publish`) for it to take effect",
    )
    return EXIT_OK


def run_list(args: argparse.Namespace) -> int:
    registry = AuthorityHome(resolve_authority_dir(args.dir)).registry()
    try:
        certs = registry.certificates()
    finally:
        registry.close()
    rows = [
        {"serial": c.serial, "org": c.org_code, "org_name": c.org_name, "peer_id": c.peer_id,
         "roles": list(c.roles), "not_after": iso(c.not_after), "revoked": c.revoked}
        for c in certs
    ]
    text = "\n".join(
        f"{c.serial}  {c.org_code:<8} {'REVOKED' if c.revoked else 'valid  '}  until {iso(c.not_after)}  {c.peer_id}"
        for c in certs
    ) or "no certificates issued yet"
    emit(rows, args.json, text)
    return EXIT_OK
