"""bench/ingest.py: durable ingest speed of a node, side by side with dcmtk's storescp.

    .venv/bin/python bench/ingest.py [--slices 300] [--dx 30] [--repeat 3]

For each study: `meshnode ingest` into a fresh node (durable when it returns:
blocks fsynced, metadata committed with synchronous=FULL), and the same files
sent by dcmtk `storescu` to dcmtk `storescp` (TCP_NODELAY=1, -pdu 131072;
storescp does not fsync). Both are timed the same way, on two clocks, by this
process's perf_counter:

- work: from the first byte of work to done. The node's own report (from
  listing the files to the last batch durable) and storescu from logging
  "Requesting Association" (files scanned, about to connect) to its exit
  (the last C-STORE-RSP received). The verdicts use this clock.
- process: the whole child process, spawn to exit (`meshnode ingest`;
  storescu with storescp already listening), which adds Python's start-up
  and imports for the node.

Best of --repeat for each. Verdicts (bench/summary.py), computed from this
run: the CT's file ingest >= 2,000 images/s (dcmtk's figure on the same clock
beside it), and `meshnode ingest`'s peak RSS flat as the study grows (the
largest study within +20% of the smallest).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ensure_system_packages, meshnode, parse_json, print_table, run_measured  # noqa: E402
from bench.dimse_baselines import _check_received, _stop, storescp, storescu_timing  # noqa: E402
from bench.summary import Verdict, at_least, at_most, record  # noqa: E402
from meshnode.dicom import synthetic  # noqa: E402

TARGET_IMAGES_PER_S = 2000


def mesh_ingest(files_dir: Path, work: Path, workers: int) -> tuple[float, float, float, float]:
    """(work seconds as the node reports them, whole-process seconds, bytes ingested, peak RSS MB)."""
    home = work / f"node-{time.monotonic_ns()}"
    subprocess.run(meshnode("init", "--home", str(home), "--org", "BENCH"), check=True, capture_output=True)
    seconds, rss, out = run_measured(
        meshnode("ingest", str(files_dir), "--home", str(home), "--json", "--no-progress", "--workers", str(workers)))
    report = parse_json(out)
    shutil.rmtree(home)
    return float(str(report["seconds"])), seconds, float(str(report["bytes"])), rss


def disk_floor(work: Path, size: int) -> float:
    """MB/s of writing `size` bytes to one file and fsyncing it: this disk's durable bandwidth."""
    data = os.urandom(1 << 20)
    path = work / "floor.bin"
    started = time.perf_counter()
    with open(path, "wb") as fh:
        for _ in range(size >> 20):
            fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    seconds = time.perf_counter() - started
    path.unlink()
    return size / 1e6 / seconds


def mesh_reingest(files_dir: Path, work: Path, workers: int) -> float:
    """images/s ingesting a study whose blocks are all stored already (no disk writes)."""
    home = work / f"node-{time.monotonic_ns()}"
    subprocess.run(meshnode("init", "--home", str(home), "--org", "BENCH"), check=True, capture_output=True)
    args = meshnode("ingest", str(files_dir), "--home", str(home), "--json", "--no-progress", "--workers", str(workers))
    run_measured(args)
    (home / "node.db").unlink()
    report = parse_json(run_measured(args)[2])
    shutil.rmtree(home)
    return float(str(report["images_per_second"]))


