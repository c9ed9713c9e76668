"""Plots for reports and comparisons (matplotlib, Agg backend): CDFs, box plots, time series.

Distributions are read back from a run's log histograms (distributions-r*.json),
pooled over replications; time series from timeseries-r0.csv and hub-r0.csv.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from simulations.engine.recorder import BINS_PER_DECADE, LOW_DECADE, NBINS  # noqa: E402
from simulations.scenario.errors import ScenarioError  # noqa: E402
from simulations.summary import percentile  # noqa: E402
from simulations.workload import PRIORITIES  # noqa: E402

COLOURS = {"stat": "#c0392b", "urgent": "#e67e22", "routine": "#2874a6"}
RUN_COLOURS = ["#2874a6", "#c0392b", "#27ae60", "#8e44ad", "#e67e22", "#16a085"]
SAVE = {"dpi": 110, "metadata": {"Software": None}}


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


def load_distributions(run_dir: Path) -> Distributions:
    delivery: dict[tuple[str, str], list[int]] = {}
    first: dict[tuple[str, str], list[int]] = {}
    found = sorted(run_dir.glob("distributions-r*.json"))
    if not found:  # plotting nothing would give empty figures and exit 0
        raise ScenarioError(f"{run_dir}: no distributions-r*.json, nothing to plot (a sweep point run as job-array "
                            f"commands has its data in rK/ folders: run `meshsim collect` on the sweep folder first)")
    for path in found:
        data = json.loads(path.read_text(encoding="utf-8"))
        for key, table in (("delivery_time_s", delivery), ("time_to_first_image_s", first)):
            for entry in data[key]:
                hist = table.setdefault((entry["priority"], entry["modality"]), [0] * NBINS)
                for i, n in entry["bins"].items():
                    hist[int(i)] += int(n)
    return Distributions(delivery, first)


def _cdf_points(hist: list[int]) -> tuple[list[float], list[float]]:
    total = sum(hist)
    xs: list[float] = []
    ys: list[float] = []
    seen = 0
    for i, n in enumerate(hist):
        if n:
            seen += n
            xs.append(10.0 ** (LOW_DECADE + (i + 1) / BINS_PER_DECADE))
            ys.append(seen / total)
    return xs, ys


def cdf_plot(dist: Distributions, path: Path, title: str) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, which, label in ((axes[0], "delivery", "delivery time (s)"),
                             (axes[1], "first", "time to first image (s)")):
        for p in PRIORITIES:
            hist = dist.pooled(which, p.value)
            if sum(hist):
                xs, ys = _cdf_points(hist)
                ax.step(xs, ys, where="post", color=COLOURS[p.value], label=f"{p.value} (n={sum(hist):,})")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("fraction of transfers")
        ax.set_ylim(0, 1.01)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, **SAVE)  # type: ignore[arg-type]
    plt.close(fig)


def box_plot(dist: Distributions, path: Path, title: str) -> None:
    stats = []
    for m in dist.modalities():
        hist = dist.pooled("delivery", modality=m)
        if not sum(hist):
            continue
        q = {k: percentile(hist, k) or 0.0 for k in (5, 25, 50, 75, 95)}
        stats.append({"label": f"{m}\n(n={sum(hist):,})", "whislo": q[5], "q1": q[25], "med": q[50], "q3": q[75],
                      "whishi": q[95], "fliers": []})
    fig, ax = plt.subplots(figsize=(8, 4.2))
    if stats:
        ax.bxp(stats, showfliers=False)
    ax.set_yscale("log")
    ax.set_ylabel("delivery time (s)")
    ax.set_title(title + " (box: p25-p75, whiskers: p5-p95)")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, **SAVE)  # type: ignore[arg-type]
    plt.close(fig)


def _series(path: Path) -> tuple[dict[float, float], dict[float, float], dict[str, float]]:
    up: dict[float, float] = {}
    down: dict[float, float] = {}
    per_org: dict[str, float] = {}
    if not path.exists():
        return up, down, per_org
    with path.open(encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            t = float(row["time_s"])
            u, d = float(row["up_bytes"]), float(row["down_bytes"])
            up[t] = up.get(t, 0.0) + u
            down[t] = down.get(t, 0.0) + d
            per_org[row["org"]] = per_org.get(row["org"], 0.0) + u
    return up, down, per_org


def timeseries_plot(run_dir: Path, path: Path, title: str, bin_s: float, hub_bin_s: float) -> None:
    up, _, _ = _series(run_dir / "timeseries-r0.csv")
    hub_t: list[float] = []
    hub_v: list[float] = []
    hub_path = run_dir / "hub-r0.csv"
    if hub_path.exists():
        with hub_path.open(encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                hub_t.append(float(row["time_s"]) / 86400.0)
                hub_v.append((float(row["hub_in_bytes"]) + float(row["hub_out_bytes"])) / hub_bin_s / 1e6)
    fig, axes = plt.subplots(2, 1, figsize=(11, 5.5), sharex=True)
    ts = sorted(up)
    axes[0].plot([t / 86400.0 for t in ts], [up[t] / bin_s / 1e6 for t in ts], color="#2874a6", lw=0.8)
    axes[0].set_ylabel("all organisations' upload (MB/s)")
    axes[0].grid(True, alpha=0.3)
    axes[1].plot(hub_t, hub_v, color="#c0392b", lw=0.6)
    axes[1].set_ylabel("hub in + out (MB/s)")
    axes[1].set_xlabel("simulated day (replication 0)")
    axes[1].grid(True, alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, **SAVE)  # type: ignore[arg-type]
    plt.close(fig)


def compare_cdf_plot(runs: list[tuple[str, Distributions]], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, priority, label in ((axes[0], None, "all priorities"), (axes[1], "stat", "stat only")):
        for i, (name, dist) in enumerate(runs):
            hist = dist.pooled("delivery", priority)
            if sum(hist):
                xs, ys = _cdf_points(hist)
                ax.step(xs, ys, where="post", color=RUN_COLOURS[i % len(RUN_COLOURS)], label=name)
        ax.set_xscale("log")
        ax.set_xlabel(f"delivery time (s), {label}")
        ax.set_ylabel("fraction of transfers")
        ax.set_ylim(0, 1.01)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, **SAVE)  # type: ignore[arg-type]
    plt.close(fig)


def compare_bars_plot(names: list[str], values: dict[str, list[float | None]], path: Path, ylabel: str) -> None:
    fig, ax = plt.subplots(figsize=(9, 4))
    groups = list(values)
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        xs = [g + i * width for g in range(len(groups))]
        ys = [values[k][i] or 0.0 for k in groups]
        ax.bar(xs, ys, width=width, color=RUN_COLOURS[i % len(RUN_COLOURS)], label=name)
    ax.set_xticks([g + width * (len(names) - 1) / 2 for g in range(len(groups))], groups)
    ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, **SAVE)  # type: ignore[arg-type]
    plt.close(fig)
