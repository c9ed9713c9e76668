"""meshadmin: the admins' tool (authority, certificates, roster, directory, inspection)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from common.cli.output import add_common, run_cli
from tools.cli import authority_cmd, directory_cmd, inspect_cmd, issue_cmd, revoke_cmd, roster_cmd


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    add_common(common)
    parser = argparse.ArgumentParser(
        prog="meshadmin", parents=[common],
        description="Issue and revoke dicom-mesh node certificates, publish rosters, run the directory.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (authority_cmd, issue_cmd, revoke_cmd, roster_cmd, directory_cmd, inspect_cmd):
        module.register(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("meshadmin", build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
