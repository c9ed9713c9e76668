"""meshsim collect over job-array runs: refuses missing runs, gathers rK/ folders into run-like point folders
(byte-identical to a plain run), rebuilds stale summaries; report/compare on collected points; no empty plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simulations.cli import main

SMALL = ["--set", "scenario.duration=1d", "--set", "scenario.replications=2"]


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _emit(tmp_path: Path, *vary: str) -> tuple[Path, list[list[str]]]:
    out = tmp_path / "sweep"
    commands = tmp_path / "commands.txt"
    assert main(["sweep", "five-trusts", *SMALL, *vary, "--out", str(out), "--emit-commands", str(commands)]) == 0
    return out, [line.split()[1:] for line in commands.read_text().splitlines()]


def test_collect_refuses_missing_runs_then_gathers_like_a_plain_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, lines = _emit(tmp_path, "--vary", "design.kind=hub,mesh")
    assert len(lines) == 4
    for args in lines[:3]:  # p001/r1 not run
        assert main(args) == 0
    capsys.readouterr()
    assert main(["collect", str(out)]) == 1
    err = capsys.readouterr().err
    assert "1 run(s) missing: p001/r1" in err
    assert not (out / "sweep.csv").exists() and not (out / "p000" / "summary.json").exists()  # nothing written
    # Before collect, a point holds no data: report and compare say so (no empty plots, no exit 0).
    assert main(["report", str(out / "p000")]) == 1
    assert "not a meshsim run folder" in capsys.readouterr().err
    assert main(["run", *lines[3][1:]]) == 0
    assert main(["collect", str(out)]) == 0
    for name in ("p000", "p001"):
        point = files(out / name)
        assert main(["run", str(out / name / "scenario.toml"), "--out", str(tmp_path / f"plain-{name}"),
                     "--jobs", "1", "--no-progress"]) == 0
        assert point == files(tmp_path / f"plain-{name}")  # manifest (seeds, hashes), summary, data files
    capsys.readouterr()
    assert main(["report", str(out / "p001")]) == 0
    assert main(["compare", str(out / "p000"), str(out / "p001"), "--out", str(tmp_path / "cmp")]) == 0
    assert (tmp_path / "cmp" / "compare-cdf.png").stat().st_size > 10_000


def test_collect_rebuilds_a_stale_summary_and_refuses_tampered_or_foreign_runs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, lines = _emit(tmp_path, "--vary", "design.kind=hub")
    for args in lines:
        assert main(args) == 0
    assert main(["collect", str(out)]) == 0
    good = files(out / "p000")
    # What an earlier collect wrote when only r0 was in: one replication in the point's summary.
    stale = json.loads(good["summary.json"])
    stale["replications"] = stale["replications"][:1]
    (out / "p000" / "summary.json").write_text(json.dumps(stale))
    (out / "p000" / "distributions-r1.json").unlink()
    (out / "p000" / "distributions-r2.json").write_text("{}")  # an earlier 3-replication run's (review 2 M2)
    assert main(["collect", str(out)]) == 0
    assert files(out / "p000") == good
    # A file changed after its run: refused, naming it.
    good_hub = (out / "p000" / "r1" / "hub-r1.csv").read_bytes()
    (out / "p000" / "r1" / "hub-r1.csv").write_text("time_s\n")
    capsys.readouterr()
    assert main(["collect", str(out)]) == 1
    assert "r1/hub-r1.csv: differs from the SHA-256" in capsys.readouterr().err
    (out / "p000" / "r1" / "hub-r1.csv").write_bytes(good_hub)
    # A summary that is no meshsim summary: refused with the file named, not a traceback.
    good_r1 = (out / "p000" / "r1" / "summary.json").read_bytes()
    (out / "p000" / "r1" / "summary.json").write_text('{"replications": [1, 2]}')
    capsys.readouterr()
    assert main(["collect", str(out)]) == 1
    assert "r1/summary.json: differs from the SHA-256" in capsys.readouterr().err
    (out / "p000" / "r1" / "summary.json").write_bytes(good_r1)
    # A run folder of another scenario (left from an earlier sweep into the same folder): refused.
    assert main(["run", "five-trusts", *SMALL, "--set", "scenario.seed=5", "--replication", "1", "--out",
                 str(out / "p000" / "r1"), "--jobs", "1", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["collect", str(out)]) == 1
    assert "ran a different scenario" in capsys.readouterr().err


def test_hub_only_values_do_not_run_mesh_points(tmp_path: Path) -> None:
    out, lines = _emit(tmp_path, "--vary", "design.kind=mesh,hybrid", "--vary", "hub.egress=1Gbit/s,5Gbit/s,10Gbit/s")
    points = (out / "points.csv").read_text().splitlines()
    assert points[0] == "point,design.kind,hub.egress,note"
    assert points[1:4] == ["p000,mesh,1Gbit/s,", "p001,mesh,5Gbit/s,same as p000", "p002,mesh,10Gbit/s,same as p000"]
    assert all(line.endswith(",") for line in points[4:])  # hybrid uses the hub: every point runs
    assert len(lines) == 4 * 2 and not any("/p001/" in " ".join(a) for a in lines)
    assert not (out / "p001").exists()
    for args in lines:
        assert main(args) == 0
    assert main(["collect", str(out)]) == 0
    rows = [r.split(",") for r in (out / "sweep.csv").read_text().splitlines()]
    assert rows[2][:4] == ["p001", "mesh", "5Gbit/s", "same as p000"] and rows[2][4:] == rows[1][4:]


def test_report_and_compare_refuse_a_folder_without_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "five-trusts", "--set", "scenario.duration=1d", "--set", "scenario.replications=1",
                 "--out", str(tmp_path / "run"), "--jobs", "1", "--no-progress"]) == 0
    (tmp_path / "run" / "distributions-r0.json").unlink()
    capsys.readouterr()
    assert main(["report", str(tmp_path / "run")]) == 1
    assert "distributions-r0.json: listed in" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "run"), str(tmp_path / "run"), "--out", str(tmp_path / "cmp")]) == 1
    assert "nothing to plot" in capsys.readouterr().err


def test_collect_refuses_a_well_formed_but_tampered_replication_summary(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """review 2 C1: rK/summary.json is checked against its manifest's hash like every other file."""
    out, lines = _emit(tmp_path, "--vary", "design.kind=hub")
    for args in lines:
        assert main(args) == 0
    path = out / "p000" / "r1" / "summary.json"
    data = json.loads(path.read_text())
    data["replications"][0]["success_rate"] = 0.123
    data["replications"][0]["delivery_time_s"]["all"]["p50"] = 9999.0
    path.write_text(json.dumps(data))
    capsys.readouterr()
    assert main(["collect", str(out)]) == 1
    assert "p000/r1/summary.json: differs from the SHA-256" in capsys.readouterr().err
    assert not (out / "p000" / "summary.json").exists() and not (out / "sweep.csv").exists()


