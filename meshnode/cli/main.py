"""meshnode: run and operate an organisation's dicom-mesh node."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from meshnode.cli import (
    audit_cmd,
    certificate_cmd,
    config_cmd,
    deid_cmd,
    conflicts_cmd,
    directory_cmd,
    gateway_cmd,
    generate_cmd,
    init_cmd,
    node_cmds,
    patient_share_cmd,
    patients_cmd,
    reconcile_cmd,
    request_cmd,
    storage_cmds,
    users_cmd,
)
from common.cli.output import add_common, run_cli
from meshnode.home import HOME_ENV


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    add_common(common)
    common.add_argument("--home", help=f"node folder (default: ${HOME_ENV})")
    parser = argparse.ArgumentParser(
        prog="meshnode", description="An organisation's dicom-mesh node."
    )
    add_common(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (init_cmd, certificate_cmd, config_cmd, directory_cmd, node_cmds, gateway_cmd, storage_cmds, audit_cmd,
                   generate_cmd, users_cmd, patients_cmd, reconcile_cmd, deid_cmd, conflicts_cmd,
                   request_cmd, patient_share_cmd):
        module.register(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("meshnode", build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
