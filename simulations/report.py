"""`meshsim report` and `meshsim compare`: Markdown or HTML with tables and matplotlib plots.

The Python API (used by `meshsim study` too):

* `load_run(run_dir) -> Run`: a run folder's summary and manifest, read and checked.
* `build_report(run, ccdf=False) -> Doc` (plots written into the run folder), made of section functions
  (`key_metrics_section`, `delivery_section`, `load_section`, `organisations_section`, `costs_section`,
  `faults_section`, `attacks_section`) that each append to a `Doc`; `report(run_dir, fmt, out, ccdf)` writes it.
* `compare(run_dirs, out=None, ccdf=False) -> Comparison`: key metrics side by side, paired differences vs
  the first run (common random numbers) or independent intervals when the runs are not paired;
  `compare_doc(comparison, out, ccdf)` writes the plots and returns the document, `comparison_text` the CLI text.

Every figure is either a number with what stands behind it (a percentile from fewer than
`stats.SMALL_SAMPLE` transfers says "(n = 8 stat transfers)"; an interval from fewer than
`stats.SMALL_REPLICATIONS` replications says so) or says why it is not reported (time to first image
from a run whose scheduler blocks aggregate several of the node's 1 MiB blocks).
"""

from __future__ import annotations

import html
import json
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from simulations import plots
from simulations.scenario.errors import ScenarioError
from simulations.scenario.parse import load_scenario
from simulations.stats import (
    CONFIDENCE,
    SMALL_REPLICATIONS,
    SMALL_SAMPLE,
    Interval,
    interval,
    paired,
    small_sample,
)
from simulations.summary import KEY_METRICS, lookup, percentile
from simulations.workload import PRIORITIES

#: the node's own block size; a run whose scheduler blocks are larger aggregates them (docs/researchers.md 3)
NODE_BLOCK = 1 << 20
FIRST_IMAGE = "time_to_first_image_s"


def read_run_file(path: Path) -> dict[str, object]:
    """A JSON object a run wrote (summary.json, manifest.json), or a ScenarioError naming the problem."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ScenarioError(f"{path.parent}: not a meshsim run folder (no {path.name})") from None
    except (OSError, ValueError) as exc:
        raise ScenarioError(f"{path}: cannot read: {exc}") from None
    if not isinstance(value, dict):
        raise ScenarioError(f"{path}: not a meshsim {path.stem}")
    return value


def fmt(value: object, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if abs(value) >= 1e6:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}"
    return str(value)


def _mean_ci(cell: object) -> str:
    if not isinstance(cell, dict):
        return "-"
    mean, ci = cell.get("mean"), cell.get("ci95")
    return fmt(mean) + ("" if ci in (None, 0, 0.0) else f" ± {fmt(ci, 2)}")


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Para:
    text: str


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class Image:
    src: str
    alt: str


class Doc:
    """A tiny document model rendered to Markdown or HTML."""

    def __init__(self) -> None:
        self.parts: list[Heading | Para | Table | Image] = []

    def h(self, level: int, text: str) -> None:
        self.parts.append(Heading(level, text))

    def p(self, text: str) -> None:
        self.parts.append(Para(text))

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.parts.append(Table(header, rows))

    def img(self, src: str, alt: str) -> None:
        self.parts.append(Image(src, alt))

    def markdown(self) -> str:
        out: list[str] = []
        for part in self.parts:
            if isinstance(part, Heading):
                out.append("#" * part.level + " " + part.text)
            elif isinstance(part, Para):
                out.append(part.text)
            elif isinstance(part, Image):
                out.append(f"![{part.alt}]({part.src})")
            else:
                out.append("| " + " | ".join(part.header) + " |")
                out.append("|" + "|".join("---" for _ in part.header) + "|")
                out.extend("| " + " | ".join(r) + " |" for r in part.rows)
            out.append("")
        return "\n".join(out)

    def html(self, title: str) -> str:
        esc = html.escape
        out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>",
               "<style>body{font-family:sans-serif;max-width:1150px;margin:2em auto}table{border-collapse:collapse}"
               "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#eee}"
               "td:first-child{text-align:left}img{max-width:100%}</style></head><body>"]
        for part in self.parts:
            if isinstance(part, Heading):
                out.append(f"<h{part.level}>{esc(part.text)}</h{part.level}>")
            elif isinstance(part, Para):
                out.append(f"<p>{esc(part.text)}</p>")
            elif isinstance(part, Image):
                out.append(f"<p><img src='{esc(part.src)}' alt='{esc(part.alt)}'></p>")
            else:
                out.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in part.header) + "</tr>")
                out.extend("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in part.rows)
                out.append("</table>")
        out.append("</body></html>")
        return "\n".join(out) + "\n"


def _label(path: tuple[str, ...]) -> str:
    return ".".join(path)


def _dict(value: object) -> dict[str, object]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[object]:
    return value if isinstance(value, list) else []


def fmt_bytes(n: float) -> str:
    """1073741824 -> '1 GiB', 4194304 -> '4 MiB' (binary units, as the scenario writes granularity)."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.4g} {unit}"
    return f"{n:.0f} B"


