"""meshadmin inspect FILE: decode and verify any signed document."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common.cli.output import EXIT_OK, emit
from common.files import read_file
from protocol.certificate import Certificate
from protocol.document import open_document
from protocol.keys import PublicKey
from protocol.roster import Roster, verify_roster
from protocol.signing import MAX_DOCUMENT_BYTES
from protocol.trust import check_certificate
from common.describe import describe, open_any, render_text


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("inspect", parents=[common], help="decode, verify and print a signed document")
    parser.add_argument("file")
    parser.add_argument("--authority-key", action="append", default=[], metavar="PEER_ID",
                        help="also check a roster is signed by this authority")
    parser.add_argument("--roster", help="also check a certificate against this roster (now)")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    data = read_file(Path(args.file), "document", max_bytes=MAX_DOCUMENT_BYTES)
    signed = open_any(data)
    view = describe(signed)
    now = time.time()
    if args.authority_key and isinstance(signed.document, Roster):
        verify_roster(data, [PublicKey.from_peer_id(k) for k in args.authority_key], now)
        view["trusted"] = "signed by a trusted authority, valid now"
    if args.roster and isinstance(signed.document, Certificate):
        roster = open_document(read_file(Path(args.roster), "roster", max_bytes=MAX_DOCUMENT_BYTES), Roster)
        check_certificate(open_document(data, Certificate), roster.document, now)
        view["trusted"] = f"valid now under roster v{roster.document.version}"
    emit(view, args.json, render_text(view))
    return EXIT_OK
