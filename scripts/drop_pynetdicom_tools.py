"""Remove pynetdicom's console scripts (storescu, findscu, getscu, movescu, ...) from a virtualenv's bin/.

They have the names of dcmtk's tools, which the project, its tests and its docs use; with the virtualenv
first on PATH they would run instead, and dcmtk's command lines fail with them ("argument port: invalid int
value"). The Makefile runs this after installing the project. A script is removed only if it is pynetdicom's
(one of the distribution's console_scripts entry points, and its text names pynetdicom).

    python scripts/drop_pynetdicom_tools.py [--bin DIR]
"""

from __future__ import annotations

import argparse
import logging
import sys
import sysconfig
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

log = logging.getLogger("drop_pynetdicom_tools")


def pynetdicom_scripts() -> list[str]:
    try:
        dist = distribution("pynetdicom")
    except PackageNotFoundError:
        return []
    return sorted(ep.name for ep in dist.entry_points if ep.group == "console_scripts")


def drop(bin_dir: Path, names: list[str]) -> list[str]:
    """Remove bin_dir/NAME for each of `names` that is pynetdicom's entry point script; the names removed."""
    removed = []
    for name in names:
        path = bin_dir / name
        try:
            text = path.read_bytes()[:4096]
        except OSError:
            continue  # absent (already removed) or unreadable: leave it
        if b"pynetdicom" in text:
            path.unlink()
            removed.append(name)
    return removed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin", type=Path, default=Path(sysconfig.get_path("scripts")),
                        help="the virtualenv's bin folder (default: this interpreter's)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)  # as a report, on stdout
    removed = drop(args.bin, pynetdicom_scripts())
    if removed:
        log.info("removed pynetdicom's %s from %s (dcmtk's tools are the ones to use)", ", ".join(removed), args.bin)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