@dataclass(frozen=True)
class Run:
    """One run folder: its summary.json and manifest.json."""

    path: Path
    summary: dict[str, object]
    manifest: dict[str, object]

    @property
    def scenario(self) -> dict[str, object]:
        return _dict(self.manifest.get("scenario"))

    @property
    def name(self) -> str:
        return str(self.scenario.get("name", self.summary.get("scenario")))

    @property
    def design(self) -> str:
        return str(self.scenario.get("design", self.summary.get("design")))

    @property
    def label(self) -> str:
        return f"{self.name}/{self.design} ({self.path.name})"

    @property
    def replications(self) -> list[dict[str, object]]:
        return [r for r in _list(self.summary.get("replications")) if isinstance(r, dict)]

    @property
    def across(self) -> dict[str, object]:
        return _dict(self.summary.get("across_replications"))

    @property
    def granularity(self) -> float | None:
        """The scheduler block size the run used (design_settings; None for a design without a scheduler)."""
        value = _dict(self.manifest.get("design_settings")).get("granularity_bytes")
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    def values(self, label: str) -> dict[int, float | None]:
        """A metric's value in each replication, by replication number."""
        path = tuple(label.split("."))
        out: dict[int, float | None] = {}
        for k, r in enumerate(self.replications):
            number = r.get("replication", k)
            out[int(number) if isinstance(number, int) else k] = lookup(r, path)
        return out


def load_run(run_dir: Path) -> Run:
    return Run(run_dir, read_run_file(run_dir / "summary.json"), read_run_file(run_dir / "manifest.json"))


def first_image_note(run: Run) -> str | None:
    """Why a run's time-to-first-image figures are not reported, or None when they are.

    When scheduler blocks aggregate several of the node's 1 MiB blocks, the first image's timing depends on the
    aggregation (docs/researchers.md section 3), so the figure is not the node's."""
    g = run.granularity
    if g is None or g <= NODE_BLOCK:
        return None
    return f"not reported: blocks aggregated to {fmt_bytes(g)} (docs/researchers.md section 3)"


def aggregation_note(run: Run) -> str | None:
    """What a reader must know about a run's delivery-time percentiles when its scheduler blocks aggregate several of
    the node's 1 MiB blocks (None when they do not): the effect is measured in docs/researchers.md section 3."""
    g = run.granularity
    if g is None or g <= NODE_BLOCK:
        return None
    return (f"delivery times of {run.label} come from scheduler blocks aggregated to {fmt_bytes(g)} (the node sends "
            "1 MiB blocks): see docs/researchers.md section 3 for the measured effect of aggregation on delivery "
            "percentiles before comparing them with a 1 MiB run")


#: what the key-metric figures are (report and compare); the pooled table says what it is itself
KEY_ESTIMATOR = ("Each figure is the mean over the n replications of that replication's own value (for a percentile: "
                 "the percentile of that replication's transfers) ± the 95 % Student-t half-width at n - 1 degrees "
                 "of freedom. With few transfers per replication a per-replication p95 is close to that replication's "
                 "maximum, so this mean differs from the pooled percentile (all replications' transfers in one "
                 "histogram, the Delivery time table): read the pooled figure for the percentile itself, and the mean "
                 "± half-width for how much it varies between replications.")


def _percentile_key(label: str) -> bool:
    return re.fullmatch(r"p\d+", label.rsplit(".", 1)[-1]) is not None


def _what(label: str) -> str:
    """'delivery_time_s.by_priority.stat.p95' -> 'stat transfers'; '...all.p50' -> 'transfers'."""
    parts = label.split(".")
    group = parts[-2] if len(parts) >= 3 else "all"
    return "transfers" if group == "all" else f"{group} transfers"


