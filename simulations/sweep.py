"""Parameter sweeps: one derived scenario per combination of values, run here or on a cluster.

`meshsim sweep SCENARIO --vary design.kind=hub,mesh --vary hub.egress=1Gbit/s,10Gbit/s --out DIR`
writes DIR/points.csv and, per combination, DIR/pNNN/scenario.toml. It then
runs every point (each run spreading its replications over the cores), or,
with --emit-commands, only writes one `meshsim run` command per point and
replication for a batch scheduler; `meshsim sweep --collect DIR` then gathers
the per-replication folders into each point's summary and DIR/sweep.csv.
"""

from __future__ import annotations

import csv
import itertools
import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from simulations import outputs
from simulations.runner import ProgressHook, run
from simulations.scenario.errors import ScenarioError
from simulations.scenario.model import Scenario
from simulations.scenario.overrides import apply, parse_value
from simulations.scenario.parse import load_scenario
from simulations.summary import KEY_METRICS, across


@dataclass(frozen=True)
class Point:
    name: str
    values: tuple[tuple[str, object], ...]
    scenario: Scenario


def parse_vary(texts: list[str]) -> list[tuple[str, list[object]]]:
    out = []
    for text in texts:
        if "=" not in text:
            raise ScenarioError(f"--vary {text!r}: expected KEY=V1,V2,...")
        key, values = text.split("=", 1)
        items = [parse_value(v.strip()) for v in values.split(",") if v.strip()]
        if not items:
            raise ScenarioError(f"--vary {text!r}: no values")
        out.append((key.strip(), items))
    return out


def points(base: Scenario, vary: list[tuple[str, list[object]]]) -> list[Point]:
    keys = [k for k, _ in vary]
    out = []
    for i, combo in enumerate(itertools.product(*[v for _, v in vary])):
        values = tuple(zip(keys, combo))
        out.append(Point(f"p{i:03d}", values, apply(base, values)))
    return out


def prepare(base: Scenario, vary: list[tuple[str, list[object]]], out_dir: Path) -> list[Point]:
    pts = points(base, vary)
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "points.csv").open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["point"] + [k for k, _ in vary])
        for p in pts:
            w.writerow([p.name] + [json.dumps(v) if not isinstance(v, str) else v for _, v in p.values])
            (out_dir / p.name).mkdir(exist_ok=True)
            (out_dir / p.name / "scenario.toml").write_text(p.scenario.source, encoding="utf-8")
    return pts


def commands(pts: list[Point], out_dir: Path) -> list[str]:
    """One shell command per (point, replication): each is a separate process with its own seed streams."""
    lines = []
    for p in pts:
        folder = out_dir / p.name
        for k in range(p.scenario.replications):
            lines.append(" ".join(shlex.quote(x) for x in ("meshsim", "run", str(folder / "scenario.toml"), "--out",
                                                             str(folder / f"r{k}"), "--replication", str(k),
                                                             "--jobs", "1", "--no-progress")))
    return lines


def run_all(pts: list[Point], out_dir: Path, jobs: int | None, progress: ProgressHook | None) -> None:
    for i, p in enumerate(pts):
        def hook(f: float, i: int = i) -> None:
            if progress is not None:
                progress((i + f) / len(pts))
        run(p.scenario, out_dir / p.name, jobs=jobs, progress=hook)


def collect(out_dir: Path) -> list[list[str]]:
    """Summaries per point (gathering rK/ folders from cluster runs when needed) and DIR/sweep.csv."""
    rows_in = list(csv.reader((out_dir / "points.csv").open(encoding="utf-8")))
    if not rows_in:
        raise ScenarioError(f"{out_dir}/points.csv is empty")
    header_in, body = rows_in[0], rows_in[1:]
    table = [header_in + [".".join(k) for k in KEY_METRICS]]
    for row in body:
        folder = out_dir / row[0]
        summary_path = folder / outputs.SUMMARY
        if not summary_path.exists():
            reps = []
            for sub in sorted(folder.glob("r*/summary.json")):
                data = json.loads(sub.read_text(encoding="utf-8"))
                reps.extend(data["replications"])
            if not reps:
                raise ScenarioError(f"{folder}: no summary.json and no r*/summary.json (has it run?)")
            scenario = load_scenario(folder / "scenario.toml")
            reps.sort(key=lambda r: int(r["replication"]))
            outputs.write_json(summary_path, {"scenario": scenario.name, "design": scenario.design.kind.value,
                                              "replications": reps, "across_replications": across(reps)})
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        acr = summary["across_replications"]
        cells = []
        for path in KEY_METRICS:
            cell = acr.get(".".join(path))
            cells.append("" if cell is None else f"{cell['mean']:.6g}")
        table.append(row + cells)
    with (out_dir / "sweep.csv").open("w", encoding="utf-8", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows(table)
    return table


def write_commands(lines: list[str], path: Path | None) -> None:
    text = "\n".join(lines) + "\n"
    if path is None:
        sys.stdout.write(text)
    else:
        path.write_text(text, encoding="utf-8")
