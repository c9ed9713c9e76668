"""meshadmin authority init|show: the offline issuer key."""

from __future__ import annotations

import argparse
from pathlib import Path

from common.cli.output import EXIT_OK, emit
from tools.authority.home import AuthorityHome, resolve_authority_dir
from tools.cli.passphrase import get_passphrase


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("authority", help="create or show the authority (issuer) key")
    actions = parser.add_subparsers(dest="action", required=True)
    init = actions.add_parser("init", parents=[common], help="create an encrypted Ed25519 issuer key")
    init.add_argument("--dir", help="authority folder (or $MESHADMIN_AUTHORITY)")
    init.add_argument("--passphrase-file", help="read the passphrase from this file")
    init.add_argument("--json", action="store_true")
    init.set_defaults(func=run_init)
    show = actions.add_parser("show", parents=[common], help="print the authority key ID")
    show.add_argument("--dir")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=run_show)


def run_init(args: argparse.Namespace) -> int:
    path = resolve_authority_dir(args.dir)
    passphrase = get_passphrase(args.passphrase_file, confirm=True)
    home, public = AuthorityHome.create(Path(path), passphrase)
    emit(
        {"authority_key": public.peer_id, "key_file": str(home.key_path)},
        args.json,
        f"authority key created: {home.key_path} (mode 0600, encrypted)\n"
        f"authority key ID: {public.peer_id}\n"
        "give this ID to every node and directory as their trusted authority key",
    )
    return EXIT_OK


def run_show(args: argparse.Namespace) -> int:
    home = AuthorityHome(resolve_authority_dir(args.dir))
    public = home.public_key()
    emit({"authority_key": public.peer_id}, args.json, f"authority key ID: {public.peer_id}")
    return EXIT_OK