def observations(run: Run, label: str) -> float | None:
    """The mean number of transfers behind a percentile in one replication (None for other metrics).

    From the summary's `observations` when it has one, else from each replication's `n` beside the percentile."""
    if not _percentile_key(label):
        return None
    cell = _dict(run.across.get(label))
    given = cell.get("observations")
    if isinstance(given, (int, float)):
        return float(given)
    path = tuple(label.split(".")[:-1]) + ("n",)
    ns = [v for v in (lookup(r, path) for r in run.replications) if v is not None]
    return statistics.fmean(ns) if ns else None


def sample_note(n: float | None, what: str) -> str:
    """' (n = 8 stat transfers)' when fewer than stats.SMALL_SAMPLE transfers stand behind a figure, else ''."""
    if n is None:
        return ""
    warning = small_sample(round(n), what)
    return f" ({warning})" if warning else ""


def replications_note(n: int) -> str | None:
    """What a reader must know about intervals from few replications (None from SMALL_REPLICATIONS on)."""
    if n >= SMALL_REPLICATIONS:
        return None
    if n <= 1:
        return f"{n} replication: no interval (run at least {SMALL_REPLICATIONS} for one a reviewer accepts)."
    return (f"Intervals from {n} replications, fewer than {SMALL_REPLICATIONS}: the t interval at {n - 1} degree(s) "
            "of freedom is wide and rests on the replications' values being roughly normal.")


def metric_cell(run: Run, label: str) -> str:
    """mean ± half-width of one metric, with its small-sample warning; or why it is not reported."""
    if label.startswith(FIRST_IMAGE):
        note = first_image_note(run)
        if note is not None:
            return note
    cell = run.across.get(label)
    if not isinstance(cell, dict):
        return "-"
    return _mean_ci(cell) + sample_note(observations(run, label), _what(label))


# ---------------------------------------------------------------------------------------------- report sections


def header_section(d: Doc, run: Run) -> None:
    pkg = _dict(run.manifest.get("package"))
    d.h(1, f"meshsim report: {run.name} ({run.design})")
    d.p(f"{len(run.replications)} replication(s); scenario sha256 {str(run.scenario.get('sha256'))[:16]}…; "
        f"dicom-mesh {pkg.get('version')}, Python {pkg.get('python')}. Delivery time runs from the study reaching "
        "the sender's node to the recipient holding every block verified.")


def key_metrics_section(d: Doc, run: Run) -> None:
    d.h(2, "Key metrics (mean over replications of each replication's figure ± 95 % t half-width)")
    d.p(KEY_ESTIMATOR)
    d.table(["metric", "value"], [[_label(p), metric_cell(run, _label(p))] for p in KEY_METRICS
                                  if _label(p) in run.across])
    for note in (replications_note(len(run.replications)), aggregation_note(run)):
        if note:
            d.p(note[0].upper() + note[1:] + ("" if note.endswith(".") else "."))


def delivery_section(d: Doc, run: Run, dist: plots.Distributions, ccdf: bool = False) -> None:
    """The CDF (and with `ccdf` the CCDF) plot, percentiles by priority from the pooled histograms, box plot."""
    title = f"{run.name}: {run.design}"
    note = first_image_note(run)
    plots.cdf_plot(dist, run.path / "report-cdf.png", title, first_image_note=note)
    plots.box_plot(dist, run.path / "report-box.png", title)
    d.h(2, "Delivery time")
    d.img("report-cdf.png", "delivery-time and time-to-first-image CDFs by priority")
    if ccdf:
        plots.cdf_plot(dist, run.path / "report-ccdf.png", title, ccdf=True, first_image_note=note)
        d.img("report-ccdf.png", "delivery-time and time-to-first-image complementary CDFs by priority (log axes)")
    rows = []
    for p in PRIORITIES:
        hist = dist.pooled("delivery", p.value)
        n = sum(hist)
        if not n:
            continue
        first = dist.pooled("first", p.value)
        firsts = [note or "-"] * 2 if note else [fmt(percentile(first, 50)), fmt(percentile(first, 95))]
        warning = small_sample(n, f"{p.value} transfers")
        rows.append([p.value, f"{n:,}"] + [fmt(percentile(hist, q)) for q in (50, 95, 99)] + firsts
                    + [f"({warning})" if warning else ""])
    d.p(f"Pooled percentiles: the percentile of all transfers of all {len(run.replications)} replication(s) in one "
        "histogram (not the key metrics' mean of per-replication percentiles).")
    agg = aggregation_note(run)
    if agg:
        d.p(agg[0].upper() + agg[1:] + ".")
    d.table(["priority", "transfers", "p50 (s)", "p95 (s)", "p99 (s)", "first image p50 (s)", "first image p95 (s)",
             "note"], rows)
    d.img("report-box.png", "delivery time by modality")


