"""meshsim report and compare: text against the summary, plots' data series, colours, intervals, warnings.

Small five-trusts-faults runs (two simulated days, two replications) shared by the module; plots are checked on
the matplotlib figures the report saves (their lines, bars, error bars, tick labels and texts)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from simulations import plots
from simulations.cli import main
from simulations.report import (
    Run,
    bars,
    compare,
    comparison_text,
    faults_text,
    first_image_note,
    load_run,
    observations,
)
from simulations.stats import SMALL_REPLICATIONS, SMALL_SAMPLE, interval, paired

# five-trusts-faults has faults up to day 4: a 2-day run keeps them only with a drain that reaches them (a fault
# after the end of the run is refused)
SMALL = ["--set", "scenario.duration=2d", "--set", "engine.drain=3d", "--set", "scenario.replications=2"]
DESIGNS = ("hub", "mesh", "hybrid")


def _run(folder: Path, *extra: str) -> Path:
    assert main(["run", "five-trusts-faults", *SMALL, *extra, "--out", str(folder), "--jobs", "1",
                 "--no-progress"]) == 0
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("report")
    return {d: _run(tmp / f"a-long-run-folder-name-{d}", "--set", f"design.kind={d}") for d in DESIGNS}


@pytest.fixture(scope="module")
def aggregated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run(tmp_path_factory.mktemp("agg") / "mesh-4mib", "--set", "design.granularity=4MiB")


def _summary(run_dir: Path) -> dict[str, object]:
    value = json.loads((run_dir / "summary.json").read_text())
    assert isinstance(value, dict)
    return value


def _report(run_dir: Path, *extra: str) -> str:
    assert main(["report", str(run_dir), *extra]) == 0
    return (run_dir / "report.md").read_text()


def _table(text: str, heading: str) -> list[list[str]]:
    """The rows of the Markdown table after `heading` (without its header and rule)."""
    lines = text[text.index(heading):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def _close(text: str, value: float) -> bool:
    return abs(float(text.replace(",", "")) - value) <= 5e-3 * max(1e-9, abs(value))


# ------------------------------------------------------------------------------------------------ 1: text vs data


def test_report_text_and_tables_agree_with_the_summary(runs: dict[str, Path]) -> None:
    """The faults sentence counted the delivery *rate* as transfers ("5 transfer(s); 1 of those were
    delivered" with 5 delivered); every number in it, and in the tables, is read back and checked."""
    run_dir = runs["mesh"]
    text = _report(run_dir)
    summary = _summary(run_dir)
    reps = summary["replications"]
    assert isinstance(reps, list)
    faults = reps[0]["faults"]
    assert faults["affected_delivered"] > 1  # else the old text would have been right by chance
    # review 1 m12: the count is of transfer-outage incidences, and says so
    m = re.search(r"(\d+) outage\(s\) touched transfers ([\d,]+) time\(s\) \(a transfer touched by two outages counts "
                  r"twice\); ([\d,]+) of those \(([\d.]+) %\) were "
                  r"delivered; recovery time .* mean ([\d.e+,]+) s, max ([\d.e+,]+) s\.", text)
    assert m is not None, text
    assert int(m[1]) == faults["outages_touching_transfers"]
    assert int(m[2].replace(",", "")) == faults["affected_transfers"]
    assert int(m[3].replace(",", "")) == faults["affected_delivered"]
    assert _close(m[4], 100.0 * faults["affected_success_rate"])
    assert _close(m[5], faults["recovery_s_mean"]) and _close(m[6], faults["recovery_s_max"])
    # Key metrics: each mean (and half-width) as the summary has it.
    across = summary["across_replications"]
    assert isinstance(across, dict)
    for metric, value in _table(text, "## Key metrics"):
        number = re.match(r"([-\d.e+,]+)(?: ± ([\d.e+,]+))?", value)
        assert number is not None, (metric, value)
        assert _close(number[1], across[metric]["mean"]), (metric, value)
        if number[2]:
            assert abs(float(number[2]) - across[metric]["ci95"]) <= 0.05 * across[metric]["ci95"]
    # Delivery table: transfers per priority = the replications' counts summed.
    for row in _table(text, "## Delivery time"):
        expected = sum(r["delivery_time_s"]["by_priority"][row[0]]["n"] for r in reps)
        assert int(row[1].replace(",", "")) == expected


def test_faults_text_says_how_many_outages_the_summary_left_out() -> None:
    faults = {"outages_touching_transfers": 612, "affected_transfers": 9000, "affected_delivered": 8100,
              "affected_success_rate": 0.9, "recovery_s_mean": 12.0, "recovery_s_max": 40.0,
              "outages": [{}] * 500, "outages_left_out": 112}
    text = faults_text(faults)
    assert "transfers 9,000 time(s) (a transfer touched by two outages counts twice); 8,100 of those (90 %) were " \
           "delivered" in text
    assert "lists 500 of them; 112 more were left out" in text


# ------------------------------------------------------------------------------- 2, 3: load plot, hub panel, colours


def _xy(line: Line2D) -> tuple[list[float], list[float]]:
    return ([float(v) for v in np.asarray(line.get_xdata(), dtype=float)],
            [float(v) for v in np.asarray(line.get_ydata(), dtype=float)])


def _lines(fig: Figure) -> dict[str, list[tuple[str, str]]]:
    """Per axes title/xlabel: (legend label, colour) of every line."""
    out = {}
    for ax in fig.axes:
        out[ax.get_xlabel()] = [(str(ln.get_label()), str(ln.get_color())) for ln in ax.get_lines()]
    return out


def test_load_plot_draws_empty_bins_as_zero_so_an_outage_shows(tmp_path: Path) -> None:
    """hub-r0.csv lists only non-empty bins; a 2 h hub outage has none, and the old plot drew a line across it."""
    run_dir = tmp_path / "hub-outage"
    assert main(["run", "five-trusts-faults", "--set", "scenario.duration=1d", "--set", "scenario.replications=1",
                 "--set", "design.kind=hub", "--set", 'faults=[{kind = "hub-outage", start = "12h", duration = "2h"}]',
                 "--out", str(run_dir), "--jobs", "1", "--no-progress"]) == 0
    listed = [float(line.split(",")[0]) for line in (run_dir / "hub-r0.csv").read_text().splitlines()[1:]]
    assert not [t for t in listed if 12 * 3600 <= t < 14 * 3600]  # the outage: no rows at all
    fig = plots.timeseries_figure(run_dir, "t", 3600.0, 60.0, "hub", 86400.0)
    hub_line = fig.axes[1].get_lines()[0]
    days, values = _xy(hub_line)
    in_outage = [v for d, v in zip(days, values) if 12 / 24 <= d < 14 / 24]
    assert len(in_outage) == 120 and set(in_outage) == {0.0}  # every minute of it, drawn at zero
    # Every bin of the day (and of the drain, while anything moved), not only the listed ones.
    assert len(days) >= 24 * 60 and max(values) > 0
    assert [round((b - a) * 1440, 9) for a, b in zip(days, days[1:])] == [1.0] * (len(days) - 1)
    assert hub_line.get_drawstyle() == "steps-post"
    up_days, up = _xy(fig.axes[0].get_lines()[0])
    assert len(up_days) >= 24 and up.count(0.0) >= 24 - len((run_dir / "timeseries-r0.csv").read_text().splitlines())
    plt.close(fig)
    assert plots.dense_series({0.0: 1.0, 180.0: 2.0}, 60.0, 300.0) == ([0.0, 60.0, 120.0, 180.0, 240.0],
                                                                       [1.0, 0.0, 0.0, 2.0, 0.0])


def test_mesh_report_has_no_hub_panel_and_each_design_keeps_its_colour(runs: dict[str, Path]) -> None:
    figs = {d: plots.timeseries_figure(runs[d], "t", 3600.0, 60.0, d, 2 * 86400.0) for d in DESIGNS}
    assert len(figs["mesh"].axes) == 1 and len(figs["hub"].axes) == 2 and len(figs["hybrid"].axes) == 2
    for d, fig in figs.items():
        assert fig.axes[0].get_lines()[0].get_color() == plots.PALETTE[d]
        plt.close(fig)
    assert "and hub load" not in _report(runs["mesh"]) and "and hub load" in _report(runs["hybrid"])
    assert len(set(plots.PALETTE.values())) == 3


def test_compare_colours_follow_the_design_not_the_argument_order(runs: dict[str, Path]) -> None:
    """The old plots coloured by position: the first run blue, whatever its design."""
    for order in (("hub", "mesh"), ("mesh", "hybrid", "hub"), ("hybrid", "hub")):
        loaded = [load_run(runs[d]) for d in order]
        styles = plots.run_styles([(r.label, r.design) for r in loaded])
        fig = plots.compare_cdf_figure([(s, plots.load_distributions(r.path)) for s, r in zip(styles, loaded)])
        for _, lines in _lines(fig).items():
            assert [colour for _, colour in lines] == [plots.PALETTE[d] for d in order]
        plt.close(fig)
        fig = plots.compare_bars_figure(styles, bars(loaded), "p95")
        for ax in fig.axes:
            assert [to_hex(p.get_facecolor()) for p in ax.patches] == \
                [plots.PALETTE[d] for d in order]
        plt.close(fig)
    # Two runs of one design: same colour, different line style.
    twice = plots.run_styles([("a", "mesh"), ("b", "mesh")])
    assert twice[0].colour == twice[1].colour and twice[0].linestyle != twice[1].linestyle


# ------------------------------------------------------------------------------------ 4: error bars, ticks, CCDF


def test_p95_bars_carry_the_t_half_width_and_readable_run_labels(runs: dict[str, Path]) -> None:
    loaded = [load_run(runs[d]) for d in DESIGNS]
    styles = plots.run_styles([(r.label, r.design) for r in loaded])
    values = bars(loaded)
    fig = plots.compare_bars_figure(styles, values, "delivery time p95 (s)")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    for ax, priority in zip(fig.axes, values):
        segments = [c for c in ax.collections if hasattr(c, "get_segments")][0].get_segments()
        assert len(segments) == len(loaded)
        for seg, run in zip(segments, loaded):
            cell = run.across[f"delivery_time_s.by_priority.{priority}.p95"]
            assert isinstance(cell, dict) and cell["ci95"] is not None
            top = max(y for _, y in seg)
            assert top == pytest.approx(cell["mean"] + cell["ci95"])  # the upper arm: the t half-width
            # The half-width is Student t at n - 1 degrees of freedom over the replications' values.
            own = interval([v for v in run.values(f"delivery_time_s.by_priority.{priority}.p95").values()
                            if v is not None])
            assert cell["ci95"] == pytest.approx(own.half_width, rel=1e-3)
        labels = ax.get_xticklabels()
        assert [re.sub(r"\s", "", t.get_text()) for t in labels] == [re.sub(r"\s", "", r.label) for r in loaded]
        assert all("\n" in t.get_text() for t in labels)  # long labels wrapped
        boxes = [t.get_window_extent(renderer) for t in labels]
        for a, b in zip(boxes, boxes[1:]):
            assert not a.overlaps(b), "tick labels overlap"
    plt.close(fig)


def test_ccdf_option_draws_the_tail_on_log_axes(runs: dict[str, Path], tmp_path: Path) -> None:
    text = _report(runs["mesh"], "--ccdf")
    assert "report-ccdf.png" in text and (runs["mesh"] / "report-ccdf.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["compare", str(runs["hub"]), str(runs["mesh"]), "--out", str(tmp_path / "c"), "--ccdf"]) == 0
    assert "compare-ccdf.png" in (tmp_path / "c" / "compare.md").read_text()
    dist = plots.load_distributions(runs["mesh"])
    fig = plots.cdf_figure(dist, "t", ccdf=True)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    for line in ax.get_lines():
        priority = str(line.get_label()).split(" ")[0]
        n = sum(dist.pooled("delivery", priority))
        ys = _xy(line)[1]
        assert ys[0] == 1.0 and ys[-1] == pytest.approx(1.0 / n) and min(ys) > 0  # down to the slowest one
        assert ys == sorted(ys, reverse=True)
    plt.close(fig)
    xs, ys = plots.ccdf_points([0, 3, 0, 1] + [0] * (len(dist.pooled("delivery")) - 4))
    assert ys == [1.0, 0.25, 0.25] and xs[0] < xs[1] < xs[2]


# -------------------------------------------------------------------------------------- 5: paired differences


def test_compare_prints_paired_differences_over_common_random_numbers(runs: dict[str, Path]) -> None:
    c = compare([runs[d] for d in DESIGNS])
    assert c.paired and "paired" in c.pairing_note and "unpaired" not in c.pairing_note
    hub, mesh = load_run(runs["hub"]), load_run(runs["mesh"])
    label = "delivery_time_s.all.p50"
    want = paired(list(hub.values(label).values()), list(mesh.values(label).values()))
    assert want is not None and want.half_width is not None
    got = next(x for x in c.differences if x.metric == label and x.run == mesh.label)
    assert got.paired and got.n == 2
    assert got.mean == pytest.approx(want.mean, abs=1e-5) and got.half_width == pytest.approx(want.half_width)
    assert got.significant == (abs(want.mean) > want.half_width)
    assert got.significant  # the hub's processing delay: every replication's median is ~30 s longer
    text = comparison_text(c)
    assert f"differences vs {hub.label}: paired" in text
    row = next(line for line in text.splitlines()[text.splitlines().index(
        next(x for x in text.splitlines() if x.startswith("differences vs"))):] if line.startswith(label))
    assert row.split()[1:4] == [f"{want.mean:.3g}", "±", f"{want.half_width:.2g}"] and "*" in row


def test_compare_says_unpaired_when_seeds_differ(runs: dict[str, Path], tmp_path: Path) -> None:
    other = _run(tmp_path / "other-seed", "--set", "scenario.seed=99")
    c = compare([runs["hub"], other])
    assert not c.paired and c.pairing_note.startswith("unpaired") and "seeds" in c.pairing_note
    label = "delivery_time_s.all.p50"
    a = interval([v for v in load_run(runs["hub"]).values(label).values() if v is not None])
    b = interval([v for v in load_run(other).values(label).values() if v is not None])
    got = next(x for x in c.differences if x.metric == label)
    assert not got.paired and got.half_width is None and got.mean == pytest.approx(b.mean - a.mean, abs=1e-5)
    assert a.low is not None and a.high is not None and b.low is not None and b.high is not None
    assert got.significant == (b.high < a.low or a.high < b.low)
    assert "unpaired" in comparison_text(c)


# --------------------------------------------------------------------------------- 6: small-sample warnings


def test_small_samples_are_flagged_in_tables_and_plots(runs: dict[str, Path]) -> None:
    run = load_run(runs["mesh"])
    stat_n = observations(run, "delivery_time_s.by_priority.stat.p95")
    all_n = observations(run, "delivery_time_s.all.p50")
    assert stat_n is not None and stat_n < SMALL_SAMPLE and all_n is not None and all_n >= SMALL_SAMPLE
    text = _report(runs["mesh"])
    metrics = dict((r[0], r[1]) for r in _table(text, "## Key metrics"))
    assert metrics["delivery_time_s.by_priority.stat.p95"].endswith(f"(n = {round(stat_n)} stat transfers)")
    assert "(n = " not in metrics["delivery_time_s.all.p50"]
    assert len(run.replications) < SMALL_REPLICATIONS
    assert f"Intervals from 2 replications, fewer than {SMALL_REPLICATIONS}" in text
    pooled = {r[0]: r for r in _table(text, "## Delivery time")}
    n_stat = int(pooled["stat"][1])
    assert pooled["stat"][-1] == f"(n = {n_stat} stat transfers)" and pooled["routine"][-1] == ""
    # Plots: the CDF legend and the p95 bars say it too.
    fig = plots.cdf_figure(plots.load_distributions(runs["mesh"]), "t")
    box = fig.axes[0].get_legend()
    assert box is not None
    legend = [t.get_text() for t in box.get_texts()]
    assert f"stat (n = {n_stat} stat transfers: small sample)" in legend
    plt.close(fig)
    styles = plots.run_styles([(run.label, run.design)])
    fig = plots.compare_bars_figure(styles, bars([run]), "p95")
    notes = {ax.get_title(): [t.get_text() for t in ax.texts] for ax in fig.axes}
    assert notes["stat"] == [f"n = {round(stat_n)}\nstat\ntransfers"] and notes["routine"] == []  # as the tables
    assert f"fewer than {SMALL_REPLICATIONS}" in fig.texts[0].get_text()  # the suptitle
    plt.close(fig)
    c = compare([runs["hub"], runs["mesh"]])
    assert any(f"fewer than {SMALL_REPLICATIONS}" in n for n in c.notes)
    stat_row = next(r for r in c.rows if r[0] == "delivery_time_s.by_priority.stat.p95")
    assert all("stat transfers)" in cell for cell in stat_row[1:])


# ------------------------------------------------------------------------ 7: first image only when not aggregated


def test_first_image_is_not_reported_from_a_run_that_aggregates_blocks(runs: dict[str, Path],
                                                                      aggregated: Path) -> None:
    note = "not reported: blocks aggregated to 4 MiB (docs/researchers.md section 3)"
    agg = load_run(aggregated)
    assert agg.granularity == 4 * 2**20 and first_image_note(agg) == note
    for design in DESIGNS:  # 1 MiB (the node's block) and the hub (no scheduler): reported
        assert first_image_note(load_run(runs[design])) is None
    text = _report(aggregated)
    metrics = dict((r[0], r[1]) for r in _table(text, "## Key metrics"))
    assert metrics["time_to_first_image_s.all.p50"] == note and metrics["time_to_first_image_s.all.p95"] == note
    for row in _table(text, "## Delivery time"):
        assert row[5] == note and row[6] == note
    reported = dict((r[0], r[1]) for r in _table(_report(runs["mesh"]), "## Key metrics"))
    assert re.match(r"[\d.]+", reported["time_to_first_image_s.all.p50"])
    fig = plots.cdf_figure(plots.load_distributions(aggregated), "t", first_image_note=note)
    assert not fig.axes[1].get_lines() and "not reported" in fig.axes[1].texts[0].get_text()
    plt.close(fig)
    c = compare([runs["mesh"], aggregated])
    row = next(r for r in c.rows if r[0] == "time_to_first_image_s.all.p50")
    assert row[2] == note and re.match(r"[\d.]+", row[1])
    assert not [x for x in c.differences if x.metric.startswith("time_to_first_image_s")]
    assert [x for x in c.differences if x.metric == "delivery_time_s.all.p50"]
    assert any(note in n for n in c.notes)


def test_report_and_compare_refuse_folders_that_are_not_runs(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", str(tmp_path)]) == 1
    assert "not a meshsim run folder" in capsys.readouterr().err
    assert isinstance(Run, type)


def test_report_shows_per_org_percentiles_and_costs_when_the_summary_has_them(runs: dict[str, Path],
                                                                              tmp_path: Path) -> None:
    """Keys the summary gains in issue 18: a run has them, and a run folder from before them still reports."""
    import shutil

    costs = {r[0]: r[1] for r in _table(_report(runs["mesh"]), "## Costs")}
    # review 1 m7: each row carries its own unit (a GB figure sat under a "GBP" heading)
    assert costs == {"costs.transfer_gb": "GB", "costs.hub_stored_gb_months": "GB-months", "costs.transfer_cost": "GBP",
                     "costs.storage_cost": "GBP", "costs.total_cost": "GBP"}
    run_dir = tmp_path / "with-costs"
    shutil.copytree(runs["mesh"], run_dir)
    summary = _summary(run_dir)
    reps = summary["replications"]
    assert isinstance(reps, list)
    new_keys = ("delivery_time_s_by_org", "delivery_time_s_by_link_class", "costs")
    for rep in reps:
        for key in new_keys:
            rep.pop(key, None)
    across = summary["across_replications"]
    assert isinstance(across, dict)
    for key in [k for k in across if k.startswith(new_keys)]:
        del across[key]
    (run_dir / "summary.json").write_text(json.dumps(summary))
    assert "Costs" not in _report(run_dir)
    reps[0]["costs"] = {"currency": "GBP", "total_cost": 12.5}
    across = summary["across_replications"]
    assert isinstance(across, dict)
    across["costs.total_cost"] = {"mean": 12.5, "ci95": 1.5, "min": 11.0, "max": 14.0, "n": 2}
    across["costs.link_gb.RGT.up"] = {"mean": 1.0, "ci95": None, "min": 1.0, "max": 1.0, "n": 2}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    text = _report(run_dir)
    assert "## Costs (mean ± 95 % half-width over replications)" in text
    assert _table(text, "## Costs") == [["costs.total_cost", "GBP", "12.5 ± 1.5"]]  # not every link's bytes


# ------------------------------------------------------------------------------------- review 1 (FIX1) findings


def _cell(p50: float, p95: float, p99: float, n: float) -> dict[str, dict[str, object]]:
    return {q: {"mean": v, "ci95": v / 10, "min": v, "max": v, "n": 3, "observations": n}
            for q, v in (("p50", p50), ("p95", p95), ("p99", p99))}


def test_per_org_tables_use_intervals_across_replications_and_rank_only_large_samples(runs: dict[str, Path],
                                                                                       tmp_path: Path) -> None:
    """Review 1 M3: the per-org table showed replication 0's point values, ranked by a noisy p95 that picked
    organisations with a handful of transfers. Now: mean ± half-width over replications, ranked by mean p95 among
    those with at least SMALL_SAMPLE transfers per replication; the others are named, not ranked."""
    import shutil

    run_dir = tmp_path / "orgs"
    shutil.copytree(runs["mesh"], run_dir)
    summary = _summary(run_dir)
    across = summary["across_replications"]
    assert isinstance(across, dict)
    for key in [k for k in across if k.startswith(("delivery_time_s_by_org", "delivery_time_s_by_link_class"))]:
        del across[key]
    cells: dict[str, dict[str, dict[str, object]]] = {
        f"O{i:02d}": _cell(1.0, float(i), 50.0, 100 + i) for i in range(25)}
    cells["SLOW"] = _cell(9.0, 99.0, 99.5, 3)  # the slowest, but from 3 transfers per replication
    for org, leaves in cells.items():
        for q, cell in leaves.items():
            across[f"delivery_time_s_by_org.{org}.{q}"] = cell
    for q, cell in _cell(2.0, 8.0, 9.0, 40).items():
        across[f"delivery_time_s_by_link_class.<100Mbit/s.{q}"] = cell
    reps = summary["replications"]
    assert isinstance(reps, list)
    reps[0]["delivery_time_s_by_org"] = {"SLOW": {"n": 3, "p50": 1.0, "p95": 1000.0, "p99": 1000.0}}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    text = _report(run_dir)
    by_org = _table(text, "## Delivery time by recipient organisation")
    assert [r[0] for r in by_org[:3]] == ["O24", "O23", "O22"] and len(by_org) == 20
    assert by_org[0][1:6] == ["124", "3", "1 ± 0.1", "24 ± 2.4", "50 ± 5"]
    assert "SLOW" not in [r[0] for r in by_org]
    assert f"1 org(s) with fewer than {SMALL_SAMPLE} transfers per replication, not ranked" in text
    assert "The 20 slowest by mean p95 of the 25" in text
    assert _table(text, "## Delivery time by link class")[0][:6] == ["<100Mbit/s", "40", "3", "2 ± 0.2", "8 ± 0.8",
                                                                      "9 ± 0.9"]


def test_report_and_compare_say_which_estimator_and_small_samples_get_no_star(runs: dict[str, Path]) -> None:
    """Review 1 M2 + m10: key metrics (mean of per-replication percentiles) and the pooled table printed two
    different stat p95s without saying which is which; compare marked `*` on percentiles from ~5 transfers; ~40
    tests with no word on false positives."""
    text = _report(runs["hub"])
    assert "## Key metrics (mean over replications of each replication's figure ± 95 % t half-width)" in text
    assert "differs from the pooled percentile" in text
    assert "Pooled percentiles: the percentile of all transfers of all 2 replication(s) in one histogram" in text
    c = compare([runs["hub"], runs["mesh"]])
    label = "delivery_time_s.by_priority.stat.p95"
    hub = load_run(runs["hub"])
    n = observations(hub, label)
    assert n is not None and n < SMALL_SAMPLE
    got = next(x for x in c.differences if x.metric == label)
    assert got.small_sample and not got.significant and got.cell().endswith("(small sample)")
    big = next(x for x in c.differences if x.metric == "delivery_time_s.all.p50")
    assert not big.small_sample and big.significant
    tested = sum(1 for x in c.differences if not x.small_sample and x.half_width is not None)
    assert c.multiplicity_note.startswith(f"{tested} difference(s) tested at 95 %: expect about {0.05 * tested:.1f}")
    assert f"{100 * (1 - 0.05 / tested):.4g} %" in c.multiplicity_note
    out = comparison_text(c)
    assert out.splitlines()[-1] == c.multiplicity_note and "Key metrics: Each figure is the mean" in out


def test_paired_matches_a_hand_computed_pair() -> None:
    """Review 1 m8: an expectation not computed by the function under test. Differences 2 and 3: mean 2.5, sd
    0.7071, t(0.975, 1) = 12.7062, half-width 12.7062 * 0.7071 / sqrt(2) = 6.3531."""
    iv = paired([1.0, 2.0], [3.0, 5.0])
    assert iv is not None and iv.mean == pytest.approx(2.5) and iv.half_width == pytest.approx(6.3531, abs=1e-3)


def test_compare_has_cost_rows_with_paired_differences_and_link_class_tables(runs: dict[str, Path],
                                                                             tmp_path: Path) -> None:
    """Review 1 M4: compare showed no costs and no per-link-class delivery."""
    c = compare([runs["mesh"], runs["hub"]], out=tmp_path / "cmp")
    mesh, hub = load_run(runs["mesh"]), load_run(runs["hub"])
    rows = {r[0]: r for r in c.rows}
    for label in ("costs.transfer_gb", "costs.hub_stored_gb_months", "costs.transfer_cost", "costs.storage_cost",
                  "costs.total_cost"):
        assert label in rows, label
    for key in ("total_cost", "transfer_gb"):
        reps_a, reps_b = _summary(runs["mesh"])["replications"], _summary(runs["hub"])["replications"]
        assert isinstance(reps_a, list) and isinstance(reps_b, list)
        a = [float(r["costs"][key]) for r in reps_a]
        b = [float(r["costs"][key]) for r in reps_b]
        got = next(x for x in c.differences if x.metric == f"costs.{key}")
        assert got.paired and got.n == 2 and got.mean == pytest.approx(
            statistics_mean([y - x for x, y in zip(a, b)]), abs=1e-5)
    assert got.mean > 0  # every study crosses the hub's link twice: more GB over access links than the mesh
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "costs.transfer_gb in GB, costs.hub_stored_gb_months in GB-months, the *_cost rows in GBP" in md
    for run in (mesh, hub):
        assert f"### Delivery time by link class: {run.label}" in md
        assert _table(md, f"### Delivery time by link class: {run.label}")


def statistics_mean(values: list[float]) -> float:
    return sum(values) / len(values)


def test_aggregated_runs_carry_a_note_beside_delivery_percentiles(runs: dict[str, Path], aggregated: Path) -> None:
    """Review 1 M5: a run whose blocks aggregate the node's 1 MiB blocks printed delivery percentiles (and compare
    starred them) with no caveat."""
    note = "come from scheduler blocks aggregated to 4 MiB (the node sends 1 MiB blocks): see docs/researchers.md " \
           "section 3"
    text = _report(aggregated)
    key = text[text.index("## Key metrics"):text.index("## Delivery time")]
    assert note in key
    pooled = text[text.index("## Delivery time"):text.index("## Load over time")]
    assert note in pooled
    assert note not in _report(runs["mesh"])
    c = compare([runs["mesh"], aggregated])
    assert any(note in n for n in c.notes)
    assert not any("scheduler blocks aggregated" in n for n in compare([runs["mesh"], runs["hub"]]).notes)


def test_pairing_says_common_random_numbers_and_when_workloads_differ(runs: dict[str, Path], tmp_path: Path) -> None:
    """Review 1 m5: "paired" was declared on seeds alone, and said the runs saw the same studies even when the
    scenarios' workloads differed."""
    c = compare([runs["hub"], runs["mesh"]])
    assert c.paired and "common random numbers (the same seeds)" in c.pairing_note
    assert "may differ" not in c.pairing_note
    other = _run(tmp_path / "more-studies", "--set", "workload.studies_per_year=80000")
    c = compare([runs["mesh"], other])
    assert c.paired and "differ in workload, so their workloads may differ" in c.pairing_note


def test_p95_bars_have_plain_tick_labels_and_point_to_the_paired_intervals(runs: dict[str, Path]) -> None:
    """Review 1 m6: "6x10^1" tick labels on the log axis, "n = 4.67" where the tables say 5, and in a paired
    comparison nothing said the (much narrower) paired intervals are in the table."""
    loaded = [load_run(runs[d]) for d in DESIGNS]
    styles = plots.run_styles([(r.label, r.design) for r in loaded])
    fig = plots.compare_bars_figure(styles, bars(loaded), "p95", paired=True)
    fig.canvas.draw()
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels() + fig.axes[0].get_yticklabels(minor=True)
              if t.get_text()]  # the axes share y: the first panel carries the labels
    assert labels, "no y tick labels"
    for ax in fig.axes:
        for text in labels:
            float(text)  # a plain number ("60", "0.5"), not mathtext like "$\\mathdefault{6\\times10^{1}}$"
        for t in ax.texts:
            m = re.match(r"n = (\S+)", t.get_text())
            assert m is None or m[1].isdigit(), t.get_text()
    assert "paired differences" in fig.texts[0].get_text() and "in the table" in fig.texts[0].get_text()
    plt.close(fig)
    fig = plots.compare_bars_figure(styles, bars(loaded), "p95")
    assert "paired" not in fig.texts[0].get_text()
    plt.close(fig)
