"""meshadmin roster publish: sign the next roster version and push it to a directory."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import trio

from common.cli.output import EXIT_OK, emit
from common.directory_transport import libp2p_transport, publish_roster
from common.files import read_file, write_atomic
from common.p2p.host import running_host
from protocol.errors import LocalProtocolError
from protocol.keys import PublicKey
from tools.authority.home import AuthorityHome, resolve_authority_dir
from tools.cli.passphrase import get_passphrase
from common.describe import iso

HOUR = 3600


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("roster", help="publish the signed roster of authorities and revocations")
    actions = parser.add_subparsers(dest="action", required=True)
    publish = actions.add_parser("publish", parents=[common], help="sign a new roster version")
    publish.add_argument("--dir", help="authority folder (or $MESHADMIN_AUTHORITY)")
    publish.add_argument("--passphrase-file")
    publish.add_argument("--valid-hours", type=int, default=7 * 24, help="roster lifetime (default 168 h)")
    publish.add_argument("--add-authority", action="append", default=[], metavar="PEER_ID",
                         help="also list this authority key (key rotation)")
    publish.add_argument("--directory", action="append", default=[], metavar="MULTIADDR",
                         help="push the roster to this directory (repeatable)")
    publish.add_argument("--out", help="also write the roster to this file")
    publish.add_argument("--json", action="store_true")
    publish.set_defaults(func=run_publish)
    push = actions.add_parser("push", parents=[common], help="push an existing roster file to a directory")
    push.add_argument("file")
    push.add_argument("--directory", action="append", required=True, metavar="MULTIADDR")
    push.set_defaults(func=run_push)


async def push_to_directories(roster: bytes, directories: list[str], timeout: float = 15.0) -> None:
    # The roster authenticates itself; the pushing peer needs no certificate.
    async with running_host(os.urandom(32), []) as host:
        for addr in directories:
            await publish_roster(libp2p_transport(host, addr, timeout=timeout), roster)


def run_publish(args: argparse.Namespace) -> int:
    if not 1 <= args.valid_hours <= 90 * 24:
        raise LocalProtocolError("--valid-hours must be between 1 and 2160")
    home = AuthorityHome(resolve_authority_dir(args.dir))
    key = home.signing_key(get_passphrase(args.passphrase_file))
    registry = home.registry()
    try:
        for peer_id in args.add_authority:
            registry.add_authority(PublicKey.from_peer_id(peer_id))
        signed = registry.next_roster(key, int(time.time()), args.valid_hours * HOUR)
    finally:
        registry.close()
    raw = signed.encode()
    if args.out:
        write_atomic(Path(args.out), raw)
    if args.directory:
        trio.run(push_to_directories, raw, args.directory)
    roster = signed.document
    emit(
        {"version": roster.version, "expires_at": iso(roster.expires_at), "revoked": sorted(roster.revoked),
         "authorities": [k.peer_id for k in roster.authorities], "pushed_to": args.directory,
         "file": args.out},
        args.json,
        f"roster v{roster.version}: {len(roster.authorities)} authority key(s), "
        f"{len(roster.revoked)} revoked, expires {iso(roster.expires_at)}"
        + (f"\npushed to {len(args.directory)} directory(ies)" if args.directory else "")
        + (f"\nwritten to {args.out}" if args.out else ""),
    )
    return EXIT_OK


def run_push(args: argparse.Namespace) -> int:
    raw = read_file(Path(args.file), "roster", max_bytes=8 * 1024 * 1024)
    trio.run(push_to_directories, raw, args.directory)
    emit({}, False, f"pushed {args.file} to {len(args.directory)} directory(ies)")
    return EXIT_OK