def load_section(d: Doc, run: Run) -> None:
    output = load_scenario(run.path / "scenario.toml").output  # the run's own copy, read like any scenario
    end = run.scenario.get("duration_s")
    plots.timeseries_plot(run.path, run.path / "report-timeseries.png", f"{run.name}: {run.design}",
                          output.timeseries_bin, output.hub_bin, run.design,
                          float(end) if isinstance(end, (int, float)) else 0.0)
    d.h(2, "Load over time")
    d.img("report-timeseries.png", "upload of all organisations over time" if run.design == "mesh"
          else "upload of all organisations and hub load over time")


def _names(run: Run, tree: str) -> list[str]:
    """The organisations (or link classes) with an interval across replications in `tree`."""
    prefix = tree + "."
    return sorted({label[len(prefix):].rsplit(".", 1)[0] for label in run.across
                   if label.startswith(prefix) and _percentile_key(label)})


def _mean_of(run: Run, label: str) -> float:
    x = _dict(run.across.get(label)).get("mean")
    return float(x) if isinstance(x, (int, float)) else -1.0


def _percentile_table(d: Doc, run: Run, title: str, tree: str, key: str, limit: int | None = None,
                      level: int = 2) -> None:
    """Percentiles per org or link class across replications (mean ± 95 % t half-width, n replications). With
    `limit`, the slowest by mean p95 among those with at least stats.SMALL_SAMPLE transfers per replication; the
    others are listed by name (their percentiles rest on too few transfers to rank)."""
    names = _names(run, tree)
    if not names:
        return
    ranked, small = names, []
    if limit is not None:
        def obs(name: str) -> float:
            return observations(run, f"{tree}.{name}.p95") or 0.0
        ranked = sorted((x for x in names if obs(x) >= SMALL_SAMPLE), key=lambda x: (-_mean_of(run, f"{tree}.{x}.p95"), x))
        small = [x for x in names if obs(x) < SMALL_SAMPLE]
    rows = []
    for name in ranked[:limit]:
        n = observations(run, f"{tree}.{name}.p95") or observations(run, f"{tree}.{name}.p50")
        reps = _dict(run.across.get(f"{tree}.{name}.p50")).get("n")
        rows.append([name, fmt(n, 4) if n is not None else "-", fmt(reps)]
                    + [_mean_ci(run.across.get(f"{tree}.{name}.{q}")) for q in ("p50", "p95", "p99")]
                    + [sample_note(n, f"transfers ({key} {name})").strip()])
    d.h(level, title)
    if rows:
        d.table([key, "transfers per replication", "replications", "p50 (s)", "p95 (s)", "p99 (s)", "note"], rows)
    if limit is not None and len(ranked) > limit:
        d.p(f"The {limit} slowest by mean p95 of the {len(ranked):,} with at least {SMALL_SAMPLE} transfers per "
            "replication; every one is in summary.json.")
    if small:
        shown = ", ".join(small[:40]) + (f" and {len(small) - 40:,} more" if len(small) > 40 else "")
        d.p(f"{len(small):,} {key}(s) with fewer than {SMALL_SAMPLE} transfers per replication, not ranked (their "
            f"percentiles rest on too few transfers): {shown}.")


def organisations_section(d: Doc, run: Run) -> None:
    if not run.replications:
        return
    r0 = run.replications[0]
    orgs = _dict(r0.get("organisations"))

    def up(v: dict[str, object]) -> float:
        x = v.get("up_bytes")
        return float(x) if isinstance(x, (int, float)) else 0.0

    def num(v: dict[str, object], key: str, scale: float) -> str:
        x = v.get(key)
        return fmt(x / scale) if isinstance(x, (int, float)) else "-"

    top = sorted(((k, _dict(v)) for k, v in orgs.items()), key=lambda kv: -up(kv[1]))[:20]
    d.h(2, "Organisations (replication 0, top 20 by bytes sent)")
    d.table(["org", "group", "up (GB)", "down (GB)", "peak up (MB/s)", "upload utilisation"],
            [[k, str(v.get("group")), num(v, "up_bytes", 1e9), num(v, "down_bytes", 1e9), num(v, "peak_up_Bps", 1e6),
              num(v, "upload_utilisation", 1.0)] for k, v in top])
    _percentile_table(d, run, "Delivery time by recipient organisation (mean ± 95 % t half-width over replications, "
                      f"slowest 20 by mean p95 with at least {SMALL_SAMPLE} transfers per replication)",
                      "delivery_time_s_by_org", "org", limit=20)
    link_class_section(d, run)


