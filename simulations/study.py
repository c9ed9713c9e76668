"""`meshsim study`: hub vs mesh vs hybrid on one scenario, in one command (issue 18).

Each design runs the scenario's replications with the same seed, so
replication k of every design draws the same studies, topology and faults
(common random numbers). The study then runs the hub sensitivity sweep
(simulations/sensitivity.py) on the hub run (or the hybrid's when there is no
hub run), and writes DIR/report.md with:

* the hub parameters the runs used and the calibration check against the
  national hub's published figures (simulations/calibration.py);
* the key metrics per design, mean and Student-t half-width at n - 1 degrees
  of freedom over replications (simulations.stats.interval);
* per design, the difference from the hub: paired over replications
  (simulations.stats.paired, the common-random-number interval) beside the
  unpaired one (the two designs' half-widths combined as independent samples,
  sqrt(h_a^2 + h_b^2)), so a reader sees what pairing buys;
* costs per design from each replication summary's `costs` (transfer and hub
  storage in the scenario's currency), when the runs' summaries have them;
* the sensitivity table, the compare plots (simulations.report.compare) and
  small-sample warnings.

Everything the report prints is also in DIR/study.json (sorted keys, no wall
clock: the same scenario and seed give the same bytes).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from protocol.quantities import format_duration, format_rate
from simulations import calibration, outputs, sensitivity
from simulations.report import Doc, compare
from simulations.runner import ProgressHook, run
from simulations.scenario.errors import ScenarioError
from simulations.scenario.model import DesignKind, Scenario
from simulations.scenario.overrides import apply
from simulations.stats import SMALL_REPLICATIONS, Interval, interval, paired, small_sample, t_quantile
from simulations.summary import KEY_METRICS, lookup
from simulations.workload import DAY, PRIORITIES

REPORT = "report.md"
RESULTS = "study.json"
#: what the study tabulates: the workload's counts (identical across designs under common random numbers), then
#: the key metrics every summary has
METRICS: tuple[tuple[str, ...], ...] = (("transfers",), ("delivered",)) + KEY_METRICS
COST_KEYS = ("transfer_gb", "hub_stored_gb_months", "transfer_cost", "storage_cost", "total_cost")

Say = Callable[[str], None]


@dataclass(frozen=True)
class DesignRun:
    design: str
    run_dir: Path
    scenario: Scenario
    replications: list[dict[str, object]]  # summary.json's per-replication summaries, by replication number

    def values(self, path: tuple[str, ...]) -> dict[int, float]:
        out = {}
        for r in self.replications:
            v = lookup(r, path)
            if v is not None and math.isfinite(v):
                out[_replication(r)] = v
        return out


def _replication(summary: object) -> int:
    """A per-replication summary's replication number (our own runner's summaries)."""
    value = lookup(summary, ("replication",)) if isinstance(summary, dict) else None
    if value is None:
        raise ScenarioError("a replication summary without its replication number")
    return int(value)


def parse_designs(text: str) -> list[DesignKind]:
    out: list[DesignKind] = []
    for name in (x.strip() for x in text.split(",")):
        if not name:
            continue
        try:
            kind = DesignKind(name)
        except ValueError:
            raise ScenarioError(f"--designs: unknown design {name!r} (hub, mesh, hybrid)") from None
        if kind in out:
            raise ScenarioError(f"--designs: {name} named twice")
        out.append(kind)
    if not out:
        raise ScenarioError("--designs: no design named (hub, mesh, hybrid)")
    return out


def design_scenario(base: Scenario, design: DesignKind, duration: str | None, replications: int | None) -> Scenario:
    values: list[tuple[str, object]] = [("design.kind", design.value)]
    if duration is not None:
        values.append(("scenario.duration", duration))
    if replications is not None:
        values.append(("scenario.replications", replications))
    return apply(base, values)


def _interval(values: Sequence[float]) -> Interval | None:
    return interval(list(values)) if values else None


def unpaired(a: Sequence[float], b: Sequence[float]) -> Interval | None:
    """b - a as if the designs had been run with independent seeds: the means' difference, with the two
    t half-widths (each at its own n - 1 df) combined as independent errors, sqrt(h_a^2 + h_b^2)."""
    ia, ib = _interval(a), _interval(b)
    if ia is None or ib is None:
        return None
    if ia.half_width is None or ib.half_width is None:
        return Interval(ib.mean - ia.mean, None, min(ia.n, ib.n))
    return Interval(ib.mean - ia.mean, math.hypot(ia.half_width, ib.half_width), min(ia.n, ib.n))


def g(x: float | None) -> str:
    """A number as the report prints it (4 significant digits; the exact value is in study.json)."""
    if x is None:
        return "-"
    if x != 0 and (abs(x) >= 1e6 or abs(x) < 1e-3):
        return f"{x:.4g}"
    return f"{x:.4g}" if abs(x) < 1e4 else f"{x:.0f}"


def gbit(bytes_per_s: float) -> str:
    return f"{bytes_per_s * 8 / 1e9:.3g} Gbit/s"


def cell(i: Interval | None) -> str:
    if i is None:
        return "-"
    return g(i.mean) + ("" if i.half_width is None else f" ± {g(i.half_width)}")


def _json(i: Interval | None) -> dict[str, object] | None:
    return None if i is None else {"mean": i.mean, "half_width": i.half_width, "n": i.n}


def run_designs(base: Scenario, out: Path, designs: Sequence[DesignKind], duration: str | None,
                replications: int | None, jobs: int | None, say: Say | None,
                progress: ProgressHook | None) -> list[DesignRun]:
    scenarios = [design_scenario(base, d, duration, replications) for d in designs]  # all refused before any run
    runs = []
    for i, (d, scn) in enumerate(zip(designs, scenarios)):
        if say is not None:
            say(f"{d.value}: {scn.replications} replication(s) of {format_duration(scn.duration)}, seed {scn.seed}")

        def hook(f: float, i: int = i) -> None:
            if progress is not None:
                progress((i + f) / len(designs))

        outcome = run(scn, out / d.value, jobs=jobs, progress=hook)
        reps = outcome.summary["replications"]
        assert isinstance(reps, list)  # our own runner's summary
        runs.append(DesignRun(d.value, out / d.value, scn, sorted(reps, key=_replication)))
    return runs


def study(base: Scenario, out: Path, designs: Sequence[DesignKind], *, duration: str | None = None,
          replications: int | None = None, jobs: int | None = None, sensitivity_duration: float | None =
          sensitivity.DEFAULT_DURATION, say: Say | None = None, progress: ProgressHook | None = None) -> Path:
    """Run every design, the hub sensitivity sweep (unless sensitivity_duration is None), and write the report."""
    swept = next((d for d in (DesignKind.HUB, DesignKind.HYBRID) if d in designs), None)
    if sensitivity_duration is not None and swept is not None:  # a sweep that cannot run is refused before the runs
        scn = design_scenario(base, swept, duration, replications)
        sensitivity.point_scenario(scn, 0.0, 1, min(sensitivity_duration, scn.duration))
    out.mkdir(parents=True, exist_ok=True)
    runs = run_designs(base, out, designs, duration, replications, jobs, say, progress)
    sens: list[sensitivity.Sensitivity] = []
    hubbed = [r for r in runs if r.design == DesignKind.HUB.value] or \
             [r for r in runs if r.design == DesignKind.HYBRID.value]
    if sensitivity_duration is not None and hubbed:
        s = sensitivity.for_run(hubbed[0].run_dir, sensitivity_duration, jobs, say)
        if s is not None:
            sens.append(s)
    compare([r.run_dir for r in runs], out)  # REPORT's overlaid CDFs and p95 bars, and compare.md
    return write_report(out, runs, sens)


def _costs(runs: Sequence[DesignRun]) -> tuple[str | None, dict[str, dict[str, Interval | None]]]:
    """Cost intervals per design and key, or ({}) when any run's summaries have no `costs`."""
    currency = None
    table: dict[str, dict[str, Interval | None]] = {}
    for r in runs:
        per_rep = [x.get("costs") for x in r.replications]
        if not per_rep or not all(isinstance(c, dict) for c in per_rep):
            return None, {}
        for c in per_rep:
            assert isinstance(c, dict)
            currency = str(c.get("currency", currency))
        table[r.design] = {k: _interval(list(r.values(("costs", k)).values())) for k in COST_KEYS}
    return currency, table


