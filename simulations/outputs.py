"""A run's outputs: per-transfer records, time series, distributions, summary and manifest.

`build` renders every file in memory (`RunData`: the bytes of each file, the
summary and manifest as dicts, the records and time series as pyarrow
tables); `write` puts them in a folder. The Python API (simulations.api)
stops after `build`, so a notebook run touches no disk.

Every file is a pure function of the scenario, the seed, the package version
and the checkout it ran from (the manifest's provenance): no wall clock, no
host name, no output path inside, keys sorted, floats formatted the same way
every time, gzip headers without a date, Parquet files without timestamps. So
the same scenario and seed give byte-identical files.
"""

from __future__ import annotations

import csv
import functools
import gzip
import hashlib
import io
import json
import math
import platform
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from simulations import rng
from simulations.engine.recorder import BINS_PER_DECADE, FIELDS, LOW_DECADE, Record
from simulations.engine.state import Status
from simulations.results import ReplicationResult
from simulations.scenario.model import Scenario
from simulations.summary import across, replication_summary
from simulations.topology import Topology
from simulations.workload import PRIORITIES

MANIFEST = "manifest.json"
SUMMARY = "summary.json"
# What a run writes per replication: files of these patterns that a new run's manifest does not list are an
# earlier run's, removed when a run is written into the same folder (plots would otherwise mix them in).
REPLICATION_PATTERNS = ("transfers-r*", "timeseries-r*", "hub-r*", "images-r*", "distributions-r*")
SENSITIVITY = "sensitivity.json"  # simulations/sensitivity.py's cache (imports this module, not the reverse)


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


