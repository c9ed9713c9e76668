"""meshnode config set|check: change node.toml keys, checked by the node's reader before they are written."""

from __future__ import annotations

import argparse

from common.cli.output import EXIT_OK, emit
from meshnode.home import NodeHome, resolve_home
from protocol.config_reader import parse_value
from protocol.errors import ConfigError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("config", help="change or check node.toml")
    actions = parser.add_subparsers(dest="action", required=True)
    set_ = actions.add_parser(
        "set", parents=[common], help="set node.toml keys (comments are kept; nothing is written if invalid)",
        description="Set dotted keys of node.toml, e.g. `limits.upload_mb_per_s=30 dimse.enabled=true "
                    "http.listen=127.0.0.1:8731`. A VALUE is read as a TOML value (30, true, \"text\", [1, 2]) "
                    "or else as text. The whole file is checked before it is written; restart the node to apply.")
    set_.add_argument("assignments", nargs="+", metavar="KEY=VALUE")
    set_.add_argument("--json", action="store_true")
    set_.set_defaults(func=run_set)
    check = actions.add_parser("check", parents=[common], help="read node.toml as the node does; say what is wrong")
    check.add_argument("--json", action="store_true")
    check.set_defaults(func=run_check)


def parse_assignments(texts: list[str]) -> dict[str, object]:
    values: dict[str, object] = {}
    for text in texts:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{text!r}: expected KEY=VALUE, e.g. limits.upload_mb_per_s=30")
        values[key.strip()] = parse_value(value.strip())
    return values


def run_set(args: argparse.Namespace) -> int:
    home = NodeHome(resolve_home(args.home))
    values = parse_assignments(args.assignments)
    home.set_config(values)
    emit({"config": str(home.config_path), "set": values}, args.json,
         f"{home.config_path}: set " + ", ".join(args.assignments) + " (restart the node to apply)")
    return EXIT_OK


def run_check(args: argparse.Namespace) -> int:
    home = NodeHome(resolve_home(args.home))
    config = home.config()
    emit({"config": str(home.config_path), "ok": True, "org": config.org}, args.json,
         f"{home.config_path}: OK (org {config.org})")
    return EXIT_OK
