"""bench/wado_profile.py: where a WADO-RS study retrieve spends the server's CPU, meshnode vs Orthanc.

    .venv/bin/python bench/wado_profile.py [--slices 300] [--repeat 7] [--py-spy out]

Starts the same two servers as bench/wado.py (a real node, Orthanc with its
DICOMweb plugin, the same generated CT) and keeps them up while it runs the
wire measurement (one streamed GET of the study's multipart body) alternately
against each, `--repeat` times. Beside the wall-clock seconds it prints each
server process's CPU seconds per retrieval (user + system of all its threads,
from /proc), a figure far less disturbed by other work on a shared machine
than the wall clock. With `--py-spy OUT` it then records the node with py-spy
(OUT.svg flame graph and OUT.txt collapsed stacks, 200 samples/s) over eight
more retrievals.

Linux only (/proc). A bench, not a test: nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pydicom  # noqa: E402
import requests  # noqa: E402

from bench.common import ensure_system_packages  # noqa: E402
from bench.wado import ACCEPT, Server, start_meshnode, start_orthanc  # noqa: E402


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of every thread of process `pid` so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = Path(f"/proc/{pid}/task/{task}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def get_study(server: Server, study: str) -> int:
    """One streamed GET of the study's multipart body, discarded; its size."""
    size = 0
    with requests.get(f"{server.root}/studies/{study}", headers={**server.headers, "Accept": ACCEPT},
                      stream=True, timeout=300) as response:
        response.raise_for_status()
        for chunk in response.iter_content(chunk_size=1 << 20):
            size += len(chunk)
    return size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--py-spy", dest="spy", help="record the node with py-spy into SPY.svg and SPY.txt")
    args = parser.parse_args()
    ensure_system_packages("orthanc", "orthanc-dicomweb")
    work = Path(tempfile.mkdtemp(prefix="bench-wado-profile-"))
    try:
        from meshnode.dicom import synthetic

        folder = work / "study"
        synthetic.generate_ct_study(folder, slices=args.slices, seed=7)
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        total = sum(f.stat().st_size for f in files)
        orthanc, orthanc_server = start_orthanc(work, files)
        mesh, mesh_server = start_meshnode(work, folder)
        try:
            pids = {mesh_server.name: next(iter(mesh.procs.values())).pid, orthanc_server.name: orthanc.pid}
            servers = [mesh_server, orthanc_server]
            for server in servers:  # warm-up
                get_study(server, study)
            runs: dict[str, list[tuple[float, float]]] = {s.name: [] for s in servers}
            for _ in range(args.repeat):
                for server in servers:
                    before, started = cpu_seconds(pids[server.name]), time.perf_counter()
                    size = get_study(server, study)
                    seconds = time.perf_counter() - started
                    if size < total:
                        raise RuntimeError(f"{server.name}: a body of {size} bytes for {total} bytes of DICOM")
                    runs[server.name].append((seconds, cpu_seconds(pids[server.name]) - before))
            print(f"WADO-RS wire, {len(files)} instances, {total / 1e6:.1f} MB, {args.repeat} runs each, alternating")
            for name, values in runs.items():
                walls = sorted(v[0] for v in values)
                cpus = sorted(v[1] for v in values)
                print(f"  {name:32s} wall best {walls[0]:.3f} s median {walls[len(walls) // 2]:.3f} s   "
                      f"server CPU median {cpus[len(cpus) // 2]:.3f} s per retrieval")
            if args.spy:
                spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
                pid = str(pids[mesh_server.name])
                recorders = [subprocess.Popen([spy, "record", "--pid", pid, "-r", "200", "--nonblocking", "-o", out,
                                               *fmt], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                             for out, fmt in ((args.spy + ".svg", []), (args.spy + ".txt", ["-f", "raw"]))]
                time.sleep(2)  # py-spy attaching
                for _ in range(8):
                    get_study(mesh_server, study)
                for r in recorders:
                    r.send_signal(signal.SIGINT)
                    r.wait(60)
                print(f"py-spy: {args.spy}.svg, {args.spy}.txt")
        finally:
            mesh.close()
            orthanc.terminate()
            try:
                orthanc.wait(10)
            except subprocess.TimeoutExpired:
                orthanc.kill()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
