"""meshsim's commands: run, determinism across processes, sweep (and cluster commands), compare, report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from simulations.cli import main

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--set", "scenario.duration=2d", "--set", "scenario.replications=2"]


def meshsim(*args: str, seed: str = "0") -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONHASHSEED=seed)
    return subprocess.run([sys.executable, "-m", "simulations.cli", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300, check=False)


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_same_seed_byte_identical_different_seed_different(tmp_path: Path) -> None:
    """Two separate processes (different hash seeds, two workers each, two time slices) write the same bytes."""
    # the drain reaches past the file's last fault (4d13h): a fault after the end of the run is refused
    args = ["run", "five-trusts-faults", *SMALL, "--set", "engine.drain=3d", "--set", "engine.time_slices=2",
            "--set", "engine.slice_overlap=6h",
            "--jobs", "2", "--no-progress"]
    first = meshsim(*args, "--out", str(tmp_path / "a"), seed="1")
    second = meshsim(*args, "--out", str(tmp_path / "b"), seed="4242")
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    a, b = files(tmp_path / "a"), files(tmp_path / "b")
    assert {"manifest.json", "summary.json", "transfers-r0.csv", "transfers-r1.csv", "timeseries-r0.csv",
            "hub-r0.csv", "distributions-r1.json", "scenario.toml"} <= set(a)
    assert a == b
    other = meshsim(*args, "--set", "scenario.seed=99", "--out", str(tmp_path / "c"))
    assert other.returncode == 0, other.stderr
    c = files(tmp_path / "c")
    assert c["transfers-r0.csv"] != a["transfers-r0.csv"] and c["summary.json"] != a["summary.json"]
    manifest = json.loads(a["manifest.json"])
    assert manifest["seeds"][1]["replication"] == 1 and manifest["aggregation"]["time_slices"] == 2
    assert manifest["files"]["transfers-r0.csv"] and len(manifest["scenario"]["sha256"]) == 64


def test_replications_differ_and_streams_are_independent(tmp_path: Path) -> None:
    assert main(["run", "five-trusts", *SMALL, "--out", str(tmp_path / "x"), "--jobs", "1", "--no-progress"]) == 0
    assert (tmp_path / "x" / "transfers-r0.csv").read_bytes() != (tmp_path / "x" / "transfers-r1.csv").read_bytes()
    # A fault added to the scenario changes no study drawn (the workload stream is separate).
    extra = ["--set", 'faults=[{kind = "node-failure", targets = "RGT", start = "1d", duration = "1h"}]']
    assert main(["run", "five-trusts", *SMALL, *extra, "--out", str(tmp_path / "y"), "--jobs", "1",
                 "--no-progress"]) == 0

    def arrivals(p: Path) -> list[tuple[str, str, str]]:
        lines = p.read_text().splitlines()[1:]
        return [tuple(line.split(",")[i] for i in (0, 1, 7)) for line in lines]  # type: ignore[misc]

    assert arrivals(tmp_path / "x" / "transfers-r0.csv") == arrivals(tmp_path / "y" / "transfers-r0.csv")


def test_bad_scenario_is_refused_before_anything_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    text = (ROOT / "simulations" / "scenarios" / "five-trusts.toml").read_text()
    bad.write_text(text.replace('to = "tele"', 'to = "NOPE1"'))
    out = tmp_path / "out"
    assert main(["run", str(bad), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "workload.referrals[1].to: no organisation or group named 'NOPE1'" in err
    assert not out.exists()
    assert main(["run", "five-trusts", "--set", "hub.egress=-3Gbit/s", "--out", str(out)]) == 1
    assert "hub.egress: negative bandwidth" in capsys.readouterr().err and not out.exists()
    assert main(["run", "no-such-scenario", "--out", str(out)]) == 1
    assert "no such scenario file" in capsys.readouterr().err
    assert main(["run", "five-trusts", "--replication", "7", "--out", str(out)]) == 1
    assert "replication 7 is outside" in capsys.readouterr().err


def test_sweep_compare_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sweep"
    assert main(["sweep", "five-trusts", *SMALL, "--vary", "design.kind=hub,mesh", "--out", str(out), "--jobs", "2",
                 "--no-progress"]) == 0
    table = (out / "sweep.csv").read_text().splitlines()
    assert table[0].startswith("point,design.kind,success_rate") and len(table) == 3
    capsys.readouterr()
    assert main(["compare", str(out / "p000"), str(out / "p001"), "--out", str(tmp_path / "cmp")]) == 0
    text = capsys.readouterr().out
    assert "five-trusts/hub (p000)" in text and "five-trusts/mesh (p001)" in text
    assert (tmp_path / "cmp" / "compare-cdf.png").stat().st_size > 10_000
    for fmt in ("md", "html"):
        assert main(["report", str(out / "p001"), "--format", fmt]) == 0
        report = (out / "p001" / f"report.{fmt}").read_text()
        assert "report-cdf.png" in report and "Key metrics" in report
    for png in ("report-cdf.png", "report-box.png", "report-timeseries.png"):
        assert (out / "p001" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["report", str(tmp_path)]) == 1
    assert "not a meshsim run folder" in capsys.readouterr().err


def test_sweep_emits_one_command_per_run_for_a_cluster(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    commands = tmp_path / "commands.txt"
    assert main(["sweep", "five-trusts", *SMALL, "--vary", "design.kind=hub,mesh,hybrid", "--out", str(out),
                 "--emit-commands", str(commands)]) == 0
    lines = commands.read_text().splitlines()
    assert len(lines) == 3 * 2
    assert not (out / "p000" / "summary.json").exists()
    for line in lines:  # what each node of the cluster would run
        args = line.split()
        assert args[:2] == ["meshsim", "run"]
        assert main(args[1:]) == 0
    assert main(["collect", str(out)]) == 0
    summary = json.loads((out / "p002" / "summary.json").read_text())
    assert summary["design"] == "hybrid" and [r["replication"] for r in summary["replications"]] == [0, 1]
    assert len((out / "sweep.csv").read_text().splitlines()) == 4


def test_check_prints_what_the_scenario_describes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "nhs-england", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["organisations"] == 212 and data["studies_per_year"] == 12_000_000