def link_class_section(d: Doc, run: Run, level: int = 2) -> None:
    """Delivery time per link class (the transfer's bottleneck access rate), across replications."""
    _percentile_table(d, run, ("Delivery time by link class (bottleneck access rate; mean ± 95 % t half-width over "
                               "replications)") if level == 2 else f"Delivery time by link class: {run.label}",
                      "delivery_time_s_by_link_class", "link class", level=level)


#: the cost measures compare and report show, with their unit (None: the scenario's currency)
COSTS: tuple[tuple[str, str | None], ...] = (
    ("costs.transfer_gb", "GB"), ("costs.hub_stored_gb_months", "GB-months"), ("costs.transfer_cost", None),
    ("costs.storage_cost", None), ("costs.total_cost", None))


def currency_of(run: Run) -> str | None:
    return next((str(c.get("currency")) for c in (_dict(r.get("costs")) for r in run.replications)
                 if c.get("currency")), None)


def costs_section(d: Doc, run: Run) -> None:
    """Costs per replication's mean, when the summary has them (runs from before issue 18 do not)."""
    currency = currency_of(run) or "currency"
    rows = [[label, unit or currency, metric_cell(run, label)] for label, unit in COSTS if label in run.across]
    if not rows:
        return
    d.h(2, "Costs (mean ± 95 % half-width over replications)")
    d.table(["measure", "unit", "value"], rows)
    d.p("Costs count every byte of the run, warm-up and drain traffic included (unlike the other metrics, which "
        "leave out studies of the warm-up): docs/researchers.md section 4.")


def faults_text(faults: dict[str, object]) -> str:
    """The faults paragraph: counts from the summary's own counts (delivered is a count, the rate a percentage)."""
    touched, affected = faults.get("outages_touching_transfers"), faults.get("affected_transfers")
    delivered = faults.get("affected_delivered")
    rate = faults.get("affected_success_rate")
    if not isinstance(delivered, int) and isinstance(rate, (int, float)) and isinstance(affected, int):
        delivered = round(rate * affected)  # a summary written before affected_delivered was kept
    share = f" ({100.0 * rate:.4g} %)" if isinstance(rate, (int, float)) else ""
    text = (f"{fmt(touched)} outage(s) touched transfers {fmt(affected)} time(s) (a transfer touched by two outages "
            f"counts twice); {fmt(delivered)} of those{share} were "
            f"delivered; recovery time (outage end to the last affected transfer delivered) mean "
            f"{fmt(faults.get('recovery_s_mean'))} s, max {fmt(faults.get('recovery_s_max'))} s.")
    listed = len(_list(faults.get("outages")))
    left = faults.get("outages_left_out")
    if isinstance(left, int) and left > 0:
        text += f" The summary lists {listed:,} of them; {left:,} more were left out."
    return text


def faults_section(d: Doc, run: Run) -> None:
    if not run.replications:
        return
    faults = _dict(run.replications[0].get("faults"))
    d.h(2, "Faults (replication 0)")
    d.p(faults_text(faults))
    outages = [_dict(o) for o in _list(faults.get("outages"))]
    if outages:
        def num(o: dict[str, object], key: str) -> float:
            x = o.get(key)
            return float(x) if isinstance(x, (int, float)) else 0.0

        worst = sorted(outages, key=lambda o: -num(o, "affected"))[:15]
        d.table(["what", "org", "cause", "start (h)", "length (h)", "affected", "delivered", "failed",
                 "recovery (s)"],
                [[str(o.get("what")), str(o.get("org")), str(o.get("cause")), fmt(num(o, "start_s") / 3600),
                  fmt((num(o, "end_s") - num(o, "start_s")) / 3600), fmt(o.get("affected")), fmt(o.get("delivered")),
                  fmt(o.get("failed")), fmt(o.get("recovery_s"))] for o in worst])


