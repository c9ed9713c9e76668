"""Plots for reports and comparisons (matplotlib, Agg backend): CDFs and CCDFs, box plots, time series, bars.

Distributions are read back from a run's log histograms (distributions-r*.json),
pooled over replications; time series from timeseries-r0.csv and hub-r0.csv
(which list only non-empty bins: every bin in between is zero, and is plotted
as zero, so an outage shows as a gap at zero, not as a line across it).

Each plot is built by a `*_figure` function returning the matplotlib Figure
(tests read its artists: colours, tick labels, error bars, annotations) and
saved by the matching `*_plot` function. One colour per design everywhere
(`PALETTE`): a hub run is the same red in every comparison, whatever the
order of the arguments; several runs of one design differ by line style or hatch.
"""

from __future__ import annotations

import csv
import json
import math
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from simulations.engine.recorder import BINS_PER_DECADE, LOW_DECADE, NBINS  # noqa: E402
from simulations.scenario.errors import ScenarioError  # noqa: E402
from simulations.stats import SMALL_REPLICATIONS, SMALL_SAMPLE, small_sample  # noqa: E402
from simulations.summary import percentile  # noqa: E402
from simulations.workload import PRIORITIES  # noqa: E402

#: one colour per design, in every plot of every report and comparison
PALETTE: dict[str, str] = {"hub": "#c0392b", "mesh": "#2874a6", "hybrid": "#27ae60"}
#: a design this module does not know (an emulation, a future design)
OTHER_COLOUR = "#7f8c8d"
#: the 2nd, 3rd ... run of the same design in one comparison
LINESTYLES = ("-", "--", ":", "-.")
HATCHES = ("", "//", "..", "xx")
COLOURS = {"stat": "#8e44ad", "urgent": "#e67e22", "routine": "#34495e"}  # priorities, within one run's plots
SAVE = {"dpi": 110, "metadata": {"Software": None}}
TICK_WRAP = 14  # characters per line of a run label under a bar


def design_colour(design: str) -> str:
    return PALETTE.get(design, OTHER_COLOUR)


@dataclass(frozen=True)
class RunStyle:
    """How one run of a comparison is drawn: its design's colour, and a line style/hatch among same-design runs."""

    label: str
    design: str
    colour: str
    linestyle: str
    hatch: str


def run_styles(runs: Sequence[tuple[str, str]]) -> list[RunStyle]:
    """Styles for (label, design) pairs: the colour from the design, the line style from its occurrence."""
    seen: dict[str, int] = {}
    out = []
    for label, design in runs:
        k = seen.get(design, 0)
        seen[design] = k + 1
        out.append(RunStyle(label, design, design_colour(design), LINESTYLES[k % len(LINESTYLES)],
                            HATCHES[k % len(HATCHES)]))
    return out


@dataclass
class Distributions:
    delivery: dict[tuple[str, str], list[int]]  # (priority, modality) -> pooled histogram
    first_image: dict[tuple[str, str], list[int]]

    def pooled(self, which: str, priority: str | None = None, modality: str | None = None) -> list[int]:
        table = self.delivery if which == "delivery" else self.first_image
        out = [0] * NBINS
        for (p, m), h in table.items():
            if (priority is None or p == priority) and (modality is None or m == modality):
                for i, n in enumerate(h):
                    out[i] += n
        return out

    def modalities(self) -> list[str]:
        return sorted({m for _, m in self.delivery})


def _listed(run_dir: Path, prefix: str) -> list[Path]:
    """The run's files named `prefix`*.json that its manifest.json lists (an earlier run's left in the folder
    are not this run's); every such file when there is no readable manifest."""
    try:
        files = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8")).get("files")
    except (OSError, ValueError, AttributeError):
        files = None
    if not isinstance(files, dict):
        return sorted(run_dir.glob(prefix + "*.json"))
    return sorted(run_dir / n for n in files if isinstance(n, str) and n.startswith(prefix) and n.endswith(".json")
                  and "/" not in n)


