"""bench/ingest.py: durable ingest speed of a node, side by side with dcmtk's storescp.

    .venv/bin/python bench/ingest.py [--slices 300] [--dx 30]

For each study: `meshnode ingest` into a fresh node (durable when it returns:
blocks fsynced, metadata committed with synchronous=FULL), and the same files
sent by dcmtk `storescu` to dcmtk `storescp` (TCP_NODELAY=1; storescp does
not fsync). Prints images/s, MB/s, the ratio, and each node's peak RSS for
growing study sizes (it should stay flat: ingest streams, one block at a time).
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

from bench.common import ensure_system_packages, free_port, meshnode, parse_json, print_table, run_measured  # noqa: E402
from meshnode.dicom import synthetic  # noqa: E402

TARGET_IMAGES_PER_S = 2000


def mesh_ingest(files_dir: Path, work: Path, workers: int) -> tuple[float, float, float, float]:
    """(images/s, MB/s as reported by ingest, wall seconds of the command, peak RSS MB)."""
    home = work / f"node-{time.monotonic_ns()}"
    subprocess.run(meshnode("init", "--home", str(home), "--org", "BENCH"), check=True, capture_output=True)
    seconds, rss, out = run_measured(
        meshnode("ingest", str(files_dir), "--home", str(home), "--json", "--no-progress", "--workers", str(workers)))
    report = parse_json(out)
    ips = float(str(report["images_per_second"]))
    mbps = float(str(report["bytes"])) / 1e6 / float(str(report["seconds"]))
    shutil.rmtree(home)
    return ips, mbps, seconds, rss


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


def dcmtk_store(files_dir: Path, work: Path) -> tuple[float, float]:
    """(seconds to send every file, peak RSS of storescp in MB)."""
    out = work / f"storescp-{time.monotonic_ns()}"
    out.mkdir()
    port = free_port()
    env = {"TCP_NODELAY": "1"}
    scp = subprocess.Popen(["storescp", "-od", str(out), "-aet", "BENCHSCP", str(port)],
                           env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:  # wait until it accepts associations (echo)
            if subprocess.run(["echoscu", "-aec", "BENCHSCP", "127.0.0.1", str(port)],
                              capture_output=True).returncode == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("storescp did not start")
            time.sleep(0.05)
        started = time.perf_counter()
        subprocess.run(["storescu", "-aec", "BENCHSCP", "+sd", "+r", "127.0.0.1", str(port), str(files_dir)],
                       env={**os.environ, **env}, check=True, capture_output=True)
        seconds = time.perf_counter() - started
    finally:
        scp.terminate()
        _, _, usage = os.wait4(scp.pid, 0)
    shutil.rmtree(out)
    return seconds, usage.ru_maxrss / 1024


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
        rows, notes = [], []
        for name, files in studies.items():
            folder = files[0].parent
            mb = sum(f.stat().st_size for f in files) / 1e6
            best = max((mesh_ingest(folder, work, args.workers) for _ in range(args.repeat)), key=lambda r: r[0])
            dcm_s, _ = min((dcmtk_store(folder, work) for _ in range(args.repeat)), key=lambda r: r[0])
            dcm_ips = len(files) / dcm_s
            floor = max(disk_floor(work, int(mb * 1e6)) for _ in range(args.repeat))
            again = mesh_reingest(folder, work, args.workers)
            notes.append(f"{name}: disk durable write {floor:,.0f} MB/s -> at most {floor / mb * len(files):,.0f} "
                         f"images/s for any durable store here; re-ingest of stored blocks (CPU only) "
                         f"{again:,.0f} images/s")
            rows.append([name, f"{mb:,.0f} MB", f"{best[0]:,.0f}", f"{best[1]:,.0f}", f"{dcm_ips:,.0f}",
                         f"{mb / dcm_s:,.0f}", f"{best[0] / dcm_ips:.2f}x",
                         "met" if "CT" not in name or best[0] >= TARGET_IMAGES_PER_S else "MISSED"])
        print_table(
            f"Durable ingest vs dcmtk storescu -> storescp (TCP_NODELAY=1), best of {args.repeat}; "
            f"target for CT >= {TARGET_IMAGES_PER_S} images/s",
            ["study", "size", "mesh img/s", "mesh MB/s", "storescp img/s", "storescp MB/s", "ratio", "target"],
            rows)
        print("\n".join(notes))
        rss_rows = []
        for slices in (50, 150, args.slices):
            folder = work / f"rss-{slices}"
            synthetic.generate_ct_study(folder, slices=slices, seed=3)
            _, _, _, rss = mesh_ingest(folder, work, args.workers)
            rss_rows.append([f"CT {slices} slices", f"{slices * 0.525:,.0f} MB", f"{rss:,.0f} MB"])
            shutil.rmtree(folder)
        print_table("Peak RSS of `meshnode ingest` as the study grows (should stay flat)",
                    ["study", "size", "peak RSS"], rss_rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