def attacks_section(d: Doc, run: Run) -> None:
    if not run.replications:
        return
    r0 = run.replications[0]
    attack = _dict(r0.get("attack"))
    d.h(2, "Attacks (replication 0)")
    d.table(["measure", "value"], [[k, fmt(v) if not isinstance(v, dict) else
                                    ", ".join(f"{p} at {fmt(t)} s" for p, t in v.items()) or "-"]
                                   for k, v in attack.items()])
    reasons = _dict(r0.get("failure_reasons"))
    if reasons:
        d.h(2, "Failures (replication 0)")
        d.table(["reason", "transfers"], [[k, fmt(v)] for k, v in reasons.items()])


def build_report(run: Run, ccdf: bool = False) -> Doc:
    """The report of one run, section by section (plots are written into the run folder)."""
    dist = plots.load_distributions(run.path)
    d = Doc()
    header_section(d, run)
    key_metrics_section(d, run)
    delivery_section(d, run, dist, ccdf)
    load_section(d, run)
    organisations_section(d, run)
    costs_section(d, run)
    faults_section(d, run)
    attacks_section(d, run)
    return d


def report(run_dir: Path, fmt_name: str, out: Path | None = None, ccdf: bool = False) -> Path:
    run = load_run(run_dir)
    d = build_report(run, ccdf)
    target = out or run_dir / ("report.html" if fmt_name == "html" else "report.md")
    title = f"{run.name}: {run.design}"
    target.write_text(d.html(title) if fmt_name == "html" else d.markdown(), encoding="utf-8")
    return target


# ---------------------------------------------------------------------------------------------- compare


@dataclass(frozen=True)
class Difference:
    """A run's metric minus the first run's, over replications: paired (common random numbers) or not."""

    metric: str
    run: str
    baseline: str
    mean: float
    half_width: float | None
    n: int  # pairs (paired) or the smaller number of replications (unpaired)
    paired: bool
    significant: bool  # paired: the interval excludes 0; unpaired: the two runs' own intervals do not overlap
    #: a percentile from fewer than stats.SMALL_SAMPLE transfers per replication in either run: never marked *
    small_sample: bool = False

    def cell(self) -> str:
        text = fmt(self.mean) + ("" if self.half_width is None else f" ± {fmt(self.half_width, 2)}")
        if self.small_sample:
            return text + " (small sample)"
        return text + (" *" if self.significant else "")


@dataclass
class Comparison:
    runs: list[Run]
    header: list[str]
    rows: list[list[str]]
    paired: bool
    pairing_note: str
    differences: list[Difference] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: under the differences table: how many were tested, the false positives expected, the Bonferroni level
    multiplicity_note: str = ""

    def difference_table(self) -> tuple[list[str], list[list[str]]]:
        others = [r.label for r in self.runs[1:]]
        header = ["metric"] + [f"{o} - {self.runs[0].label}" for o in others]
        by_metric: dict[str, dict[str, str]] = {}
        for diff in self.differences:
            by_metric.setdefault(diff.metric, {})[diff.run] = diff.cell()
        rows = [[m] + [cells.get(o, "-") for o in others] for m, cells in by_metric.items()]
        return header, rows

    def as_json(self) -> dict[str, object]:
        return {"header": self.header, "rows": self.rows, "paired": self.paired, "pairing": self.pairing_note,
                "differences": [{"metric": x.metric, "run": x.run, "baseline": x.baseline, "mean": x.mean,
                                 "half_width": x.half_width, "n": x.n, "paired": x.paired,
                                 "significant": x.significant} for x in self.differences],
                "notes": self.notes, "multiplicity": self.multiplicity_note}


#: the scenario parts that decide what the replications draw (studies, topology, faults); design keys are left out
WORKLOAD_PARTS = ("duration", "seed", "groups", "workload", "faults", "attackers")


def workload_differences(base: Run, other: Run) -> list[str] | None:
    """The parts of the two runs' scenarios (their scenario.toml copies) other than the design that differ, so
    replication k did not see the same studies in both; None when a scenario cannot be read."""
    try:
        a, b = load_scenario(base.path / "scenario.toml"), load_scenario(other.path / "scenario.toml")
    except (ScenarioError, OSError):
        return None
    return [k for k in WORKLOAD_PARTS if getattr(a, k) != getattr(b, k)]


