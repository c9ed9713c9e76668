"""`meshsim report` and `meshsim compare`: Markdown or HTML with tables and matplotlib plots."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path

from simulations import plots
from simulations.scenario.errors import ScenarioError
from simulations.scenario.parse import load_scenario
from simulations.summary import KEY_METRICS, lookup, percentile
from simulations.workload import PRIORITIES


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


def report(run_dir: Path, fmt_name: str, out: Path | None = None) -> Path:
    summary = read_run_file(run_dir / "summary.json")
    manifest = read_run_file(run_dir / "manifest.json")
    scen = manifest.get("scenario", {})
    assert isinstance(scen, dict)
    name, design = str(scen.get("name")), str(scen.get("design"))
    dist = plots.load_distributions(run_dir)
    title = f"{name}: {design}"
    plots.cdf_plot(dist, run_dir / "report-cdf.png", title)
    plots.box_plot(dist, run_dir / "report-box.png", title)
    output = load_scenario(run_dir / "scenario.toml").output  # the run's own copy, read like any scenario
    plots.timeseries_plot(run_dir, run_dir / "report-timeseries.png", title, output.timeseries_bin, output.hub_bin)
    reps = summary.get("replications", [])
    assert isinstance(reps, list)
    across = summary.get("across_replications", {})
    assert isinstance(across, dict)
    pkg = manifest.get("package", {})
    assert isinstance(pkg, dict)
    d = Doc()
    d.h(1, f"meshsim report: {name} ({design})")
    d.p(f"{len(reps)} replication(s); scenario sha256 {str(scen.get('sha256'))[:16]}…; dicom-mesh "
        f"{pkg.get('version')}, Python {pkg.get('python')}. Delivery time runs from the study reaching the sender's "
        "node to the recipient holding every block verified.")
    d.h(2, "Key metrics (mean ± 95 % confidence half-width over replications)")
    d.table(["metric", "value"], [[_label(p), _mean_ci(across.get(_label(p)))] for p in KEY_METRICS
                                  if _label(p) in across])
    d.h(2, "Delivery time")
    d.img("report-cdf.png", "delivery-time and time-to-first-image CDFs by priority")
    rows = []
    for p in PRIORITIES:
        hist = dist.pooled("delivery", p.value)
        first = dist.pooled("first", p.value)
        if sum(hist):
            rows.append([p.value, f"{sum(hist):,}"] + [fmt(percentile(hist, q)) for q in (50, 95, 99)]
                        + [fmt(percentile(first, 50)), fmt(percentile(first, 95))])
    d.table(["priority", "transfers", "p50 (s)", "p95 (s)", "p99 (s)", "first image p50 (s)", "first image p95 (s)"],
            rows)
    d.img("report-box.png", "delivery time by modality")
    d.h(2, "Load over time")
    d.img("report-timeseries.png", "upload of all organisations and hub load over time")
    if reps:
        r0 = reps[0]
        assert isinstance(r0, dict)
        orgs = r0.get("organisations", {})
        assert isinstance(orgs, dict)
        top = sorted(orgs.items(), key=lambda kv: -float(kv[1]["up_bytes"]))[:20]
        d.h(2, "Organisations (replication 0, top 20 by bytes sent)")
        d.table(["org", "group", "up (GB)", "down (GB)", "peak up (MB/s)", "upload utilisation"],
                [[k, str(v["group"]), fmt(v["up_bytes"] / 1e9), fmt(v["down_bytes"] / 1e9),
                  fmt(v["peak_up_Bps"] / 1e6), fmt(v["upload_utilisation"])] for k, v in top])
        faults = r0.get("faults", {})
        assert isinstance(faults, dict)
        d.h(2, "Faults (replication 0)")
        d.p(f"{faults.get('outages_touching_transfers')} outage(s) touched {faults.get('affected_transfers')} "
            f"transfer(s); {fmt(faults.get('affected_success_rate'))} of those were delivered; recovery time "
            f"(outage end to the last affected transfer delivered) mean {fmt(faults.get('recovery_s_mean'))} s, "
            f"max {fmt(faults.get('recovery_s_max'))} s.")
        outages = faults.get("outages", [])
        assert isinstance(outages, list)
        if outages:
            worst = sorted(outages, key=lambda o: -int(o["affected"]))[:15]
            d.table(["what", "org", "cause", "start (h)", "length (h)", "affected", "delivered", "failed",
                     "recovery (s)"],
                    [[str(o["what"]), str(o["org"]), str(o["cause"]), fmt(o["start_s"] / 3600),
                      fmt((o["end_s"] - o["start_s"]) / 3600), fmt(o["affected"]), fmt(o["delivered"]),
                      fmt(o["failed"]), fmt(o["recovery_s"])] for o in worst])
        attack = r0.get("attack", {})
        assert isinstance(attack, dict)
        d.h(2, "Attacks (replication 0)")
        d.table(["measure", "value"], [[k, fmt(v) if not isinstance(v, dict) else
                                        ", ".join(f"{p} at {fmt(t)} s" for p, t in v.items()) or "-"]
                                       for k, v in attack.items()])
        reasons = r0.get("failure_reasons", {})
        if isinstance(reasons, dict) and reasons:
            d.h(2, "Failures (replication 0)")
            d.table(["reason", "transfers"], [[k, fmt(v)] for k, v in reasons.items()])
    target = out or run_dir / ("report.html" if fmt_name == "html" else "report.md")
    target.write_text(d.html(title) if fmt_name == "html" else d.markdown(), encoding="utf-8")
    return target


def compare(run_dirs: list[Path], out: Path | None) -> tuple[list[str], list[list[str]]]:
    names: list[str] = []
    summaries = []
    for rd in run_dirs:
        summary = read_run_file(rd / "summary.json")
        summaries.append(summary)
        names.append(f"{summary.get('scenario')}/{summary.get('design')} ({rd.name})")
    header = ["metric"] + names
    rows = []
    for path in KEY_METRICS:
        label = _label(path)
        cells = []
        for s in summaries:
            across = s.get("across_replications", {})
            cells.append(_mean_ci(across.get(label)) if isinstance(across, dict) else "-")
        if any(c != "-" for c in cells):
            rows.append([label] + cells)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        dists = [(n, plots.load_distributions(rd)) for n, rd in zip(names, run_dirs)]
        plots.compare_cdf_plot(dists, out / "compare-cdf.png")
        p95: dict[str, list[float | None]] = {}
        for p in PRIORITIES:
            p95[p.value] = [lookup(s, ("across_replications", f"delivery_time_s.by_priority.{p.value}.p95", "mean"))
                            for s in summaries]
        plots.compare_bars_plot(names, p95, out / "compare-p95.png", "delivery time p95 (s)")
        d = Doc()
        d.h(1, "meshsim compare")
        d.table(header, rows)
        d.img("compare-cdf.png", "delivery-time CDFs")
        d.img("compare-p95.png", "p95 delivery time by priority")
        (out / "compare.md").write_text(d.markdown(), encoding="utf-8")
    return header, rows
