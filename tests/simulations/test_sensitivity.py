"""The hub sensitivity sweep's fixes from review 2: a capped run leaves out what falls after it (M3), says what
it runs and shows progress, runs once per distinct scenario (M7), is keyed by the code (m2), labels a capped
point honestly and keeps the run's own values on the grid (m3), and refuses bad --jobs (m1)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from simulations import outputs, sensitivity
from simulations.cli import main
from simulations.scenario.overrides import apply
from simulations.scenario.parse import load_scenario

SMALL = ["--set", "workload.studies_per_year=10000", "--set", "scenario.replications=1", "--jobs", "1",
         "--no-progress"]


def test_a_capped_sweep_of_a_long_run_with_late_faults_leaves_them_out(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """review 2 M3: five-trusts-faults over 5 days has faults after day 2; the 2-day sweep leaves them out."""
    run = tmp_path / "hubf"
    assert main(["run", "five-trusts-faults", *SMALL, "--set", "design.kind=hub", "--set", "scenario.duration=5d",
                 "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["report", str(run), "--sensitivity-duration", "2d", "--jobs", "2"]) == 0
    err = capsys.readouterr().err
    assert "15 hub runs of 2d" in err and "use --no-sensitivity to skip" in err  # said up front
    assert "hub sensitivity: 15 point(s)" in err  # the progress bar
    text = (run / "report.md").read_text()
    scenario = load_scenario(run / "scenario.toml")
    horizon = 2 * 86400 + scenario.engine.drain
    late = sum(1 for f in scenario.faults if f.start >= horizon)
    assert late >= 1
    assert f"{late} fault(s) after day {horizon / 86400:g} left out" in text
    assert "(run's values)" in text and "(run)" not in text  # capped: the point is not the run itself


def test_capped_scenario_clips_joins_and_leaves_and_drops_late_attackers() -> None:
    base = load_scenario(Path("simulations/scenarios/five-trusts.toml"))
    long = apply(base, [("scenario.duration", "10d"), ("groups[0].joins", "8d"), ("groups[1].leaves", "9d")])
    short, notes = sensitivity.capped(long, 2 * 86400.0)
    assert short.duration == 2 * 86400.0
    assert short.groups[0].joins < short.duration and short.groups[1].leaves == float("inf")
    assert any("join(s) after day 2" in n for n in notes) and any("leave(s)" in n for n in notes)
    assert sensitivity.capped(long, 20 * 86400.0) == (long, ())


def test_compare_runs_the_sweep_once_per_scenario_and_the_cache_is_keyed_by_the_code(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """review 2 M7 and m2."""
    a = tmp_path / "a"
    assert main(["run", "five-trusts", *SMALL, "--set", "design.kind=hub", "--set", "scenario.duration=1d",
                 "--set", "hub.processing_delay=45s", "--out", str(a)]) == 0
    shutil.copytree(a, tmp_path / "b")
    capsys.readouterr()
    assert main(["compare", str(a), str(tmp_path / "b"), "--jobs", "2"]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("hub sensitivity for") == 1 and "hub sensitivity for a, b:" in captured.err
    assert captured.out.count("Hub sensitivity, a, b (hub)") == 1
    # The run's own processing delay (45 s) is not on the default grid: it is added, and marked.
    assert "18 hub runs of 1d" in captured.err and "45 (run)" in captured.out
    cache = json.loads((a / sensitivity.FILE).read_text())
    assert cache["provenance"]["source_sha256"] == outputs.source_hash()
    assert (tmp_path / "b" / sensitivity.FILE).read_bytes() == (a / sensitivity.FILE).read_bytes()
    scenario = load_scenario(a / "scenario.toml")
    key = sensitivity.cache_key(scenario, 86400.0, sensitivity.delays_for(scenario), sensitivity.CONCURRENCY_FACTORS)
    assert key == sensitivity.cache_key(scenario, 7 * 86400.0, sensitivity.delays_for(scenario),
                                        sensitivity.CONCURRENCY_FACTORS)  # keyed on the effective length
    monkeypatch.setattr(outputs, "source_hash", lambda: "another engine")
    assert sensitivity.cache_key(scenario, 86400.0, sensitivity.delays_for(scenario),
                                 sensitivity.CONCURRENCY_FACTORS) != key


@pytest.mark.parametrize("command", [["report", "RUN"], ["compare", "RUN"], ["sweep", "five-trusts", "--vary",
                                     "design.kind=hub", "--out", "OUT"], ["study", "five-trusts", "--out", "OUT"]])
def test_jobs_below_one_is_refused(command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """review 2 m1."""
    command = [str(tmp_path / c) if c in ("RUN", "OUT") else c for c in command]
    for bad in ("0", "-2", "x"):
        with pytest.raises(SystemExit) as exc:
            main([*command, "--jobs", bad])
        assert exc.value.code == 2
        assert "--jobs" in capsys.readouterr().err


def test_scheduler_timeout_must_be_finite_and_positive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """review 2 m1."""
    for bad in ("nan", "inf", "-1", "0"):
        with pytest.raises(SystemExit) as exc:
            main(["sweep", "five-trusts", "--vary", "design.kind=hub", "--out", str(tmp_path / "o"), "--scheduler",
                  "tcp://127.0.0.1:1", "--scheduler-timeout", bad])
        assert exc.value.code == 2
        assert "--scheduler-timeout: must be a finite number of seconds above 0" in capsys.readouterr().err
        assert not (tmp_path / "o").exists()