def pairing(runs: list[Run]) -> tuple[bool, str]:
    """Whether every run drew its replications from the same seeds and streams as the first (common random
    numbers, from the manifests), and a sentence saying so."""
    base = runs[0]
    seeds = base.manifest.get("seeds")
    reps = sorted(base.values("success_rate"))
    for r in runs[1:]:
        if r.manifest.get("seeds") != seeds or not seeds:
            return False, (f"unpaired: {r.label} did not draw from the same seeds and streams as {base.label} "
                           "(manifest.json seeds); differences are of independent means, each run with its own "
                           "interval (* when the two intervals do not overlap)")
        if sorted(r.values("success_rate")) != reps:
            return False, (f"unpaired: {r.label} has replications {sorted(r.values('success_rate'))}, "
                           f"{base.label} {reps}; differences are of independent means, each run with its own "
                           "interval (* when the two intervals do not overlap)")
    caveats = []
    for r in runs[1:]:
        differ = workload_differences(base, r)
        if differ is None:
            caveats.append(f"{r.label}'s scenario could not be read, so the workloads may differ")
        elif differ:
            caveats.append(f"the scenarios of {r.label} and {base.label} differ in {', '.join(differ)}, so their "
                           "workloads may differ (replication k did not necessarily see the same studies)")
    return True, (f"paired by seed: every run drew replications {', '.join(map(str, reps))} with common random "
                  "numbers (the same seeds); differences vs the first run with paired t intervals (* when the "
                  "interval excludes 0)" + "".join(f"; {c}" for c in caveats))


def _finite(values: dict[int, float | None]) -> list[float]:
    return [v for v in values.values() if v is not None]


#: the rows and differences of `meshsim compare`: the key metrics and the costs
COMPARE_METRICS: tuple[str, ...] = tuple(_label(p) for p in KEY_METRICS) + tuple(label for label, _ in COSTS)


def _small(run: Run, label: str) -> bool:
    n = observations(run, label)
    return n is not None and n < SMALL_SAMPLE


def differences(runs: list[Run], is_paired: bool) -> list[Difference]:
    """Each compared metric of each run minus the first run's. A percentile from fewer than stats.SMALL_SAMPLE
    transfers per replication in either run is never marked significant (its per-replication values are biased
    towards each replication's extremes): the cell says "small sample" instead."""
    base = runs[0]
    out: list[Difference] = []
    for label in COMPARE_METRICS:
        if label.startswith(FIRST_IMAGE) and first_image_note(base) is not None:
            continue
        a = base.values(label)
        for r in runs[1:]:
            if label.startswith(FIRST_IMAGE) and first_image_note(r) is not None:
                continue
            b = r.values(label)
            if is_paired:
                keys = sorted(set(a) & set(b))
                iv = paired([a[k] for k in keys], [b[k] for k in keys])
                if iv is None:
                    continue
                small = _small(base, label) or _small(r, label)
                sig = not small and iv.half_width is not None and abs(iv.mean) > iv.half_width
                out.append(Difference(label, r.label, base.label, round(iv.mean, 6),
                                      None if iv.half_width is None else round(iv.half_width, 6), iv.n, True, sig,
                                      small))
            else:
                xa, xb = _finite(a), _finite(b)
                if not xa or not xb:
                    continue
                ia, ib = interval(xa), interval(xb)
                small = _small(base, label) or _small(r, label)
                out.append(Difference(label, r.label, base.label, round(ib.mean - ia.mean, 6), None,
                                      min(ia.n, ib.n), False, not small and _apart(ia, ib), small))
    return out


def multiplicity_note(diffs: list[Difference]) -> str:
    """One line under the differences table: with m tests at 95 %, about 0.05 m are marked * by chance alone."""
    m = sum(1 for x in diffs if not x.small_sample and (x.half_width is not None or not x.paired))
    if not m:
        return ""
    alpha = 1.0 - CONFIDENCE
    return (f"{m} difference(s) tested at {100 * CONFIDENCE:g} %: expect about {alpha * m:.1f} marked * by chance "
            f"when nothing differs; Bonferroni: treat a * as firm only if it holds at {100 * (1 - alpha / m):.4g} % "
            f"(each test at {alpha / m:.2g}).")


def _apart(a: Interval, b: Interval) -> bool:
    if a.low is None or a.high is None or b.low is None or b.high is None:
        return False
    return a.high < b.low or b.high < a.low