def test_collect_checks_a_point_folder_without_replication_folders(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """review 2 M1: a point written directly (as a Dask sweep writes it) is accepted only when its manifest's
    scenario hash matches the point's scenario.toml and its files match their hashes."""
    out, _ = _emit(tmp_path, "--vary", "design.kind=hub")
    point = out / "p000"
    assert main(["run", str(point / "scenario.toml"), "--out", str(point), "--jobs", "1", "--no-progress"]) == 0
    assert main(["collect", str(out)]) == 0
    good = files(point)
    # Re-prepared with another scenario (--emit-commands for a cluster): the old results are stale.
    assert main(["sweep", "five-trusts", *SMALL, "--set", "scenario.seed=9", "--vary", "design.kind=hub", "--out",
                 str(out), "--emit-commands", str(tmp_path / "again.txt")]) == 0
    capsys.readouterr()
    assert main(["collect", str(out)]) == 1
    assert "p000: ran a different scenario" in capsys.readouterr().err
    # The same scenario again, but a data file changed after the run: refused naming it.
    (point / "scenario.toml").write_bytes(good["scenario.toml"])
    (point / "hub-r0.csv").write_text("time_s\n")
    capsys.readouterr()
    assert main(["collect", str(out)]) == 1
    assert "p000/hub-r0.csv: differs from the SHA-256" in capsys.readouterr().err


def test_collect_refuses_replication_folders_beyond_the_scenario(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """review 2 m4: an r2/ left by an earlier 3-replication sweep is not silently ignored."""
    out, lines = _emit(tmp_path, "--vary", "design.kind=hub")
    for args in lines:
        assert main(args) == 0
    (out / "p000" / "r2").mkdir()
    capsys.readouterr()
    assert main(["collect", str(out)]) == 1
    assert "replication folder(s) r2 beyond the scenario's 2 replication(s)" in capsys.readouterr().err


def test_collect_rechecks_same_as_notes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """review 2 m4: a "same as" note is accepted only when both points are mesh and differ only in hub.*."""
    out, lines = _emit(tmp_path, "--vary", "design.kind=mesh,hub")
    for args in lines:
        assert main(args) == 0
    rows = (out / "points.csv").read_text().splitlines()
    rows[0] += ",note"
    rows[1] += ","
    rows[2] += ",same as p000"  # a hand edit: the hub point's row would copy the mesh point's figures
    (out / "points.csv").write_text("\n".join(rows) + "\n")
    capsys.readouterr()
    assert main(["collect", str(out)]) == 1
    assert "p001 is marked the same as p000" in capsys.readouterr().err


def test_duplicate_vary_keys_and_values_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """review 2 M6."""
    for vary in (["--vary", "design.kind=hub,mesh", "--vary", "design.kind=mesh"],
                 ["--vary", "hub.max_concurrent=4,4"], ["--vary", "hub.max_concurrent=4, 4.0"]):
        capsys.readouterr()
        assert main(["sweep", "five-trusts", *SMALL, *vary, "--out", str(tmp_path / "dup"),
                     "--emit-commands", str(tmp_path / "c.txt")]) == 1
        err = capsys.readouterr().err
        assert "given twice" in err, err
    assert not (tmp_path / "dup").exists()
