"""The hub calibration, the hub sensitivity sweep and `meshsim study` (issue 18)."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest

from simulations import calibration, sensitivity, study
from simulations.cli import main
from simulations.commands.common import resolve_scenario_path
from simulations.scenario.parse import load_scenario
from simulations.summary import lookup

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "researchers.md"
SMALL = ["--set", "scenario.duration=2d", "--set", "scenario.replications=2", "--jobs", "1", "--no-progress"]


def _section(title: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index(title)
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else len(text)]


def test_nhs_england_matches_the_calibration_stated_in_the_doc() -> None:
    """docs/researchers.md, "Calibrating the hub", states these figures of nhs-england.toml; they may not drift."""
    doc = _section("### Calibrating the hub")
    s = load_scenario(resolve_scenario_path("nhs-england"))
    fig = calibration.workload_figures(s, days=14)
    # the scenario's settings, as the doc's table gives them
    assert s.workload.studies_per_year == calibration.PUBLIC_STUDIES_PER_YEAR == 12_000_000
    assert "| `studies_per_year` | 12,000,000 |" in doc
    assert s.hub.ingress == s.hub.egress == 10e9 / 8 and "| `hub.ingress`, `hub.egress` | 10 Gbit/s |" in doc
    assert s.hub.max_concurrent == 300 and "| `hub.max_concurrent` | 300 |" in doc
    assert s.hub.processing_delay == 60.0 and "| `hub.processing_delay` | 60 s |" in doc
    # what its workload implies, at the bounds the doc states
    assert 75e6 <= fig.images_per_week <= 83e6 and "75-83 million images a week" in doc
    assert 330 <= fig.images_per_study <= 360 and "330-360 images per study" in doc
    assert 124 <= fig.mean_images_per_s <= 137 and "mean 124-137 images/s" in doc
    assert 380 <= fig.peak_images_per_s_5min <= 460 and "380-460 images/s in 5-minute bins" in doc
    assert 540 <= fig.peak_images_per_s_1min <= 640 and "540-640 in 1-minute bins" in doc
    assert 2.9 <= fig.peak_to_mean_5min <= 3.5 and "peak-to-mean ratio 2.9-3.5" in doc
    need = fig.hub_egress_for(calibration.PUBLIC_PEAK_IMAGES_PER_S) * 8 / 1e9
    assert 1.7 <= need <= 2.2 and "1.7-2.2 Gbit/s" in doc
    assert need * 4 < s.hub.egress * 8 / 1e9  # the doc: "more than four times the public peak"
    concurrency = fig.hub_concurrency_for(calibration.PUBLIC_PEAK_IMAGES_PER_S, calibration.typical_access_rate(s))
    assert 2 <= concurrency <= 8 and "2-8 transfers in progress" in doc
    low, high = calibration.public_mean_images_per_s()
    assert round(low) == 58 and round(high) == 78 and "58-78 images/s" in doc
    assert "processing_delay" in doc and "not public" in doc


def test_sensitivity_grid_common_random_numbers_and_cache(tmp_path: Path) -> None:
    run_dir = tmp_path / "hub"
    assert main(["run", "five-trusts", *SMALL, "--set", "design.kind=hub", "--set", "scenario.replications=1",
                 "--out", str(run_dir)]) == 0
    s = sensitivity.for_run(run_dir, duration=7 * 86400.0)  # the run is 2 days: not capped
    assert s is not None and not s.capped and s.duration == 2 * 86400.0
    assert [(p.processing_delay, p.max_concurrent) for p in s.points] == [
        (d, n) for d in (0.0, 10.0, 30.0, 60.0, 120.0) for n in (25, 50, 100)]
    # Common random numbers: the grid point at the run's own parameters is the run itself.
    summary = json.loads((run_dir / "summary.json").read_text())["replications"][0]
    own = next(p for p in s.points if p.processing_delay == 30.0 and p.max_concurrent == 50)
    assert own.p50 == lookup(summary, ("delivery_time_s", "all", "p50"))
    assert own.p95 == lookup(summary, ("delivery_time_s", "all", "p95"))
    assert own.transfers == summary["transfers"]
    by_delay = {p.processing_delay: p.p50 for p in s.points if p.max_concurrent == 50}
    assert by_delay[120.0] is not None and by_delay[0.0] is not None
    assert 115 < by_delay[120.0] - by_delay[0.0] < 125  # the delay is (nearly) all of the hub's median
    # Cached: a second call reads sensitivity.json (not rewritten); another cap reruns and rewrites it.
    cache = run_dir / sensitivity.FILE
    before = cache.stat().st_mtime_ns
    assert sensitivity.for_run(run_dir, duration=7 * 86400.0) == s and cache.stat().st_mtime_ns == before
    capped = sensitivity.for_run(run_dir, duration=86400.0)
    assert capped is not None and capped.capped and json.loads(cache.read_text())["duration_s"] == 86400.0
    # A damaged cache is not trusted: the sweep runs again.
    cache.write_text('{"key": "x", "points": "not a list"}')
    assert sensitivity.for_run(run_dir, duration=86400.0) == capped
    cache.write_text(cache.read_text().replace('"delivery_p50_s": ', '"delivery_p50_s": "evil", "x": '))
    assert sensitivity.for_run(run_dir, duration=86400.0) == capped
    # The hybrid's hub does not forward: its processing delay changes nothing, so only max_concurrent varies.
    hybrid = tmp_path / "hybrid"
    assert main(["run", "five-trusts", *SMALL, "--set", "design.kind=hybrid", "--set", "scenario.replications=1",
                 "--set", "scenario.duration=1d", "--out", str(hybrid)]) == 0
    h = sensitivity.for_run(hybrid)
    assert h is not None and [(p.processing_delay, p.max_concurrent) for p in h.points] == [
        (30.0, 25), (30.0, 50), (30.0, 100)]
    assert "only max_concurrent is varied" in sensitivity.caption(h)


def test_report_and_compare_show_the_sweep_for_hub_runs_only(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    small = [*SMALL, "--set", "scenario.duration=1d", "--set", "scenario.replications=1"]
    assert main(["run", "five-trusts", *small, "--set", "design.kind=hub", "--out", str(tmp_path / "hub")]) == 0
    assert main(["run", "five-trusts", *small, "--out", str(tmp_path / "mesh")]) == 0
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "hub"), str(tmp_path / "mesh"), "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert out.count("Hub sensitivity, hub (hub)") == 1 and "30 (run)" in out
    assert "## Hub sensitivity" in (tmp_path / "cmp" / "compare.md").read_text()
    assert main(["report", str(tmp_path / "mesh")]) == 0
    assert "Hub sensitivity" not in (tmp_path / "mesh" / "report.md").read_text()
    assert main(["report", str(tmp_path / "hub"), "--format", "html"]) == 0
    page = (tmp_path / "hub" / "report.html").read_text()
    assert "<h2>Hub sensitivity</h2>" in page and page.rstrip().endswith("</body></html>")
    assert main(["report", str(tmp_path / "hub"), "--no-sensitivity", "--out", str(tmp_path / "plain.md")]) == 0
    assert "Hub sensitivity" not in (tmp_path / "plain.md").read_text()
    assert main(["report", str(tmp_path / "hub"), "--sensitivity-duration", "0s"]) == 1
    assert "--sensitivity-duration must be positive" in capsys.readouterr().err


def _table(text: str, heading: str) -> list[list[str]]:
    """The first Markdown table after `heading`, header row first."""
    part = text[text.index(heading):]
    block = part[part.index("\n|") + 1:].split("\n\n")[0]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in block.splitlines() if not ln.startswith("|---")]


def _interval(text: str) -> tuple[float, float | None]:
    m = re.fullmatch(r"(\S+)(?: ± (\S+))?", text)
    assert m is not None, text
    return float(m.group(1)), None if m.group(2) is None else float(m.group(2))


def test_study_report_matches_the_runs_and_pairs_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "study"
    assert main(["study", "five-trusts", "--designs", "hub,mesh,nope", "--out", str(out)]) == 1
    assert "unknown design 'nope'" in capsys.readouterr().err and not out.exists()
    # a sensitivity point shorter than the warm-up (6 h) is refused before any design runs
    assert main(["study", "five-trusts", "--sensitivity-duration", "1h", "--out", str(out)]) == 1
    assert "hub sensitivity of five-trusts at 1h" in capsys.readouterr().err and not out.exists()
    assert main(["study", "five-trusts", "--replications", "0", "--out", str(out)]) == 1
    assert "replications" in capsys.readouterr().err and not out.exists()
    assert main(["study", "five-trusts", "--duration", "2d", "--replications", "2", "--jobs", "1",
                 "--sensitivity-duration", "1d", "--no-progress", "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    summaries = {d: json.loads((out / d / "summary.json").read_text())["replications"] for d in ("hub", "mesh",
                                                                                                  "hybrid")}
    assert all(len(r) == 2 for r in summaries.values())
    table = _table(text, "## Key metrics per design")
    assert table[0] == ["metric", "hub", "mesh", "hybrid"] and len(table) > 10
    checked = 0
    for row in table[1:]:
        path = tuple(row[0].split("."))
        for design, cell in zip(("hub", "mesh", "hybrid"), row[1:]):
            values = [v for v in (lookup(r, path) for r in summaries[design]) if v is not None]
            if cell == "-":
                assert not values, (row[0], design)
                continue
            mean, _ = _interval(cell)
            assert mean == pytest.approx(statistics.fmean(values), rel=1e-3, abs=1e-9), (row[0], design)
            checked += 1
    assert checked > 40
    # Common random numbers: every design has the same transfers per replication, so the paired difference is
    # exactly 0 with no spread, while the unpaired one carries the replications' spread.
    diffs = _table(text, "## Differences from the hub")
    by = {(r[0], r[1]): (_interval(r[2]), _interval(r[3])) for r in diffs[1:]}
    (pm, ph), (um, uh) = by[("transfers", "mesh")]
    assert pm == 0 and ph == 0 and um == 0 and uh is not None and uh > 0
    (pm, ph), (um, uh) = by[("delivery_time_s.all.p50", "mesh")]
    hub_p50 = [lookup(r, ("delivery_time_s", "all", "p50")) for r in summaries["hub"]]
    mesh_p50 = [lookup(r, ("delivery_time_s", "all", "p50")) for r in summaries["mesh"]]
    assert pm == pytest.approx(statistics.fmean(m - h for m, h in zip(mesh_p50, hub_p50)), rel=1e-3)  # type: ignore
    assert ph != uh
    assert "## Hub sensitivity" in text and "over 1d (capped by --sensitivity-duration" in text
    assert "n = 2 replication(s) per design" in text
    assert "processing_delay (not public" in text
    if all("costs" in r for reps in summaries.values() for r in reps):
        assert "| design | transfer (GB)" in text
    else:
        assert "Not computed: these runs' summaries have no `costs`" in text
    data = json.loads((out / "study.json").read_text())
    assert data["metrics"]["transfers"]["hub"]["n"] == 2 and data["sensitivity"][0]["run"] == "hub"
    assert (out / "compare-cdf.png").read_bytes()[:4] == b"\x89PNG"
    # The same runs with the summary's `costs` (STATS's contract, issue 18): the report tabulates them per design.
    runs = []
    for design, reps in summaries.items():
        priced = [dict(r, costs={"currency": "GBP", "transfer_gb": 10.0 + k + (design == "hub"),
                                 "hub_stored_gb_months": 2.0 * (design != "mesh"), "transfer_cost": 0.1 * (10 + k),
                                 "storage_cost": 0.5, "total_cost": 1.5 + k}) for k, r in enumerate(reps)]
        runs.append(study.DesignRun(design, out / design, load_scenario(out / design / "scenario.toml"), priced))
    priced_report = study.write_report(tmp_path / "priced", runs, [])
    costs = _table(priced_report.read_text(), "## Costs per design")
    assert costs[0][:2] == ["design", "transfer (GB)"] and costs[0][-1] == "total (GBP)"
    assert costs[1][:2] == ["hub", "11.5 ± 6.353"] and costs[2][:3] == ["mesh", "10.5 ± 6.353", "0 ± 0"]


def test_study_reports_no_first_image_figure_of_a_design_that_aggregates_blocks(tmp_path: Path) -> None:
    """The study of nhs-england (1 GiB blocks) printed the mesh's and hybrid's time to first image, which
    docs/researchers.md section 3 says is not reported from aggregating runs (it printed 0.0275 s)."""
    out = tmp_path / "study"
    assert main(["study", "five-trusts", "--set", "design.granularity=4MiB", "--designs", "hub,mesh",
                 "--duration", "1d", "--replications", "2", "--jobs", "1", "--no-sensitivity", "--no-progress",
                 "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    rows = {r[0]: r[1:] for r in _table(text, "## Key metrics per design")[1:]}
    hub, mesh = rows["time_to_first_image_s.all.p50"]
    assert re.fullmatch(r"[\d.]+ ± [\d.e+-]+", hub)  # the hub has no scheduler blocks: reported
    assert mesh.startswith("not reported: blocks aggregated to 4 MiB")
    assert re.match(r"[\d.]+", rows["delivery_time_s.all.p50"][1])
    assert "(mesh) come from scheduler blocks aggregated to 4 MiB" in text
    diffs = [r[0] for r in _table(text, "## Differences from the hub")[1:]]
    assert "delivery_time_s.all.p50" in diffs and not [m for m in diffs if m.startswith("time_to_first_image")]
    data = json.loads((out / "study.json").read_text())
    assert data["metrics"]["time_to_first_image_s.all.p50"]["mesh"] is None