def compare(run_dirs: list[Path], out: Path | None = None, ccdf: bool = False) -> Comparison:
    """Key metrics of several runs side by side and their differences vs the first; with `out`, also
    compare.md and its plots there."""
    if not run_dirs:
        raise ScenarioError("compare: no run folders given")
    runs = [load_run(rd) for rd in run_dirs]
    header = ["metric"] + [r.label for r in runs]
    rows = []
    for label in COMPARE_METRICS:
        if not any(label in r.across for r in runs):
            continue
        rows.append([label] + [metric_cell(r, label) for r in runs])
    is_paired, note = pairing(runs) if len(runs) > 1 else (False, "one run: nothing to compare it with")
    diffs = differences(runs, is_paired) if len(runs) > 1 else []
    comparison = Comparison(runs, header, rows, is_paired, note, diffs, multiplicity_note=multiplicity_note(diffs))
    comparison.notes.append(f"Key metrics: {KEY_ESTIMATOR}")
    currencies = sorted({c for c in (currency_of(r) for r in runs) if c})
    if any(label in r.across for label, _ in COSTS for r in runs):
        comparison.notes.append("costs.transfer_gb in GB, costs.hub_stored_gb_months in GB-months, the *_cost rows in "
                                + (", ".join(currencies) if currencies else "the scenario's currency") + ".")
    for r in runs:
        rep_note = replications_note(len(r.replications))
        if rep_note:
            comparison.notes.append(f"{r.label}: {rep_note}")
        fi = first_image_note(r)
        if fi:
            comparison.notes.append(f"{r.label}: time to first image {fi}")
        agg = aggregation_note(r)
        if agg:
            comparison.notes.append(agg[0].upper() + agg[1:] + ".")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        doc = compare_doc(comparison, out, ccdf)
        (out / "compare.md").write_text(doc.markdown(), encoding="utf-8")
    return comparison


def bars(runs: list[Run]) -> dict[str, list[plots.Bar]]:
    """p95 delivery time by priority for each run: mean, t half-width, replications, transfers behind it."""
    out: dict[str, list[plots.Bar]] = {}
    for p in PRIORITIES:
        label = f"delivery_time_s.by_priority.{p.value}.p95"
        row = []
        for r in runs:
            cell = _dict(r.across.get(label))
            mean, ci, n = cell.get("mean"), cell.get("ci95"), cell.get("n")
            row.append(plots.Bar(float(mean) if isinstance(mean, (int, float)) else None,
                                 float(ci) if isinstance(ci, (int, float)) else None,
                                 int(n) if isinstance(n, int) else len(r.replications), observations(r, label)))
        out[p.value] = row
    return out


def compare_doc(c: Comparison, out: Path, ccdf: bool = False) -> Doc:
    """Write the comparison's plots into `out` and return its document."""
    styles = plots.run_styles([(r.label, r.design) for r in c.runs])
    dists = [(s, plots.load_distributions(r.path)) for s, r in zip(styles, c.runs)]
    plots.compare_cdf_plot(dists, out / "compare-cdf.png")
    plots.compare_bars_plot(styles, bars(c.runs), out / "compare-p95.png", "delivery time p95 (s)", c.paired)
    d = Doc()
    d.h(1, "meshsim compare")
    d.h(2, "Key metrics and costs (mean over replications of each replication's figure ± 95 % t half-width)")
    d.table(c.header, c.rows)
    for note in c.notes:
        d.p(note)
    d.h(2, f"Differences vs {c.runs[0].label}")
    d.p(c.pairing_note + ".")
    if c.differences:
        header, rows = c.difference_table()
        d.table(header, rows)
        if c.multiplicity_note:
            d.p(c.multiplicity_note)
    if any(_names(r, "delivery_time_s_by_link_class") for r in c.runs):
        d.h(2, "Delivery time by link class (bottleneck access rate; mean ± 95 % t half-width over replications)")
        for r in c.runs:
            link_class_section(d, r, level=3)
    d.img("compare-cdf.png", "delivery-time CDFs")
    if ccdf:
        plots.compare_cdf_plot(dists, out / "compare-ccdf.png", ccdf=True)
        d.img("compare-ccdf.png", "delivery-time complementary CDFs (log axes)")
    d.img("compare-p95.png", "p95 delivery time by priority, with 95 % t intervals")
    return d


def _text_table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header] + rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def comparison_text(c: Comparison) -> str:
    """The comparison as plain text for a terminal: key metrics, notes, differences vs the first run."""
    lines = _text_table(c.header, c.rows)
    lines.extend(c.notes)
    if len(c.runs) > 1:
        lines.append("")
        lines.append(f"differences vs {c.runs[0].label}: {c.pairing_note}")
        if c.differences:
            header, rows = c.difference_table()
            lines.extend(_text_table(header, rows))
            if c.multiplicity_note:
                lines.append(c.multiplicity_note)
    return "\n".join(lines)