def json_bytes(data: object) -> bytes:
    return (json.dumps(_clean(data), indent=2, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")


def write_json(path: Path, data: object) -> None:
    path.write_bytes(json_bytes(data))


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


class _Text:
    """A text file rendered in memory (optionally gzip without a date), closed into bytes."""

    def __init__(self, compressed: bool = False) -> None:
        self.raw = io.BytesIO()
        self.gz = gzip.GzipFile(filename="", mode="wb", fileobj=self.raw, mtime=0) if compressed else None
        self.fh = io.TextIOWrapper(self.gz if self.gz is not None else self.raw, encoding="utf-8", newline="")

    def close(self) -> bytes:
        self.fh.flush()
        self.fh.detach()  # before the gzip stream closes: detaching flushes into it
        if self.gz is not None:
            self.gz.close()
        return self.raw.getvalue()


def _sorted_rows(r: ReplicationResult) -> list[Record]:
    return sorted(r.rows, key=lambda x: (x.study, x.recipient))


def _names(scenario: Scenario, topology: Topology) -> tuple[list[str], list[str], list[str], dict[int, str]]:
    codes = [o.code for o in topology.orgs]
    modalities = [m.name for m in scenario.workload.modalities]
    priorities = [p.value for p in PRIORITIES]
    statuses = {int(s): s.name.lower().replace("_", "-") for s in Status}
    return codes, modalities, priorities, statuses


def records_csv(r: ReplicationResult, scenario: Scenario, topology: Topology, compressed: bool) -> bytes:
    codes, modalities, priorities, statuses = _names(scenario, topology)
    out = _Text(compressed)
    w = csv.writer(out.fh, lineterminator="\n")
    w.writerow(FIELDS)
    for row in _sorted_rows(r):
        cells: list[object] = list(row)
        cells[1], cells[2] = codes[row.sender], codes[row.recipient]
        cells[3], cells[4], cells[11] = modalities[row.modality], priorities[row.priority], statuses[row.status]
        w.writerow([_num(x) for x in cells])
    return out.close()


_INT_FIELDS = ("study", "images", "announce_attempts")
_BOOL_FIELDS = ("affected_by_fault", "bogus")
_NAME_FIELDS = ("sender", "recipient", "modality", "priority", "status", "reason")


def records_table(r: ReplicationResult, scenario: Scenario, topology: Topology) -> pa.Table:
    """The records as transfers-rK.csv has them (names, not indices), with a replication column first;
    times that did not happen (empty in the CSV) are null."""
    codes, modalities, priorities, statuses = _names(scenario, topology)
    rows = _sorted_rows(r)
    decode: dict[str, Callable[[int], str]] = {
        "sender": codes.__getitem__, "recipient": codes.__getitem__, "modality": modalities.__getitem__,
        "priority": priorities.__getitem__, "status": statuses.__getitem__}
    arrays: dict[str, pa.Array] = {"replication": pa.array([r.replication] * len(rows), pa.int32())}
    for i, name in enumerate(FIELDS):
        column = [row[i] for row in rows]
        if name in decode:
            fn = decode[name]
            arrays[name] = pa.array([fn(int(x)) for x in column], pa.string())
        elif name in _NAME_FIELDS:
            arrays[name] = pa.array([str(x) for x in column], pa.string())
        elif name in _INT_FIELDS:
            arrays[name] = pa.array([int(x) for x in column], pa.int64())
        elif name in _BOOL_FIELDS:
            arrays[name] = pa.array([bool(x) for x in column], pa.bool_())
        else:
            arrays[name] = pa.array([None if float(x) == -1.0 else float(x) for x in column], pa.float64())
    return pa.table(arrays)


def _timeseries_rows(r: ReplicationResult, topology: Topology) -> list[tuple[int, str, float, float]]:
    """(bin number, org, up bytes, down bytes) for every non-empty bin."""
    out = []
    nbins = len(r.up[0]) if r.up else 0
    for k in range(nbins):
        for o in topology.orgs:
            up, down = r.up[o.index][k], r.down[o.index][k]
            if up > 0 or down > 0:
                out.append((k, o.code, round(up, 3), round(down, 3)))
    return out


def timeseries_csv(r: ReplicationResult, scenario: Scenario, topology: Topology) -> bytes:
    out = _Text()
    w = csv.writer(out.fh, lineterminator="\n")
    w.writerow(("time_s", "org", "up_bytes", "down_bytes"))
    width = scenario.output.timeseries_bin
    for k, code, up, down in _timeseries_rows(r, topology):
        w.writerow((_num(k * width), code, _num(up), _num(down)))
    return out.close()


def timeseries_table(r: ReplicationResult, scenario: Scenario, topology: Topology) -> pa.Table:
    rows = _timeseries_rows(r, topology)
    width = scenario.output.timeseries_bin
    return pa.table({"replication": pa.array([r.replication] * len(rows), pa.int32()),
                     "time_s": pa.array([float(x[0] * width) for x in rows], pa.float64()),
                     "org": pa.array([x[1] for x in rows], pa.string()),
                     "up_bytes": pa.array([x[2] for x in rows], pa.float64()),
                     "down_bytes": pa.array([x[3] for x in rows], pa.float64())})


def parquet_bytes(table: pa.Table) -> bytes:
    """Parquet with fixed options: zstd, no pandas metadata (the table never saw pandas), no timestamps
    (Parquet files carry none: the footer's `created_by` names the pyarrow version, which the manifest
    records too), so the same table gives the same bytes."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", compression_level=3, use_dictionary=True,
                   write_statistics=True, version="2.6", data_page_version="1.0")
    return bytes(sink.getvalue().to_pybytes())


def hub_csv(r: ReplicationResult, scenario: Scenario) -> bytes:
    width = scenario.output.hub_bin
    out = _Text()
    w = csv.writer(out.fh, lineterminator="\n")
    w.writerow(("time_s", "hub_in_bytes", "hub_out_bytes", "hub_in_images", "hub_max_concurrency",
                "images_delivered"))
    for k, (a, b, im, c, d) in enumerate(zip(r.hub_in, r.hub_out, r.hub_images, r.hub_concurrency, r.images)):
        if a > 0 or b > 0 or c > 0 or d > 0:
            w.writerow((_num(k * width), _num(round(a, 3)), _num(round(b, 3)), _num(round(im, 3)), c,
                        _num(round(d, 3))))
    return out.close()


def distributions(r: ReplicationResult, scenario: Scenario) -> dict[str, object]:
    modalities = [m.name for m in scenario.workload.modalities]

    def pack(table: dict[tuple[int, int], list[int]]) -> list[dict[str, object]]:
        return [{"priority": PRIORITIES[p].value, "modality": modalities[m],
                 "bins": {str(i): n for i, n in enumerate(h) if n}} for (p, m), h in sorted(table.items())]

    return {"bins_per_decade": BINS_PER_DECADE, "low_decade": LOW_DECADE,
            "note": "bin i covers [10^(low + i/bpd), 10^(low + (i+1)/bpd)) seconds",
            "delivery_time_s": pack(r.delivery), "time_to_first_image_s": pack(r.first_image)}


def provenance() -> dict[str, object]:
    """The git commit this package runs from and whether tracked files differ from it ("unknown" when the
    package is not a file of a git checkout: an installed wheel inside some other repository's tree counts
    as unknown, not as that repository). Never fails a run: any problem gives "unknown"."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True, timeout=10,
                                  check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    tracked = git("ls-files", "--error-unmatch", "--", "outputs.py")
    if commit is None or tracked is None or not commit.strip():
        return {"git_commit": "unknown", "git_dirty": "unknown"}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit.strip(), "git_dirty": "unknown" if status is None else bool(status.strip())}


def code_identity() -> dict[str, object]:
    """What tells the code of one process from another's: the package version, the git commit and dirty state
    (`provenance`) and the SHA-256 of the simulator's and protocol's source (`source_hash`). A sweep compares
    every Dask worker's with its own before trusting the worker's results."""
    return {"package_version": package_version(), **provenance(), "source_sha256": source_hash()}


@functools.cache
def source_hash() -> str:
    """SHA-256 over the Python source of the packages a run's results depend on (simulations/ and protocol/:
    each file's path relative to its package's parent and its bytes, in path order). Unlike the git commit it
    also tells an uncommitted change and an installed copy apart; computed once per process."""
    import protocol  # the node's decisions the simulator imports

    h = hashlib.sha256()
    for package in (Path(__file__).resolve().parent, Path(protocol.__file__).resolve().parent):
        for path in sorted(package.rglob("*.py")):
            h.update(str(path.relative_to(package.parent)).encode("utf-8") + b"\0")
            h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


def manifest(scenario: Scenario, topology: Topology, settings: dict[str, object], replications: list[int],
             files: dict[str, str], source: dict[str, object] | None = None) -> dict[str, object]:
    return {
        "provenance": {**provenance(), "source_sha256": source_hash()} if source is None else source,
        "format": "meshsim-run/1",
        "scenario": {"name": scenario.name, "sha256": scenario_hash(scenario), "design": scenario.design.kind.value,
                     "duration_s": scenario.duration, "warmup_s": scenario.warmup, "drain_s": scenario.engine.drain,
                     "organisations": len(topology.orgs), "replications": scenario.replications},
        "package": {"name": "dicom-mesh", "version": package_version(), "python": platform.python_version(),
                    "numpy": np.__version__, "pyarrow": pa.__version__},
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


def begin(out_dir: Path) -> None:
    """Before a run is written into `out_dir`: its manifest.json goes first (a folder with one is complete,
    which it is not while files are replaced)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)


def remove_stale(out_dir: Path, scenario: Scenario, keep: set[str]) -> list[str]:
    """Remove an earlier run's files from `out_dir`: per-replication files the new run does not write (`keep`
    are the names it wrote) and a sensitivity.json of another scenario. Returns the names removed."""
    gone = []
    for pattern in REPLICATION_PATTERNS:
        for path in sorted(out_dir.glob(pattern)):
            if path.is_file() and path.name not in keep:
                path.unlink()
                gone.append(path.name)
    cache = out_dir / SENSITIVITY
    if cache.is_file():
        try:
            same = json.loads(cache.read_text(encoding="utf-8")).get("scenario_sha256") == scenario_hash(scenario)
        except (OSError, ValueError, AttributeError):
            same = False
        if not same:
            cache.unlink()
            gone.append(cache.name)
    return gone


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def summarise(scenario: Scenario, per_rep: list[dict[str, object]]) -> dict[str, object]:
    """summary.json from the replications' summaries (a run, or `meshsim collect` over rK/ folders)."""
    return {"scenario": scenario.name, "design": scenario.design.kind.value, "replications": per_rep,
            "across_replications": across(per_rep)}


@dataclass
class RunData:
    """Every output of a run: `files` maps each file name to its bytes (manifest.json and scenario.toml
    included) and the tables are what the Parquet files hold, when built in memory; when built straight into
    a folder (the CLI path) both are empty and the files are on disk."""

    scenario: Scenario
    summary: dict[str, object]
    manifest: dict[str, object]
    files: dict[str, bytes]
    transfers: dict[int, pa.Table] = field(default_factory=dict)
    timeseries: dict[int, pa.Table] = field(default_factory=dict)
    results: list[ReplicationResult] = field(default_factory=list)


def build(scenario: Scenario, topology: Topology, results: list[ReplicationResult],
          out_dir: Path | None = None) -> RunData:
    """Render every output file. In memory (out_dir None: the Python API), or each file written to out_dir
    as soon as it is rendered and not kept (the CLI: a year's records need not be held twice)."""
    files: dict[str, bytes] = {}
    hashes: dict[str, str] = {}
    transfers: dict[int, pa.Table] = {}
    timeseries: dict[int, pa.Table] = {}
    if out_dir is not None:
        begin(out_dir)

    def put(name: str, data: bytes, hashed: bool = True) -> None:
        if hashed:
            hashes[name] = sha256_bytes(data)
        if out_dir is None:
            files[name] = data
        else:
            (out_dir / name).write_bytes(data)

    per_rep = []
    for r in results:
        tag = f"r{r.replication}"
        if scenario.output.records != "none":
            compressed = scenario.output.records == "csv.gz"
            put(f"transfers-{tag}.csv" + (".gz" if compressed else ""), records_csv(r, scenario, topology, compressed))
            table = records_table(r, scenario, topology)
            put(f"transfers-{tag}.parquet", parquet_bytes(table))
            if out_dir is None:
                transfers[r.replication] = table
        put(f"timeseries-{tag}.csv", timeseries_csv(r, scenario, topology))
        series = timeseries_table(r, scenario, topology)
        put(f"timeseries-{tag}.parquet", parquet_bytes(series))
        if out_dir is None:
            timeseries[r.replication] = series
        put(f"hub-{tag}.csv", hub_csv(r, scenario))
        if r.image_events:
            put(f"images-{tag}.csv", ("second,images\n" + "".join(
                f"{k},{v}\n" for k, v in r.image_events.items())).encode("utf-8"))
        put(f"distributions-{tag}.json", json_bytes(distributions(r, scenario)))
        per_rep.append(replication_summary(r, scenario, topology))
    summary = summarise(scenario, per_rep)
    put(SUMMARY, json_bytes(summary))
    settings = results[0].settings if results else {}
    man = manifest(scenario, topology, settings, [r.replication for r in results], hashes)
    put("scenario.toml", scenario.source.encode("utf-8"), hashed=False)
    if out_dir is not None:
        remove_stale(out_dir, scenario, set(hashes))
    put(MANIFEST, json_bytes(man), hashed=False)  # last: a folder with a manifest.json is complete
    return RunData(scenario, summary, man, files, transfers, timeseries, results)


def write(out_dir: Path, data: RunData) -> None:
    """The files of an in-memory `build` in a folder (manifest.json last: a folder with one is complete)."""
    begin(out_dir)
    for name, content in data.files.items():
        if name != MANIFEST:
            (out_dir / name).write_bytes(content)
    remove_stale(out_dir, data.scenario, set(data.files))
    (out_dir / MANIFEST).write_bytes(data.files[MANIFEST])