def load_distributions(run_dir: Path) -> Distributions:
    delivery: dict[tuple[str, str], list[int]] = {}
    first: dict[tuple[str, str], list[int]] = {}
    found = _listed(run_dir, "distributions-r")
    if not found:  # plotting nothing would give empty figures and exit 0
        raise ScenarioError(f"{run_dir}: no distributions-r*.json, nothing to plot (a sweep point run as job-array "
                            f"commands has its data in rK/ folders: run `meshsim collect` on the sweep folder first)")
    for path in found:
        if not path.is_file():
            raise ScenarioError(f"{path}: listed in {run_dir / 'manifest.json'} but missing, nothing to plot")
        data = json.loads(path.read_text(encoding="utf-8"))
        for key, table in (("delivery_time_s", delivery), ("time_to_first_image_s", first)):
            for entry in data[key]:
                hist = table.setdefault((entry["priority"], entry["modality"]), [0] * NBINS)
                for i, n in entry["bins"].items():
                    hist[int(i)] += int(n)
    return Distributions(delivery, first)


def _edge(i: int) -> float:
    return float(10.0 ** (LOW_DECADE + (i + 1) / BINS_PER_DECADE))


def cdf_points(hist: list[int]) -> tuple[list[float], list[float]]:
    """(upper bin edge, fraction of transfers at most that long) at every non-empty bin."""
    total = sum(hist)
    xs: list[float] = []
    ys: list[float] = []
    seen = 0
    for i, n in enumerate(hist):
        if n:
            seen += n
            xs.append(_edge(i))
            ys.append(seen / total)
    return xs, ys


def ccdf_points(hist: list[int]) -> tuple[list[float], list[float]]:
    """(lower bin edge, fraction of transfers at least that long) at every non-empty bin, then the last bin's
    upper edge at the last fraction (1/n or more): the tail, drawable on a log y axis (it never reaches 0)."""
    total = sum(hist)
    xs: list[float] = []
    ys: list[float] = []
    left = total
    last = -1
    for i, n in enumerate(hist):
        if n:
            xs.append(_edge(i - 1))
            ys.append(left / total)
            left -= n
            last = i
    if last >= 0:
        xs.append(_edge(last))
        ys.append(ys[-1])
    return xs, ys


def _curve(hist: list[int], ccdf: bool) -> tuple[list[float], list[float]]:
    """A step curve (where="post"): a CDF from 0 at the first non-empty bin's lower edge, or the CCDF."""
    if ccdf:
        return ccdf_points(hist)
    xs, ys = cdf_points(hist)
    first = next(i for i, n in enumerate(hist) if n)
    return [_edge(first - 1)] + xs, [0.0] + ys


def _axes_for(ax: Axes, xlabel: str, ccdf: bool, smallest: float) -> None:
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.grid(True, which="both", alpha=0.3)
    if ccdf:
        ax.set_yscale("log")
        ax.set_ylabel("fraction at least this long (CCDF)")
        ax.set_ylim(min(0.5, smallest / 2.0), 1.5)
    else:
        ax.set_ylabel("fraction of transfers")
        ax.set_ylim(0, 1.01)


def sample_label(name: str, n: int, what: str) -> str:
    """A legend/tick label with the number of transfers behind it, flagged when too few for percentiles."""
    warning = small_sample(n, what)
    return f"{name} ({warning}: small sample)" if warning else f"{name} (n={n:,})"


