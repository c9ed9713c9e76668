"""meshsim: simulate dicom-mesh (and the hub it replaces) at national scale, or emulate it with real nodes.

    meshsim check SCENARIO                    validate a scenario file, print what it describes
    meshsim run SCENARIO --out DIR            simulate; records, summary, manifest in DIR
    meshsim sweep SCENARIO --vary K=A,B ...   one run per combination (or the commands for a cluster)
    meshsim compare RUN RUN ...               side-by-side table (and plots with --out)
    meshsim report RUN                        Markdown or HTML report with CDF, box and time-series plots
    meshsim emulate SCENARIO --out DIR        the same workload through real meshnode processes
    meshsim validate SCENARIO                 model vs emulation: delivery-time medians side by side
    meshsim study SCENARIO --out DIR          hub vs mesh vs hybrid: paired intervals, costs, hub sensitivity
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from common.cli.output import add_common, run_cli
from simulations.commands import check_cmd, compare_cmd, emulate_cmd, report_cmd, run_cmd, sweep_cmd, validate_cmd
from simulations.commands import study_cmd


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    add_common(common)
    parser = argparse.ArgumentParser(prog="meshsim", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, parents=[common])
    sub = parser.add_subparsers(metavar="COMMAND")
    for module in (check_cmd, run_cmd, sweep_cmd, compare_cmd, report_cmd, emulate_cmd, validate_cmd, study_cmd):
        module.register(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("meshsim", build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
