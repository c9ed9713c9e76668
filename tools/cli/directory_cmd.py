"""meshadmin directory init|install-cert|serve: the identity directory."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

import trio

from common.cli.output import EXIT_OK, emit
from common.files import read_file
from protocol.keys import PublicKey
from tools.directory.home import DirectoryConfig, DirectoryHome
from tools.directory.server import run_directory

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("directory", help="run the identity directory")
    actions = parser.add_subparsers(dest="action", required=True)
    init = actions.add_parser("init", parents=[common], help="create a directory folder and key")
    init.add_argument("--home", required=True)
    init.add_argument("--authority-key", action="append", required=True, metavar="PEER_ID",
                      help="trusted authority key ID (repeatable)")
    init.add_argument("--listen", action="append", metavar="MULTIADDR",
                      help="listen address (default /ip4/127.0.0.1/tcp/4000)")
    init.add_argument("--json", action="store_true")
    init.set_defaults(func=run_init)
    install = actions.add_parser("install-cert", parents=[common], help="install the directory's certificate")
    install.add_argument("--home", required=True)
    install.add_argument("file")
    install.set_defaults(func=run_install)
    serve = actions.add_parser("serve", parents=[common], help="serve until SIGTERM / Ctrl-C")
    serve.add_argument("--home", required=True)
    serve.add_argument("--listen", action="append", metavar="MULTIADDR", help="override the configured addresses")
    serve.set_defaults(func=run_serve)


def run_init(args: argparse.Namespace) -> int:
    config = DirectoryConfig(
        listen=tuple(args.listen or ["/ip4/127.0.0.1/tcp/4000"]),
        authority_keys=tuple(PublicKey.from_peer_id(k) for k in args.authority_key),
    )
    home, key = DirectoryHome.create(Path(args.home), config)
    emit(
        {"peer_id": key.peer_id, "home": str(home.path)},
        args.json,
        f"directory created in {home.path}\npeer ID: {key.peer_id}\n"
        f"next: meshadmin issue --node {key.peer_id} --role directory ... then "
        f"meshadmin directory install-cert --home {home.path} FILE",
    )
    return EXIT_OK


def run_install(args: argparse.Namespace) -> int:
    home = DirectoryHome(Path(args.home))
    signed = home.install_certificate(read_file(Path(args.file), "certificate", max_bytes=8192))
    emit({}, False, f"installed certificate {signed.document.serial} for directory {signed.document.peer_id}")
    return EXIT_OK


async def _serve(home: DirectoryHome, listen: tuple[str, ...] | None) -> None:
    async with trio.open_nursery() as nursery:
        addrs = await nursery.start(run_directory, home, listen)
        # One JSON line on stdout: how scripts learn the (possibly port-0) address.
        sys.stdout.write(json.dumps({"listening": addrs}) + "\n")
        sys.stdout.flush()
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("signal %d: shutting down", signum)
                nursery.cancel_scope.cancel()
                break


def run_serve(args: argparse.Namespace) -> int:
    home = DirectoryHome(Path(args.home))
    trio.run(_serve, home, tuple(args.listen) if args.listen else None)
    return EXIT_OK
