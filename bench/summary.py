"""bench/summary.py: the targets of the speed work, one row each, collected across the bench scripts.

Each bench script computes its verdicts (never prints a fixed one) and calls `record`; when the
environment variable MESH_BENCH_SUMMARY names a file, the rows are appended to it as JSON lines.
`make bench` sets it, runs every script, then prints one table of all targets:

    .venv/bin/python bench/summary.py FILE
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import print_table  # noqa: E402

ENV = "MESH_BENCH_SUMMARY"


@dataclass(frozen=True)
class Verdict:
    """One target: what was asked, what this run measured, the peer measured in the same run."""

    target: str  # e.g. "node -> node, durable, receipted >= 2x Orthanc /peers/store"
    figure: str  # e.g. "252 MB/s"
    peer: str  # e.g. "Orthanc 126 MB/s" ("" when the target is absolute)
    ratio: str  # e.g. "2.00x" ("" when there is no peer)
    met: bool


def at_least(target: str, value: float, bound: float, unit: str, *, peer: str = "",
             peer_value: float | None = None, digits: int = 1) -> Verdict:
    """A target `value >= bound`; `peer_value` (same unit) gives the printed ratio; `digits` after the point
    (enough that a figure just under its bound does not print as the bound)."""
    ratio = f"{value / peer_value:.2f}x" if peer_value else ""
    return Verdict(target, f"{value:,.{digits}f} {unit}", peer, ratio, value >= bound)


def at_most(target: str, value: float, bound: float, unit: str, *, digits: int = 1) -> Verdict:
    return Verdict(target, f"{value:,.{digits}f} {unit}", "", "", value <= bound)


def record(*verdicts: Verdict) -> None:
    """Print the verdicts and, under `make bench`, append them to the summary file."""
    rows = [[v.target, v.figure, v.peer, v.ratio, "met" if v.met else "MISSED"] for v in verdicts]
    print_table("Targets", ["target", "this run", "peer (same run)", "ratio", "verdict"], rows)
    path = os.environ.get(ENV)
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            for v in verdicts:
                fh.write(json.dumps(asdict(v)) + "\n")


def main() -> None:
    path = Path(sys.argv[1])
    verdicts = [Verdict(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
    rows = [[v.target, v.figure, v.peer, v.ratio, "met" if v.met else "MISSED"] for v in verdicts]
    print_table("Summary: every speed target, this run", ["target", "this run", "peer (same run)", "ratio",
                                                          "verdict"], rows)
    missed = sum(not v.met for v in verdicts)
    print(f"\n{len(verdicts) - missed} of {len(verdicts)} targets met")


if __name__ == "__main__":
    main()
