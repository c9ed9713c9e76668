"""The summary's statistics (issue 18): t intervals at the real degrees of freedom for every reported metric,
per-organisation and per-link-class delivery percentiles from the recorder's histograms, costs, the outage
list's left-out count, determinism."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
from scipy.stats import t as student_t

from simulations.commands.common import resolve_scenario_path
from simulations.engine.recorder import LINK_CLASSES, OutageStats, link_class
from simulations.engine.slice import run_slice
from simulations.engine.state import Status
from simulations.results import merge
from simulations.runner import run, simulate
from simulations.scenario import Scenario, load_scenario
from simulations.scenario.overrides import apply, parse_assignment
from simulations.summary import MAX_OUTAGES, across, replication_summary
from simulations.topology import build_topology
from tests.simulations.helpers import A, B, C, studies, trio


def _reps(values: list[float]) -> list[dict[str, object]]:
    return [{"success_rate": v, "delivery_time_s": {"all": {"n": 10 + k, "p50": 2 * v, "p95": None, "p99": None}}}
            for k, v in enumerate(values)]


@pytest.mark.parametrize("n", [2, 11, 31])
def test_half_width_is_student_t_at_n_minus_1_degrees_of_freedom(n: int) -> None:
    # Spread wide enough that rounding to 6 decimals is far below the tolerance; with n = 31 a table that falls
    # back to 1.96 beyond 10 degrees of freedom is 4 % short, with n = 11 the 3-digit table is 6e-5 off.
    values = [100.0 + 37.0 * math.sin(k * 1.7) for k in range(n)]
    out = across(_reps(values))
    expected = float(student_t.ppf(0.975, n - 1)) * statistics.stdev(values) / math.sqrt(n)
    got = out["success_rate"]
    assert isinstance(got, dict)
    assert got["n"] == n
    assert got["ci95"] == pytest.approx(expected, rel=1e-7)
    assert got["mean"] == pytest.approx(statistics.fmean(values), abs=1e-6)
    assert got["min"] == pytest.approx(min(values), abs=1e-6) and got["max"] == pytest.approx(max(values), abs=1e-6)
    # percentiles get the same interval and the mean number of transfers behind them
    p50 = out["delivery_time_s.all.p50"]
    assert isinstance(p50, dict)
    assert p50["ci95"] == pytest.approx(2 * expected, rel=1e-7)
    assert p50["observations"] == pytest.approx(statistics.fmean(10 + k for k in range(n)))
    assert "delivery_time_s.all.p95" not in out  # no value in any replication: nothing to report


def test_one_replication_has_no_interval() -> None:
    out = across(_reps([3.0]))
    got = out["success_rate"]
    assert isinstance(got, dict)
    assert got["ci95"] is None and got["n"] == 1 and got["mean"] == 3.0


# -- from real runs ------------------------------------------------------------------------------------------


def _five_trusts(*assignments: str) -> Scenario:
    base = load_scenario(resolve_scenario_path("five-trusts"))
    short = ["scenario.duration=3d", "scenario.warmup=6h", "scenario.replications=2",
             "workload.studies_per_year=40000", "output.records=csv", "output.record_fraction=1"]
    return apply(base, [parse_assignment(a) for a in [*short, *assignments]])


@pytest.mark.parametrize("slices", [1, 2])
def test_per_org_percentiles_match_the_exact_records(slices: int) -> None:
    sc = _five_trusts(f"engine.time_slices={slices}", "engine.slice_overlap=6h")
    topology = build_topology(sc)
    (r,) = simulate(sc, [0], jobs=1)
    summary = replication_summary(r, sc, topology)
    by_org = summary["delivery_time_s_by_org"]
    assert isinstance(by_org, dict) and sorted(by_org) == sorted(o.code for o in topology.orgs)
    exact: dict[int, list[float]] = {}
    for row in r.rows:
        if row.status == Status.DELIVERED and row.arrival >= sc.warmup and not row.bogus:
            exact.setdefault(row.recipient, []).append(row.delivered - row.arrival)
    assert sum(len(v) for v in exact.values()) == r.counters.delivered > 300
    width = 10.0 ** (1.0 / 200) * (1 + 1e-6)  # one histogram bin, and the summary's 6 decimals
    for o in topology.orgs:
        got = by_org[o.code]
        values = sorted(exact.get(o.index, []))
        assert got["n"] == len(values)
        if not values:
            assert got["p50"] is None
            continue
        for q in (50, 95, 99):
            target = q / 100.0 * len(values)
            k = max(1, math.ceil(target))  # the rank whose bin the histogram's percentile falls in
            assert values[k - 1] / width <= got[f"p{q}"] <= values[k - 1] * width, (o.code, q)
    # every delivered transfer is in exactly one organisation's and one link class's histogram
    classes = summary["delivery_time_s_by_link_class"]
    assert isinstance(classes, dict) and list(classes) == [name for name, _ in LINK_CLASSES]
    assert sum(v["n"] for v in classes.values()) == r.counters.delivered
    rates = [[min(a.up, b.down) for b in topology.orgs] for a in topology.orgs]
    for k, (name, _) in enumerate(LINK_CLASSES):
        assert classes[name]["n"] == sum(1 for row in r.rows if row.status == Status.DELIVERED
                                         and row.arrival >= sc.warmup
                                         and link_class(rates[row.sender][row.recipient]) == k)


def test_link_class_is_the_bottleneck_access_rate() -> None:
    # bounds belong to the class above them: 100 Mbit/s is not "<100Mbit/s", 1 Gbit/s is ">=1Gbit/s"
    assert [link_class(x / 8) for x in (1e6, 99.9e6, 100e6, 999e6, 1e9, 40e9)] == [0, 0, 1, 1, 2, 2]
    trace = studies([(10.0, A, [B, C], 50e6), (20.0, A, [B], 50e6)])
    fast = run_slice(trio(), 0, 0, trace=trace)  # AAA up 1 Gbit/s: to BBB (down 1 Gbit/s), to CCC (100 Mbit/s)
    slow = run_slice(trio(a_up="50Mbit/s"), 0, 0, trace=trace)  # every transfer limited by AAA's 50 Mbit/s
    for r, expected in ((fast, {">=1Gbit/s": 2, "100Mbit/s-1Gbit/s": 1, "<100Mbit/s": 0}),
                        (slow, {">=1Gbit/s": 0, "100Mbit/s-1Gbit/s": 0, "<100Mbit/s": 3})):
        rr = merge([r])
        summary = replication_summary(rr, trio(), build_topology(trio()))
        classes = summary["delivery_time_s_by_link_class"]
        assert isinstance(classes, dict)
        assert {name: v["n"] for name, v in classes.items()} == expected
        by_org = summary["delivery_time_s_by_org"]
        assert isinstance(by_org, dict)
        assert {code: v["n"] for code, v in by_org.items()} == {"AAA": 0, "BBB": 2, "CCC": 1}


COSTS = '[costs]\ncurrency = "EUR"\ntransfer_per_gb = 0.05\nstorage_per_gb_month = 0.02\n'


@pytest.mark.parametrize("design", ["hub", "mesh"])
def test_costs_are_the_runs_bytes_at_the_scenarios_prices(design: str) -> None:
    # one 100 MB study from AAA to BBB; the hub keeps it 60 days (two 30-day months)
    sc = trio(design=design, extra=COSTS)
    sc = apply(sc, [parse_assignment("hub.retention=60d")])
    r = merge([run_slice(sc, 0, 0, trace=studies([(10.0, A, [B], 100e6)]))])
    assert r.counters.delivered == 1
    got = replication_summary(r, sc, build_topology(sc))["costs"]
    assert isinstance(got, dict)
    hops = 4 if design == "hub" else 2  # AAA up, (hub in, hub out,) BBB down
    stored = 0.1 * 2 if design == "hub" else 0.0
    assert got["currency"] == "EUR"
    assert got["transfer_gb"] == pytest.approx(0.1 * hops, rel=1e-6)
    assert got["hub_stored_gb_months"] == pytest.approx(stored, rel=1e-6)
    assert got["transfer_cost"] == pytest.approx(0.1 * hops * 0.05, abs=1e-6)
    assert got["storage_cost"] == pytest.approx(stored * 0.02, abs=1e-6)
    assert got["total_cost"] == pytest.approx(0.1 * hops * 0.05 + stored * 0.02, abs=1e-6)
    link = got["link_gb"]
    assert isinstance(link, dict)
    assert link["AAA"] == pytest.approx({"up": 0.1, "down": 0.0}, rel=1e-6)
    assert link["BBB"] == pytest.approx({"up": 0.0, "down": 0.1}, rel=1e-6)
    assert link["CCC"] == {"up": 0.0, "down": 0.0}
    if design == "hub":
        assert link["hub"] == pytest.approx({"up": 0.1, "down": 0.1}, rel=1e-6)
    else:
        assert "hub" not in link


def test_costs_add_up_the_organisations_and_the_hubs_bytes_of_a_run() -> None:
    sc = _five_trusts("design.kind=hub", "costs.transfer_per_gb=0.01", "costs.storage_per_gb_month=0.023")
    (r,) = simulate(sc, [1], jobs=1)
    s = replication_summary(r, sc, build_topology(sc))
    got, orgs, hub = s["costs"], s["organisations"], s["hub"]
    assert isinstance(got, dict) and isinstance(orgs, dict) and isinstance(hub, dict)
    by_hand = sum(o["up_bytes"] + o["down_bytes"] for o in orgs.values()) + hub["bytes_in"] + hub["bytes_out"]
    assert hub["bytes_in"] > 1e9 and hub["bytes_out"] > 0
    assert got["transfer_gb"] == pytest.approx(by_hand / 1e9, rel=1e-9)
    assert got["hub_stored_gb_months"] == pytest.approx(hub["bytes_in"] / 1e9 * 30 / 30, rel=1e-9)  # 30 d default
    assert got["total_cost"] == pytest.approx(by_hand / 1e9 * 0.01 + hub["bytes_in"] / 1e9 * 0.023, abs=2e-6)


def test_outages_beyond_the_listed_500_are_counted() -> None:
    sc = _five_trusts()
    (r,) = simulate(sc, [0], jobs=1)
    s = replication_summary(r, sc, build_topology(sc))
    faults = s["faults"]
    assert isinstance(faults, dict) and faults["outages_left_out"] == 0
    touched = faults["outages_touching_transfers"]
    # 620 more outages that touched a transfer (as the recorder leaves them), and some that touched none
    r.outages.extend(OutageStats("node", 0, 3600.0 + k, 3601.0 + k, "fault", affected=1, delivered=1)
                     for k in range(620))
    r.outages.extend(OutageStats("node", 1, 10.0 + k, 11.0 + k, "fault") for k in range(50))
    faults = replication_summary(r, sc, build_topology(sc))["faults"]
    assert isinstance(faults, dict)
    assert isinstance(faults["outages"], list) and len(faults["outages"]) == MAX_OUTAGES == 500
    assert faults["outages_touching_transfers"] == touched + 620
    assert faults["outages_left_out"] == touched + 620 - 500


def test_two_runs_write_byte_identical_summaries(tmp_path: Path) -> None:
    sc = _five_trusts("design.kind=hub", "engine.time_slices=2", "engine.slice_overlap=6h", "scenario.duration=2d")
    texts = []
    for name in ("a", "b"):
        run(sc, tmp_path / name, jobs=1)
        texts.append((tmp_path / name / "summary.json").read_bytes())
    assert texts[0] == texts[1]
    # every numeric leaf of every replication's trees has its entry across the two replications
    summary = json.loads(texts[0])
    reps, acr = summary["replications"], summary["across_replications"]
    assert len(reps) == 2
    leaves: dict[str, list[float]] = {}

    def walk(value: object, path: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{path}.{k}")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            leaves.setdefault(path, []).append(float(value))

    for rep in reps:
        for tree in ("delivery_time_s", "time_to_first_image_s", "delivery_time_s_by_org",
                     "delivery_time_s_by_link_class", "costs"):
            walk(rep[tree], tree)
    assert "delivery_time_s.by_priority_and_modality.routine/CT.p95" in leaves
    assert "delivery_time_s_by_org.RGT.p99" in leaves and "costs.link_gb.hub.down" in leaves
    assert "time_to_first_image_s.by_modality.XR.p50" in leaves
    assert set(leaves) <= set(acr)
    for path, values in leaves.items():
        entry = acr[path]
        assert entry["n"] == len(values) and entry["mean"] == pytest.approx(statistics.fmean(values), abs=1e-6)
        if path.rsplit(".", 1)[1] in ("p50", "p95", "p99"):
            counted = [_lookup(r, path.rsplit(".", 1)[0] + ".n") for r in reps if _lookup(r, path) is not None]
            assert None not in counted
            assert entry["observations"] == pytest.approx(statistics.fmean([float(c or 0) for c in counted]), abs=1e-6)
        else:
            assert "observations" not in entry


def _lookup(tree: object, dotted: str) -> float | None:
    for key in dotted.split("."):
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return None if tree is None or isinstance(tree, (dict, list, str)) else float(tree)  # type: ignore[arg-type]


def test_a_percentile_missing_in_some_replications_is_averaged_over_the_others() -> None:
    reps: list[dict[str, object]] = [
        {"delivery_time_s_by_org": {"RGT": {"n": 4, "p50": 10.0}, "NVC01": {"n": 0, "p50": None}}},
        {"delivery_time_s_by_org": {"RGT": {"n": 0, "p50": None}, "NVC01": {"n": 0, "p50": None}}},
        {"delivery_time_s_by_org": {"RGT": {"n": 8, "p50": 14.0}, "NVC01": {"n": 0, "p50": None}}}]
    out = across(reps)
    p50 = out["delivery_time_s_by_org.RGT.p50"]
    assert isinstance(p50, dict)
    assert p50["n"] == 2 and p50["mean"] == 12.0 and p50["observations"] == 6.0
    assert p50["ci95"] == pytest.approx(float(student_t.ppf(0.975, 1)) * statistics.stdev([10.0, 14.0]) / math.sqrt(2))
    assert "delivery_time_s_by_org.NVC01.p50" not in out
    n = out["delivery_time_s_by_org.NVC01.n"]
    assert isinstance(n, dict) and n["mean"] == 0 and n["n"] == 3


def test_upload_utilisation_counts_only_the_time_an_organisation_is_a_member() -> None:
    """Review 1 m11: an organisation that joins half-way showed half its utilisation (its absence counted as idle),
    which also lowered fairness.jain_upload_utilisation."""
    sc = _five_trusts("groups[2].joins=1d", "scenario.replications=1")
    topology = build_topology(sc)
    (r,) = simulate(sc, [0], jobs=1)
    orgs = replication_summary(r, sc, topology)["organisations"]
    assert isinstance(orgs, dict)
    for o in topology.orgs:
        member = sc.duration - (86400.0 if o.group == "tele" else 0.0)
        got = orgs[o.code]["upload_utilisation"]
        assert got == pytest.approx(r.total_up[o.index] / (o.up * member), rel=1e-6, abs=1e-9), o.code
    assert any(o.group == "tele" and r.total_up[o.index] > 0 for o in topology.orgs)
