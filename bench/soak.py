"""bench/soak.py: four nodes sharing small studies round robin for a long time; is each node's RSS flat?

    .venv/bin/python bench/soak.py [--minutes 60] [--interval 1.0] [--slices 5] [--rows 128] [--sample 60]

Real processes (meshnode/demo/mesh.MeshDemo): an authority, a directory and four nodes A (RGT), B (RJ1),
C (RAJ), D (RXH). Before the clock starts each node ingests its own synthetic studies (enough for the
whole run; `--rows` small, since what is measured is the state a node keeps per share handled, not
per byte). Then every `--interval` seconds the next node in turn shares its next study with the next
two nodes (A -> B, C; B -> C, D; ...) through its control API, and the bench waits for nothing: the
shares, fetches and receipts overlap as they would in service. Every `--sample` seconds each node's
RSS is read from /proc.

Verdict, per node, "RSS flat after warm-up": the least-squares slope of RSS over the second half of the
run is below 0.1 MiB/min (6 MiB an hour). The first half is warm-up (caches filling to their bounds,
the allocator's arenas, imports done lazily); a node that keeps state per share handled grows through
the second half as through the first, and its slope says so. A run shorter than four samples in its
second half gives no verdict. The samples, the first-half and second-half slopes are printed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pydicom  # noqa: E402

from bench.common import print_table  # noqa: E402
from bench.summary import Verdict, record  # noqa: E402
from meshnode.control.client import ControlClient  # noqa: E402
from meshnode.demo.mesh import MeshDemo  # noqa: E402
from meshnode.demo.workspace import Workspace  # noqa: E402
from meshnode.dicom import synthetic  # noqa: E402
from protocol.errors import MeshError  # noqa: E402

ORGS = [("a", "RGT", "A"), ("b", "RJ1", "B"), ("c", "RAJ", "C"), ("d", "RXH", "D")]
FLAT_MIB_PER_MIN = 0.1


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise LookupError("no VmRSS")


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (minutes, MiB) points, MiB per minute."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0


def run(work: Path, minutes: float, interval: float, slices: int, rows: int, sample: float) -> dict[str, object]:
    demo = MeshDemo(Workspace(work / "mesh"))
    try:
        nodes = demo.setup(ORGS)
        names = [name for name, _, _ in ORGS]
        orgs = {name: org for name, org, _ in ORGS}
        per_node = int(minutes * 60 / interval / len(names)) + 2
        studies: dict[str, list[str]] = {}
        for k, name in enumerate(names):
            folder = work / f"studies-{name}"
            uids = []
            for i in range(per_node):
                files = synthetic.generate_ct_study(folder / f"s{i:05d}", slices=slices, rows=rows, columns=rows,
                                                    seed=100_000 * (k + 1) + i)
                uids.append(str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID))
            demo.cli(nodes[name], "ingest", str(folder), "--no-progress")
            studies[name] = uids
        pids = {name: demo.procs[name].pid for name in names}
        clients = {name: ControlClient(nodes[name].home, timeout=60) for name in names}
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
        t0 = time.monotonic()
        next_sample = t0
        shares = failures = 0
        turn = 0
        while True:
            now = time.monotonic()
            if now >= next_sample:
                for name in names:
                    samples[name].append(((now - t0) / 60, rss_mib(pids[name])))
                print(f"{(now - t0) / 60:5.1f} min  " + "  ".join(f"{n}={samples[n][-1][1]:.1f}" for n in names)
                      + f" MiB  ({shares} shares, {failures} failed)", flush=True)
                next_sample += sample
            if now - t0 >= minutes * 60:
                break
            sender = names[turn % len(names)]
            to = [orgs[names[(turn + 1) % len(names)]], orgs[names[(turn + 2) % len(names)]]]
            uid = studies[sender][(turn // len(names)) % per_node]
            try:
                clients[sender].call("POST", "/share", {"study": uid, "to": to, "priority": "routine"})
                shares += 1
            except MeshError as exc:
                failures += 1
                print(f"share by {sender} failed: {exc}", file=sys.stderr)
            turn += 1
            time.sleep(max(0.0, t0 + turn * interval - time.monotonic()))
        return {"samples": samples, "shares": shares, "failures": failures}
    finally:
        demo.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between shares (round robin)")
    ap.add_argument("--slices", type=int, default=5)
    ap.add_argument("--rows", type=int, default=128, help="rows and columns of each slice")
    ap.add_argument("--sample", type=float, default=60.0, help="seconds between RSS samples")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    try:
        r = run(work, args.minutes, args.interval, args.slices, args.rows, args.sample)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    samples: dict[str, list[tuple[float, float]]] = r["samples"]  # type: ignore[assignment]
    rows = []
    verdicts = []
    half = args.minutes / 2
    for name, points in samples.items():
        first = [p for p in points if p[0] <= half]
        second = [p for p in points if p[0] >= half]
        s1 = slope(first) if len(first) >= 2 else float("nan")
        s2 = slope(second) if len(second) >= 2 else float("nan")
        rows.append([name, f"{points[0][1]:.1f}", f"{points[-1][1]:.1f}", f"{max(p[1] for p in points):.1f}",
                     f"{s1:+.2f}", f"{s2:+.2f}", len(second)])
        if len(second) >= 4:
            verdicts.append(Verdict(f"soak {args.minutes:g} min, node {name}: RSS flat after warm-up "
                                    f"(2nd-half slope < {FLAT_MIB_PER_MIN} MiB/min)",
                                    f"{s2:+.2f} MiB/min", "", "", s2 < FLAT_MIB_PER_MIN))
    print_table(f"Soak: {r['shares']} shares ({r['failures']} failed), one every {args.interval:g} s, round robin",
                ["node", "RSS start (MiB)", "end", "max", "slope 1st half (MiB/min)", "slope 2nd half",
                 "2nd-half samples"], rows)
    if verdicts:
        record(*verdicts)
    else:
        print("\nno verdict: fewer than four samples in the second half (run longer or sample more often)")


if __name__ == "__main__":
    main()
