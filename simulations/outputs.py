"""Writing a run's outputs: per-transfer records, time series, distributions, summary and manifest.

Every file is a pure function of the scenario, the seed and the package
version: no wall clock, no host name, no output path inside, keys sorted,
floats formatted the same way every time, gzip headers without a date. So
the same scenario and seed give byte-identical files.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import math
import platform
from importlib import metadata
from pathlib import Path

import numpy as np

from simulations import rng
from simulations.engine.recorder import BINS_PER_DECADE, FIELDS, LOW_DECADE
from simulations.engine.state import Status
from simulations.results import ReplicationResult
from simulations.scenario.model import Scenario
from simulations.topology import Topology
from simulations.workload import PRIORITIES

MANIFEST = "manifest.json"
SUMMARY = "summary.json"


def package_version() -> str:
    try:
        return metadata.version("dicom-mesh")
    except metadata.PackageNotFoundError:
        return "unknown"


def scenario_hash(scenario: Scenario) -> str:
    return hashlib.sha256(scenario.source.encode("utf-8")).hexdigest()


def _clean(value: object) -> object:
    if isinstance(value, float):
        return None if not math.isfinite(value) else value
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(_clean(data), indent=2, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8")


def _num(x: object) -> str:
    """Deterministic text for a CSV cell: -1.0 (not happened) is empty, floats to the microsecond / byte."""
    if isinstance(x, bool):
        return "1" if x else "0"
    if isinstance(x, float):
        if x == -1.0:
            return ""
        text = f"{x:.6f}".rstrip("0").rstrip(".")
        return "0" if text in ("", "-0") else text
    return str(x)


def _open_text(path: Path, compressed: bool) -> io.TextIOWrapper:
    raw = path.open("wb")
    if compressed:
        gz = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0)
        return io.TextIOWrapper(gz, encoding="utf-8", newline="")
    return io.TextIOWrapper(raw, encoding="utf-8", newline="")


def write_records(path: Path, r: ReplicationResult, scenario: Scenario, topology: Topology, compressed: bool) -> int:
    codes = [o.code for o in topology.orgs]
    modalities = [m.name for m in scenario.workload.modalities]
    priorities = [p.value for p in PRIORITIES]
    statuses = {int(s): s.name.lower().replace("_", "-") for s in Status}
    with _open_text(path, compressed) as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(FIELDS)
        for row in sorted(r.rows, key=lambda x: (x.study, x.recipient)):
            cells: list[object] = list(row)
            cells[1], cells[2] = codes[row.sender], codes[row.recipient]
            cells[3], cells[4], cells[11] = modalities[row.modality], priorities[row.priority], statuses[row.status]
            w.writerow([_num(x) for x in cells])
    return len(r.rows)


def write_timeseries(path: Path, r: ReplicationResult, scenario: Scenario, topology: Topology) -> None:
    width = scenario.output.timeseries_bin
    with path.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(("time_s", "org", "up_bytes", "down_bytes"))
        nbins = len(r.up[0]) if r.up else 0
        for k in range(nbins):
            for o in topology.orgs:
                up, down = r.up[o.index][k], r.down[o.index][k]
                if up > 0 or down > 0:
                    w.writerow((_num(k * width), o.code, _num(round(up, 3)), _num(round(down, 3))))


def write_hub_series(path: Path, r: ReplicationResult, scenario: Scenario) -> None:
    width = scenario.output.hub_bin
    with path.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(("time_s", "hub_in_bytes", "hub_out_bytes", "hub_in_images", "hub_max_concurrency",
                    "images_delivered"))
        for k, (a, b, im, c, d) in enumerate(zip(r.hub_in, r.hub_out, r.hub_images, r.hub_concurrency, r.images)):
            if a > 0 or b > 0 or c > 0 or d > 0:
                w.writerow((_num(k * width), _num(round(a, 3)), _num(round(b, 3)), _num(round(im, 3)), c,
                            _num(round(d, 3))))


def distributions(r: ReplicationResult, scenario: Scenario) -> dict[str, object]:
    modalities = [m.name for m in scenario.workload.modalities]

    def pack(table: dict[tuple[int, int], list[int]]) -> list[dict[str, object]]:
        return [{"priority": PRIORITIES[p].value, "modality": modalities[m],
                 "bins": {str(i): n for i, n in enumerate(h) if n}} for (p, m), h in sorted(table.items())]

    return {"bins_per_decade": BINS_PER_DECADE, "low_decade": LOW_DECADE,
            "note": "bin i covers [10^(low + i/bpd), 10^(low + (i+1)/bpd)) seconds",
            "delivery_time_s": pack(r.delivery), "time_to_first_image_s": pack(r.first_image)}


def manifest(scenario: Scenario, topology: Topology, settings: dict[str, object], replications: list[int],
             files: dict[str, str]) -> dict[str, object]:
    return {
        "format": "meshsim-run/1",
        "scenario": {"name": scenario.name, "sha256": scenario_hash(scenario), "design": scenario.design.kind.value,
                     "duration_s": scenario.duration, "warmup_s": scenario.warmup, "drain_s": scenario.engine.drain,
                     "organisations": len(topology.orgs), "replications": scenario.replications},
        "package": {"name": "dicom-mesh", "version": package_version(), "python": platform.python_version(),
                    "numpy": np.__version__},
        "seeds": [rng.describe(scenario.seed, k) for k in replications],
        "aggregation": {
            "granularity_bytes": scenario.design.granularity,
            "scheduler_block": "a scheduler block stands for granularity / 1 MiB of the node's 1 MiB blocks",
            "time_slices": scenario.engine.time_slices, "slice_overlap_s": scenario.engine.slice_overlap,
            "per_image_events": scenario.engine.per_image_events,
            "percentiles": f"from log histograms, {BINS_PER_DECADE} bins per decade (within 0.6 %)",
            "record_fraction": scenario.output.record_fraction,
        },
        "design_settings": settings,
        "files": files,
    }


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