def cdf_figure(dist: Distributions, title: str, ccdf: bool = False, first_image_note: str | None = None) -> Figure:
    """Delivery time and time to first image by priority; `first_image_note` replaces the second panel."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, which, label in ((axes[0], "delivery", "delivery time (s)"),
                             (axes[1], "first", "time to first image (s)")):
        if which == "first" and first_image_note is not None:
            ax.set_axis_off()
            ax.text(0.5, 0.5, "time to first image\n" + textwrap.fill(first_image_note, 40), ha="center",
                    va="center", transform=ax.transAxes, fontsize=10)
            continue
        smallest = 1.0
        for p in PRIORITIES:
            hist = dist.pooled(which, p.value)
            n = sum(hist)
            if n:
                xs, ys = _curve(hist, ccdf)
                smallest = min(smallest, 1.0 / n)
                ax.step(xs, ys, where="post", color=COLOURS[p.value],
                        label=sample_label(p.value, n, f"{p.value} transfers"))
        _axes_for(ax, label, ccdf, smallest)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right" if ccdf else "lower right", fontsize=8)
    fig.suptitle(title + (" (complementary CDF: the tail)" if ccdf else ""))
    fig.tight_layout()
    return fig


def _save(fig: Figure, path: Path) -> None:
    fig.savefig(path, **SAVE)  # type: ignore[arg-type]
    plt.close(fig)


def cdf_plot(dist: Distributions, path: Path, title: str, ccdf: bool = False,
             first_image_note: str | None = None) -> None:
    _save(cdf_figure(dist, title, ccdf, first_image_note), path)


def box_figure(dist: Distributions, title: str) -> Figure:
    stats = []
    for m in dist.modalities():
        hist = dist.pooled("delivery", modality=m)
        n = sum(hist)
        if not n:
            continue
        q = {k: percentile(hist, k) or 0.0 for k in (5, 25, 50, 75, 95)}
        warning = small_sample(n, f"{m} transfers")
        stats.append({"label": f"{m}\n({warning}:\nsmall sample)" if warning else f"{m}\n(n={n:,})",
                      "whislo": q[5], "q1": q[25], "med": q[50], "q3": q[75], "whishi": q[95], "fliers": []})
    fig, ax = plt.subplots(figsize=(8, 4.2))
    if stats:
        ax.bxp(stats, showfliers=False)
    ax.set_yscale("log")
    ax.set_ylabel("delivery time (s)")
    ax.set_title(title + " (box: p25-p75, whiskers: p5-p95)")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    return fig


def box_plot(dist: Distributions, path: Path, title: str) -> None:
    _save(box_figure(dist, title), path)


def dense_series(points: dict[float, float], bin_s: float, end_s: float) -> tuple[list[float], list[float]]:
    """Every bin from 0 to end_s (or the last point, if later), empty ones as 0: (bin start s, value)."""
    if bin_s <= 0:
        raise ValueError(f"bin width must be positive, got {bin_s}")
    last = max((round(t / bin_s) for t in points), default=-1)
    nbins = max(last + 1, math.ceil(end_s / bin_s))
    values = [0.0] * nbins
    for t, v in points.items():
        values[round(t / bin_s)] += v
    return [k * bin_s for k in range(nbins)], values


def _read_columns(path: Path, columns: tuple[str, ...]) -> dict[float, float]:
    out: dict[float, float] = {}
    if not path.exists():
        return out
    with path.open(encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            t = float(row["time_s"])
            out[t] = out.get(t, 0.0) + sum(float(row[c]) for c in columns)
    return out


def upload_series(run_dir: Path, bin_s: float, end_s: float, replication: int = 0) -> tuple[list[float], list[float]]:
    """All organisations' upload per bin (MB/s) over the run, empty bins as zero: (day, MB/s)."""
    ts, vs = dense_series(_read_columns(run_dir / f"timeseries-r{replication}.csv", ("up_bytes",)), bin_s, end_s)
    return [t / 86400.0 for t in ts], [v / bin_s / 1e6 for v in vs]


def hub_series(run_dir: Path, bin_s: float, end_s: float, replication: int = 0) -> tuple[list[float], list[float]]:
    """The hub's ingress + egress per bin (MB/s), empty bins as zero: (day, MB/s)."""
    ts, vs = dense_series(_read_columns(run_dir / f"hub-r{replication}.csv", ("hub_in_bytes", "hub_out_bytes")),
                          bin_s, end_s)
    return [t / 86400.0 for t in ts], [v / bin_s / 1e6 for v in vs]


