"""meshnode init: create a node folder with its key and a commented configuration."""

from __future__ import annotations

import argparse

from common.cli.output import EXIT_OK, emit
from meshnode.config import DEFAULT_LISTEN, NodeConfig
from meshnode.home import NodeHome, resolve_home
from protocol.keys import PublicKey


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("init", parents=[common], help="create a node folder and key")
    parser.add_argument("--org", required=True, help="your organisation code, e.g. RGT")
    parser.add_argument("--authority-key", action="append", default=[], metavar="PEER_ID",
                        help="trusted authority key ID (repeatable)")
    parser.add_argument("--directory", default="", metavar="MULTIADDR", help="the directory's address")
    parser.add_argument("--listen", action="append", metavar="MULTIADDR", help="listen address (repeatable)")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path = resolve_home(args.home)
    config = NodeConfig(
        org=args.org,
        listen=tuple(args.listen or DEFAULT_LISTEN),
        directory=args.directory,
        authority_keys=tuple(PublicKey.from_peer_id(k) for k in args.authority_key),
    )
    home = NodeHome.create(path, config)
    key = home.signing_key()
    emit(
        {"peer_id": key.peer_id, "public_key": key.public_key.raw.hex(), "home": str(path), "org": args.org},
        args.json,
        f"node created in {path}\n"
        f"peer ID:    {key.peer_id}\n"
        f"public key: {key.public_key.raw.hex()}\n"
        f"ask your admin for a certificate: meshadmin issue --node {key.peer_id} --org {args.org} ...\n"
        f"then: meshnode certificate install --home {path} FILE",
    )
    return EXIT_OK