def dcmtk_store(files_dir: Path, work: Path, count: int) -> tuple[float, float]:
    """storescu -> storescp (already listening): (work seconds, whole storescu process seconds)."""
    scp, port, received = storescp(work)
    try:
        timing = storescu_timing(files_dir, port)
        _check_received("storescp", received, count)
    finally:
        _stop(scp)
    shutil.rmtree(received.parent, ignore_errors=True)
    return timing.first_byte_s, timing.process_s


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--dx", type=int, default=30)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (best is printed)")
    args = parser.parse_args()
    ensure_system_packages("dcmtk")
    work = Path(tempfile.mkdtemp(prefix="dicom-mesh-bench-"))
    try:
        studies = {
            f"CT {args.slices} x 512x512": synthetic.generate_ct_study(work / "ct", slices=args.slices, seed=1),
            f"DX {args.dx} x 2048x2048": synthetic.generate_dx_study(work / "dx", images=args.dx, seed=2),
        }
        rows: list[list[object]] = []
        notes: list[str] = []
        verdicts: list[Verdict] = []
        for name, files in studies.items():
            folder = files[0].parent
            n = len(files)
            size = sum(f.stat().st_size for f in files)
            mb = size / 1e6
            mesh_runs, dcm_runs = [], []
            for _ in range(args.repeat):  # alternating: a change in the machine's load hits both alike
                mesh_runs.append(mesh_ingest(folder, work, args.workers))
                dcm_runs.append(dcmtk_store(folder, work, n))
            mesh_work, mesh_proc = min(r[0] for r in mesh_runs), min(r[1] for r in mesh_runs)
            dcm_work, dcm_proc = min(r[0] for r in dcm_runs), min(r[1] for r in dcm_runs)
            if any(r[2] != size for r in mesh_runs):
                raise RuntimeError(f"{name}: the node ingested {[r[2] for r in mesh_runs]} bytes of {size}")
            floor = max(disk_floor(work, int(mb * 1e6)) for _ in range(args.repeat))
            again = mesh_reingest(folder, work, args.workers)
            notes.append(f"{name}: disk durable write {floor:,.0f} MB/s -> at most {floor / mb * n:,.0f} "
                         f"images/s for any durable store here; re-ingest of stored blocks (CPU only) "
                         f"{again:,.0f} images/s")
            for clock, mesh_s, dcm_s in (("work", mesh_work, dcm_work), ("process", mesh_proc, dcm_proc)):
                rows.append([name, clock, f"{mb:,.0f} MB", f"{n / mesh_s:,.0f}", f"{mb / mesh_s:,.0f}",
                             f"{n / dcm_s:,.0f}", f"{mb / dcm_s:,.0f}", f"{dcm_s / mesh_s:.2f}x"])
            if name.startswith("CT"):
                verdicts.append(at_least(f"file ingest, {name} (durable) >= {TARGET_IMAGES_PER_S:,} img/s",
                                         n / mesh_work, TARGET_IMAGES_PER_S, "img/s",
                                         peer=f"dcmtk storescp {n / dcm_work:,.0f} img/s (no fsync)",
                                         peer_value=n / dcm_work))
        print_table(
            f"Durable ingest vs dcmtk storescu -> storescp (TCP_NODELAY=1), best of {args.repeat}; "
            f"work clock: first byte of work -> done; process clock: spawn -> exit",
            ["study", "clock", "size", "mesh img/s", "mesh MB/s", "storescp img/s", "storescp MB/s",
             "mesh / dcmtk"], rows)
        print("\n".join(notes))
        rss_rows: list[list[object]] = []
        peaks: list[float] = []
        sizes = sorted({50, 150, args.slices})
        for slices in sizes:
            folder = work / f"rss-{slices}"
            synthetic.generate_ct_study(folder, slices=slices, seed=3)
            rss = mesh_ingest(folder, work, args.workers)[3]
            peaks.append(rss)
            rss_rows.append([f"CT {slices} slices", f"{slices * 0.525:,.0f} MB", f"{rss:,.0f} MB"])
            shutil.rmtree(folder)
        print_table("Peak RSS of `meshnode ingest` as the study grows (should stay flat)",
                    ["study", "size", "peak RSS"], rss_rows)
        verdicts.append(at_most(f"`meshnode ingest` peak RSS flat: {sizes[-1]} slices vs {sizes[0]}, <= +20 %",
                                100 * (peaks[-1] / peaks[0] - 1), 20.0, "% growth"))
        record(*verdicts)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
