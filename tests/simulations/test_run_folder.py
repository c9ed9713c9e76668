"""A run written into a folder that holds an earlier run's outputs (review 2 M2): the earlier run's
per-replication files go (they would be plotted with the new ones), and plots read only what the manifest lists."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from simulations import plots
from simulations.cli import main

SMALL = ["--set", "scenario.duration=1d", "--set", "workload.studies_per_year=5000", "--jobs", "1", "--no-progress"]


def _run(out: Path, replications: int, *extra: str) -> None:
    assert main(["run", "five-trusts", *SMALL, "--set", f"scenario.replications={replications}", *extra,
                 "--out", str(out)]) == 0


def _delivered(run_dir: Path) -> int:
    summary = json.loads((run_dir / "summary.json").read_text())
    return sum(int(r["delivered"]) for r in summary["replications"])


def _plotted(run_dir: Path) -> int:
    dist = plots.load_distributions(run_dir)
    return sum(sum(h) for h in dist.delivery.values())


def test_a_rerun_with_fewer_replications_removes_the_earlier_runs_files(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _run(out, 3, "--set", "design.kind=hub")
    assert (out / "distributions-r2.json").exists() and (out / "hub-r2.csv").exists()
    (out / "sensitivity.json").write_text(json.dumps({"scenario_sha256": "another"}))
    _run(out, 1, "--set", "design.kind=hub", "--set", "scenario.seed=7")
    listed = set(json.loads((out / "manifest.json").read_text())["files"])
    left = {p.name for p in out.iterdir()} - listed - {"manifest.json", "scenario.toml"}
    assert left == set(), left
    assert _plotted(out) == _delivered(out)


def test_plots_read_only_the_distributions_the_manifest_lists(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _run(out, 1)
    shutil.copy(out / "distributions-r0.json", out / "distributions-r5.json")  # not this run's
    assert _plotted(out) == _delivered(out)