def write_report(out: Path, runs: Sequence[DesignRun], sens: Sequence[sensitivity.Sensitivity]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    first = runs[0].scenario
    hub_run = next((r for r in runs if r.design == DesignKind.HUB.value), None)
    reference = hub_run or runs[0]
    n_reps = max(len(r.replications) for r in runs)
    data: dict[str, object] = {"scenario": first.name, "scenario_sha256": outputs.scenario_hash(first),
                               "seed": first.seed, "designs": [r.design for r in runs], "replications": n_reps,
                               "duration_s": first.duration, "reference": reference.design}
    d = Doc()
    d.h(1, f"meshsim study: {first.name}")
    d.p(f"Designs {', '.join(r.design for r in runs)}; {n_reps} replication(s) of {format_duration(first.duration)} "
        f"each, seed {first.seed}: replication k of every design draws the same studies, topology and faults "
        "(common random numbers), so differences between designs are paired by replication. Intervals are "
        "95 % Student-t at n - 1 degrees of freedom over replications. Runs in "
        + ", ".join(f"{r.design}/" for r in runs) + f"; exact numbers in {RESULTS}.")

    warnings = _warnings(runs)
    data["warnings"] = warnings
    if warnings:
        d.h(2, "Small-sample warnings")
        d.p("; ".join(warnings) + ".")

    hubbed = hub_run or next((r for r in runs if r.design == DesignKind.HYBRID.value), None)
    hub = (hubbed or runs[0]).scenario.hub
    d.h(2, "Hub parameters used, and the calibration check" if hubbed is not None else
        "Hub parameters (no hub or hybrid design in this study: unused), and the calibration check")
    d.table(["hub parameter", "value"], [
        ["ingress", format_rate(hub.ingress)], ["egress", format_rate(hub.egress)],
        ["latency (one way)", format_duration(hub.latency)], ["max_concurrent", f"{hub.max_concurrent}"],
        ["processing_delay (not public: see the sensitivity table)", format_duration(hub.processing_delay)],
        ["retention", format_duration(hub.retention)],
        ["availability", (f"random failures mtbf {format_duration(hub.availability.mtbf)}, mttr "
                          f"{format_duration(hub.availability.mttr)}" if hub.availability.mtbf else
                          "no random failures") + f", {len(hub.availability.scheduled)} scheduled window(s)"]])
    days = max(1, min(28, math.ceil(first.duration / DAY)))
    fig = calibration.workload_figures(first, days)
    low, high = calibration.public_mean_images_per_s()
    peak = calibration.PUBLIC_PEAK_IMAGES_PER_S
    data["hub"] = {"ingress_Bps": hub.ingress, "egress_Bps": hub.egress, "latency_s": hub.latency,
                   "max_concurrent": hub.max_concurrent, "processing_delay_s": hub.processing_delay,
                   "retention_s": hub.retention}
    data["calibration"] = {"days": fig.days, "studies_per_year": fig.studies_per_year,
                           "studies_per_week": fig.studies_per_week, "images_per_week": fig.images_per_week,
                           "images_per_study": fig.images_per_study, "bytes_per_image": fig.bytes_per_image,
                           "mean_images_per_s": fig.mean_images_per_s,
                           "peak_images_per_s_1min": fig.peak_images_per_s_1min,
                           "peak_images_per_s_5min": fig.peak_images_per_s_5min,
                           "hub_ingress_for_public_peak_Bps": fig.hub_ingress_for(peak),
                           "hub_egress_for_public_peak_Bps": fig.hub_egress_for(peak)}
    d.p(f"The workload's first {days} day(s), drawn as replication 0 draws them, against the national hub's "
        "published figures (docs/researchers.md, \"Calibrating the hub\"; the public figures are national: a "
        "regional scenario is not expected to match them).")
    d.table(["figure", "public (national hub)", "this scenario"], [
        ["studies a year", f"about {calibration.PUBLIC_STUDIES_PER_YEAR:,}", f"{fig.studies_per_year:,.0f}"],
        ["images a week", f"{calibration.PUBLIC_IMAGES_PER_WEEK[0] / 1e6:g}-"
                          f"{calibration.PUBLIC_IMAGES_PER_WEEK[1] / 1e6:g} million", f"{fig.images_per_week:,.0f}"],
        ["mean images/s", f"{low:.0f}-{high:.0f}", g(fig.mean_images_per_s)],
        ["peak images/s (5-min / 1-min bins of arrivals)", f"about {peak:g}",
         f"{g(fig.peak_images_per_s_5min)} / {g(fig.peak_images_per_s_1min)}"],
        ["images per study", f"{calibration.PUBLIC_IMAGES_PER_WEEK[0] * 52 / calibration.PUBLIC_STUDIES_PER_YEAR:.0f}"
                             f"-{calibration.PUBLIC_IMAGES_PER_WEEK[1] * 52 / calibration.PUBLIC_STUDIES_PER_YEAR:.0f}",
         g(fig.images_per_study)],
        ["organisations", f"{calibration.PUBLIC_ORGANISATIONS[0]}-{calibration.PUBLIC_ORGANISATIONS[1]} connected",
         f"{fig.organisations}"],
        [f"hub ingress / egress to carry {peak:g} images/s at these image sizes", "-",
         f"{gbit(fig.hub_ingress_for(peak))} / {gbit(fig.hub_egress_for(peak))}"]])

    # time to first image is reported only from designs whose scheduler blocks do not aggregate the node's 1 MiB
    # blocks (docs/researchers.md section 3); REPORT's rule, read from each design's run folder
    from simulations.report import aggregation_note, first_image_note, load_run  # late: report imports plots

    folders = {r.design: load_run(r.run_dir) for r in runs}
    not_reported = {r.design: first_image_note(folders[r.design]) for r in runs}

    def hidden(path: tuple[str, ...], design: str) -> str | None:
        return not_reported[design] if path[0] == "time_to_first_image_s" else None

    metrics: dict[str, dict[str, object]] = {}
    rows = []
    for path in METRICS:
        label = ".".join(path)
        cells = {r.design: _interval(list(r.values(path).values())) for r in runs}
        if all(c is None for c in cells.values()):
            continue
        metrics[label] = {k: (None if hidden(path, k) else _json(v)) for k, v in cells.items()}
        rows.append([label] + [hidden(path, r.design) or cell(cells[r.design]) for r in runs])
    data["metrics"] = metrics
    d.h(2, "Key metrics per design (mean ± 95 % t half-width over replications)")
    d.table(["metric"] + [r.design for r in runs], rows)
    for r in runs:
        note = aggregation_note(folders[r.design])
        if note is not None:
            d.p(note[0].upper() + note[1:] + ".")

    diffs: dict[str, dict[str, object]] = {}
    others = [r for r in runs if r is not reference]
    if others:
        d.h(2, f"Differences from the {reference.design} (design - {reference.design})")
        d.p("Paired: the mean and t interval of the per-replication differences (common random numbers). "
            "Unpaired: the difference of the means with both designs' half-widths combined as if their runs "
            "were independent. A paired interval narrower than the unpaired one is variance the designs share "
            "(the same studies and faults) that pairing removes.")
        rows = []
        for path in METRICS:
            label = ".".join(path)
            ref = reference.values(path)
            for r in others:
                if hidden(path, reference.design) or hidden(path, r.design):
                    continue  # a first-image figure of an aggregating design is not reported, nor its difference
                mine = r.values(path)
                common = sorted(set(ref) & set(mine))
                if not common:
                    continue
                pi = paired([ref[k] for k in common], [mine[k] for k in common])
                ui = unpaired([ref[k] for k in common], [mine[k] for k in common])
                diffs.setdefault(label, {})[r.design] = {"paired": _json(pi), "unpaired": _json(ui)}
                rows.append([label, r.design, cell(pi), cell(ui)])
        d.table(["metric", "design", "paired difference", "unpaired difference"], rows)
    data["differences"] = diffs

    currency, costs = _costs(runs)
    d.h(2, "Costs per design")
    if costs:
        data["costs"] = {"currency": currency, "by_design": {k: {c: _json(v) for c, v in cs.items()}
                                                              for k, cs in costs.items()}}
        d.p(f"From each replication summary's `costs` (prices in the scenario's [costs], {currency}; transfer: "
            "every byte over an access link, the hub's included, in and out; storage: the hub's stored bytes x "
            "hub.retention).")
        d.table(["design", "transfer (GB)", "hub stored (GB-months)", f"transfer ({currency})",
                 f"storage ({currency})", f"total ({currency})"],
                [[k] + [cell(cs[c]) for c in COST_KEYS] for k, cs in costs.items()])
    else:
        data["costs"] = None
        lacking = [r.design for r in runs if any(not isinstance(x.get("costs"), dict) for x in r.replications)]
        d.p(f"Not computed: the summary of {', '.join(lacking) or 'a run'} has no `costs` (a run folder written "
            "before summaries had them: rerun it); nothing is estimated in their place.")

    data["sensitivity"] = [sensitivity.as_json(s) for s in sens]
    d.h(2, "Hub sensitivity")
    if sens:
        for s in sens:
            d.p(sensitivity.caption(s))
            d.table(sensitivity.header(), sensitivity.rows(s))
    else:
        d.p("Not run (no hub or hybrid design in the study, or --no-sensitivity).")

    d.h(2, "Plots")
    d.img("compare-cdf.png", "delivery-time CDFs per design")
    d.img("compare-p95.png", "p95 delivery time by priority per design")
    outputs.write_json(out / RESULTS, data)
    target = out / REPORT
    target.write_text(d.markdown(), encoding="utf-8")
    return target


def _warnings(runs: Sequence[DesignRun]) -> list[str]:
    out = []
    n = min(len(r.replications) for r in runs)
    if n < SMALL_REPLICATIONS:
        t = f"t at {n - 1} df is {t_quantile(n - 1):.3g}: intervals are wide" if n > 1 else "no interval at all"
        out.append(f"n = {n} replication(s) per design ({t}; {SMALL_REPLICATIONS} or more advised)")
    for p in PRIORITIES:
        notes: dict[str, list[str]] = {}
        for r in runs:
            counts = r.values(("delivery_time_s", "by_priority", p.value, "n"))
            if not counts:
                continue
            least = int(min(counts.values()))
            note = small_sample(least, f"{p.value} transfers") if least else f"no {p.value} transfers"
            if note is not None:
                notes.setdefault(note, []).append(r.design)
        for note, names in notes.items():
            who = "every design" if len(names) == len(runs) else ", ".join(names)
            out.append(f"{who}: {note} in the smallest replication (its {p.value} percentiles are rough)")
    return out
