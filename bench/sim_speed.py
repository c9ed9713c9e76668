"""meshsim speed: one simulated year of nhs-england.toml, mesh and hub, wall time, CPU time and peak RSS.

Target (issues 6, 18): <= 60 s for a year on 2 cores, a verdict per design
computed from this run (bench/summary.py), and the ratio to the target
printed per design. Each run is `meshsim run` as a child process (its time
slices in parallel on every core); peak RSS is that of the largest process
of the run. On a shared machine the wall time includes other people's work:
the CPU time of the run (user + system, every process of it) divided by the
cores used is also printed, as what the run would take on idle cores.

    python bench/sim_speed.py                # a year, mesh and hub (several minutes)
    python bench/sim_speed.py --days 14      # shorter; also prints the per-year extrapolation
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import print_table, run_measured  # noqa: E402
from bench.summary import Verdict, at_most, record  # noqa: E402

TARGET_S = 60.0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--designs", default="mesh,hub")
    parser.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    rows = []
    verdicts: list[Verdict] = []
    for design in args.designs.split(","):
        with tempfile.TemporaryDirectory(prefix="meshsim-bench-") as tmp:
            cmd = [sys.executable, "-m", "simulations.cli", "run", "nhs-england", "--set", f"design.kind={design}",
                   "--set", f"scenario.duration={args.days}d", "--out", tmp, "--jobs", str(args.jobs),
                   "--no-progress", "--json"]
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            seconds, rss_mb, out = run_measured(cmd, timeout=6 * 3600)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        summary = json.loads(out)
        rep = summary["replications"][0]
        studies = rep["engine"]["studies_simulated"]
        per_year = seconds * 365 / args.days
        idle_per_year = cpu / args.jobs * 365 / args.days
        hub = rep.get("hub") or {}
        rows.append([design, args.days, f"{studies:,}", f"{rep['transfers']:,}", f"{seconds:.1f}", f"{cpu:.1f}",
                     f"{per_year:.0f}", f"{1e6 * cpu / max(1, studies):.1f}", f"{rss_mb:.0f}",
                     f"{per_year / TARGET_S:.2f}x", f"{idle_per_year / TARGET_S:.2f}x",
                     f"{rep['success_rate']:.4f}", f"{rep['delivery_time_s']['all']['p50']:.1f}",
                     f"{rep['delivery_time_s']['all']['p95']:.1f}",
                     f"{rep['peak_images_per_s']:.0f}"])
        scaled = "" if args.days == 365 else f" (scaled from {args.days} days)"
        verdicts.append(at_most(f"meshsim: a simulated year of nhs-england, {design}, <= {TARGET_S:.0f} s{scaled}",
                                per_year, TARGET_S, "s per year"))
        print(f"{design}: {seconds:.1f} s wall ({per_year / TARGET_S:.2f}x the {TARGET_S:.0f} s goal per year), "
              f"{cpu:.1f} s CPU ({idle_per_year / TARGET_S:.2f}x on {args.jobs} idle core(s)), "
              f"peak RSS {rss_mb:.0f} MB, {studies:,} studies", flush=True)
    print_table(f"meshsim: nhs-england.toml, {args.days} simulated day(s), {args.jobs} core(s)",
                ["design", "days", "studies", "transfers", "wall s", "CPU s", "s per year", "core-us/study",
                 "peak RSS MB", f"wall vs {TARGET_S:.0f} s", f"CPU/{args.jobs} vs {TARGET_S:.0f} s", "success", "p50 s",
                 "p95 s",
                 "peak images/s"], rows)
    record(*verdicts)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