def timeseries_figure(run_dir: Path, title: str, bin_s: float, hub_bin_s: float, design: str,
                      end_s: float) -> Figure:
    """Upload of all organisations, and (unless the design has no hub) the hub's load, over time.

    Each bin is drawn as a step over its width; empty bins are zero."""
    with_hub = design != "mesh"
    fig, axes_ = plt.subplots(2 if with_hub else 1, 1, figsize=(11, 5.5 if with_hub else 3.2), sharex=True,
                              squeeze=False)
    axes = [row[0] for row in axes_]
    days, up = upload_series(run_dir, bin_s, end_s)
    axes[0].step(days, up, where="post", color=design_colour(design), lw=0.8)
    axes[0].set_ylabel("all organisations'\nupload (MB/s)")
    axes[0].grid(True, alpha=0.3)
    if with_hub:
        hub_days, hub = hub_series(run_dir, hub_bin_s, end_s)
        axes[1].step(hub_days, hub, where="post", color=PALETTE["hub"], lw=0.6)
        axes[1].set_ylabel("hub in + out (MB/s)")
        axes[1].grid(True, alpha=0.3)
    axes[-1].set_xlabel("simulated day (replication 0)")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def timeseries_plot(run_dir: Path, path: Path, title: str, bin_s: float, hub_bin_s: float, design: str = "hybrid",
                    end_s: float = 0.0) -> None:
    _save(timeseries_figure(run_dir, title, bin_s, hub_bin_s, design, end_s), path)


def compare_cdf_figure(runs: list[tuple[RunStyle, Distributions]], ccdf: bool = False) -> Figure:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    for ax, priority, label in ((axes[0], None, "all priorities"), (axes[1], "stat", "stat only")):
        smallest = 1.0
        for style, dist in runs:
            hist = dist.pooled("delivery", priority)
            n = sum(hist)
            if n:
                xs, ys = _curve(hist, ccdf)
                smallest = min(smallest, 1.0 / n)
                ax.step(xs, ys, where="post", color=style.colour, linestyle=style.linestyle,
                        label=sample_label(style.label, n, f"{priority or 'all'} transfers"))
        _axes_for(ax, f"delivery time (s), {label}", ccdf, smallest)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right" if ccdf else "lower right", fontsize=7)
    if ccdf:
        fig.suptitle("complementary CDF: the tail")
    fig.tight_layout()
    return fig


def compare_cdf_plot(runs: list[tuple[RunStyle, Distributions]], path: Path, ccdf: bool = False) -> None:
    _save(compare_cdf_figure(runs, ccdf), path)


@dataclass(frozen=True)
class Bar:
    """One bar: a run's mean of a metric over replications, its 95 % t half-width and what stands behind it."""

    mean: float | None
    ci95: float | None
    replications: int
    observations: float | None  # mean number of transfers behind the percentile in one replication


def wrap_label(label: str, width: int = TICK_WRAP) -> str:
    """A run label on lines of at most about `width` characters, broken at spaces, after '/' and, in a word
    longer than a line, after '-'."""
    tokens = []
    for word in label.split():
        parts = [t for t in re.split(r"(?<=/)", word) if t]
        for part in parts:
            tokens.extend([t for t in re.split(r"(?<=-)", part) if t] if len(part) > width else [part])
        tokens[-1] += " "  # a space after each word (stripped at the end of a line)
    lines: list[str] = []
    for t in tokens:
        if lines and len(lines[-1].rstrip()) + len(t.rstrip()) + (1 if lines[-1].endswith(" ") else 0) <= width:
            lines[-1] += t
        else:
            lines.append(t)
    return "\n".join(line.rstrip() for line in lines) or label


def plain_log_ticks(ax: Axes) -> None:
    """Plain numbers on a log y axis ("60", "200", "0.5"; not "6x10^1"): every major tick, and the minor ticks at 2
    and 5 times a power of ten (the others unlabelled)."""
    def major(v: float, _: object) -> str:
        return f"{v:g}"

    def minor(v: float, _: object) -> str:
        if v <= 0:
            return ""
        lead = v / 10 ** math.floor(math.log10(v) + 1e-9)
        return f"{v:g}" if round(lead, 6) in (2.0, 5.0) else ""

    ax.yaxis.set_major_formatter(FuncFormatter(major))
    ax.yaxis.set_minor_formatter(FuncFormatter(minor))


