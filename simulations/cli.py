"""meshsim: the researchers' simulator. Its subcommands arrive with the simulation issue."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="meshsim",
        description="Simulate dicom-mesh at national scale. Not yet available in this release: "
        "run, sweep, compare, report and emulate arrive with the simulation harness.",
    )
    parser.parse_args(argv)
    sys.stderr.write("meshsim: no simulation commands are available in this release yet\n")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
