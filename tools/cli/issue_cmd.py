"""meshadmin issue: sign a node certificate."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common.cli.output import EXIT_OK, emit
from common.files import write_atomic
from protocol.certificate import ROLE_NAMES
from protocol.errors import LocalProtocolError
from protocol.keys import PublicKey
from tools.authority.home import AuthorityHome, resolve_authority_dir
from tools.cli.passphrase import get_passphrase
from common.describe import iso

DAY = 86400


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("issue", parents=[common], help="issue a node certificate")
    parser.add_argument("--dir", help="authority folder (or $MESHADMIN_AUTHORITY)")
    parser.add_argument("--passphrase-file")
    parser.add_argument("--node", required=True, help="the node's peer ID (printed by `meshnode init`)")
    parser.add_argument("--org", required=True, help="organisation code, e.g. RGT")
    parser.add_argument("--org-name", required=True, help="organisation name")
    parser.add_argument(
        "--role", action="append", required=True, choices=sorted(ROLE_NAMES), help="repeat for several roles"
    )
    parser.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    parser.add_argument("--out", required=True, help="where to write the certificate")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.days <= 3 * 365:
        raise LocalProtocolError("--days must be between 1 and 1095")
    node_key = PublicKey.from_peer_id(args.node)
    home = AuthorityHome(resolve_authority_dir(args.dir))
    out = Path(args.out)
    key = home.signing_key(get_passphrase(args.passphrase_file))
    now = int(time.time())
    registry = home.registry()
    try:
        signed = registry.issue(
            key, node_key=node_key, org_code=args.org, org_name=args.org_name,
            roles=tuple(args.role), not_before=now, not_after=now + args.days * DAY,
        )
        write_atomic(out, signed.encode())
    finally:
        registry.close()
    cert = signed.document
    emit(
        {"serial": cert.serial, "org": cert.org_code, "peer_id": cert.peer_id, "roles": list(cert.roles),
         "not_after": iso(cert.not_after), "file": str(out)},
        args.json,
        f"certificate {cert.serial} for {cert.org_code} node {cert.peer_id}\n"
        f"roles {', '.join(cert.roles)}, valid until {iso(cert.not_after)}\nwritten to {out}",
    )
    return EXIT_OK