def compare_bars_figure(styles: list[RunStyle], values: dict[str, list[Bar]], ylabel: str,
                        paired: bool = False) -> Figure:
    """One panel per group (a priority), one bar per run in its design's colour, with the t half-width as an
    error bar; run labels wrapped and rotated under the bars. Bars from few transfers or intervals from few
    replications are annotated."""
    groups = list(values)
    ticks = [wrap_label(s.label) for s in styles]
    # Horizontal tick labels, each bar as wide as its longest line (fontsize 7: about 0.075 inch a character).
    per_bar = max(0.9, 0.075 * max((len(line) for t in ticks for line in t.splitlines()), default=1) + 0.2)
    fig, axes_ = plt.subplots(1, max(1, len(groups)), sharey=True, squeeze=False,
                              figsize=(max(7.0, len(groups) * (per_bar * len(styles) + 0.5) + 1.0),
                                       4.2 + 0.12 * max((t.count("\n") for t in ticks), default=0)))
    axes = list(axes_[0])
    few_reps = sorted({b.replications for bars in values.values() for b in bars
                       if b.mean is not None and b.replications < SMALL_REPLICATIONS})
    # The axes are shared: one bottom for all, a tenth of the smallest bar.
    positive = [b.mean for bars in values.values() for b in bars if b.mean is not None and b.mean > 0]
    bottom = min(positive) / 10.0 if positive else 0.1
    for ax, group in zip(axes, groups):
        bars = values[group]
        xs = list(range(len(styles)))
        ys = [b.mean if b.mean is not None else 0.0 for b in bars]
        errs = [b.ci95 if b.ci95 is not None and b.mean is not None else 0.0 for b in bars]
        # On a log axis a half-width larger than the mean reaches below zero: the lower arm is cut at the axis'
        # bottom (a tenth of the smallest bar), and reads as "down to zero".
        lower = [min(e, y - bottom) if y > bottom else 0.0 for e, y in zip(errs, ys)]
        ax.bar(xs, ys, color=[s.colour for s in styles], hatch=None, edgecolor="black", linewidth=0.4,
               yerr=[lower, errs], capsize=4, error_kw={"elinewidth": 1.0})
        for x, s, b in zip(xs, styles, bars):
            if s.hatch:
                ax.patches[x].set_hatch(s.hatch)
            if b.mean is None:
                ax.annotate("no data", (x, 1.0), xycoords=("data", "axes fraction"), ha="center", va="top",
                            fontsize=7, rotation=90, xytext=(0, -4), textcoords="offset points")
            elif b.observations is not None and b.observations < SMALL_SAMPLE:
                ax.annotate(f"n = {round(b.observations)}\n{group}\ntransfers", (x, 0.02), xycoords=("data", "axes fraction"),
                            ha="center", va="bottom", fontsize=7, color="#b03a2e",
                            bbox={"boxstyle": "round", "fc": "white", "ec": "#b03a2e", "lw": 0.5})
        ax.set_xticks(xs, ticks, fontsize=7)
        ax.set_title(group)
        ax.set_yscale("log", nonpositive="clip")
        ax.set_ylim(bottom=bottom)
        plain_log_ticks(ax)
        ax.grid(True, axis="y", which="both", alpha=0.3)
    axes[0].set_ylabel(ylabel)
    note = "error bars: 95 % t interval over replications"
    if paired:
        note += " (each run's own); the paired differences, usually much narrower, are in the table"
    if few_reps:
        note += f"; from {', '.join(map(str, few_reps))} replication(s), fewer than {SMALL_REPLICATIONS}: wide"
    fig.suptitle(note, fontsize=9)
    fig.tight_layout()
    return fig


def compare_bars_plot(styles: list[RunStyle], values: dict[str, list[Bar]], path: Path, ylabel: str,
                      paired: bool = False) -> None:
    _save(compare_bars_figure(styles, values, ylabel, paired), path)
