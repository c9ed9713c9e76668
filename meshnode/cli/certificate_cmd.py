"""meshnode certificate install|show: the node's certificate from the admins."""

from __future__ import annotations

import argparse
from pathlib import Path

from common.cli.output import EXIT_OK, emit
from common.files import read_file
from meshnode.home import NodeHome, resolve_home
from common.describe import describe, render_text


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("certificate", help="install or show this node's certificate")
    actions = parser.add_subparsers(dest="action", required=True)
    install = actions.add_parser("install", parents=[common], help="install a certificate issued for this node")
    install.add_argument("file")
    install.add_argument("--json", action="store_true")
    install.set_defaults(func=run_install)
    show = actions.add_parser("show", parents=[common], help="show the installed certificate")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=run_show)


def run_install(args: argparse.Namespace) -> int:
    home = NodeHome(resolve_home(args.home))
    signed = home.install_certificate(read_file(Path(args.file), "certificate", max_bytes=8192))
    view = describe(signed)
    emit(view, args.json, "installed:\n" + render_text(view))
    return EXIT_OK


def run_show(args: argparse.Namespace) -> int:
    view = describe(NodeHome(resolve_home(args.home)).certificate())
    emit(view, args.json, render_text(view))
    return EXIT_OK
