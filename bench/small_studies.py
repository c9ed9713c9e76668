"""bench/small_studies.py: many small studies shared at once, and whether admission control hurts honest peers.

    .venv/bin/python bench/small_studies.py [--studies 200] [--slices 5] [--rows 512] [--concurrency 4]

Real processes (meshnode/demo/mesh.MeshDemo): an authority, a directory, a sender A (RGT) and two
recipients B (RJ1) and C (RAJ). `--studies` synthetic CT studies of `--slices` slices are generated and
ingested into A (one `meshnode ingest` of their folder), then shared with both organisations through A's
control API (POST /share, `--concurrency` requests in flight). The bench waits until A holds a verified
receipt from both organisations for every manifest (400 by default).

Printed, all read from the nodes rather than from this process's clock where they can be:
- studies/s: studies / (A's first `share` audit entry -> A's last `delivered` audit entry), and the wall
  time around it (first POST /share -> last receipt seen on GET /outbox)
- admission: every node's refusals and disconnects by admission control (GET /status "admission", the
  node's own counters since it started), and the lines "keeps exceeding its limits" in the node logs
Verdicts (bench.summary.record): >= 30 studies/s; 0 legitimate peers disconnected by admission control.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pydicom  # noqa: E402

from bench.common import print_table  # noqa: E402
from bench.summary import at_least, at_most, record  # noqa: E402
from meshnode.control.client import ControlClient  # noqa: E402
from meshnode.demo.identity import Node  # noqa: E402
from meshnode.demo.mesh import MeshDemo  # noqa: E402
from meshnode.demo.workspace import Workspace  # noqa: E402
from meshnode.dicom import synthetic  # noqa: E402

RECIPIENTS = ["RJ1", "RAJ"]
ORGS = [("a", "RGT", "Sender"), ("b", "RJ1", "Recipient B"), ("c", "RAJ", "Recipient C")]
TARGET_STUDIES_PER_S = 30.0
DISCONNECT_LINE = "keeps exceeding its limits"


def generate(root: Path, studies: int, slices: int, rows: int) -> list[str]:
    """`studies` synthetic studies under root/, one folder each; returns their Study Instance UIDs."""
    uids = []
    for i in range(studies):
        files = synthetic.generate_ct_study(root / f"study-{i:04d}", slices=slices, seed=1000 + i, rows=rows,
                                            columns=rows)
        uids.append(str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID))
    return uids


def receipts_done(client: ControlClient, manifests: set[str]) -> int:
    rows = client.call("GET", "/outbox")
    return sum(1 for r in rows if r["manifest_id"] in manifests
               for org in RECIPIENTS if r["recipients"].get(org, {}).get("receipt_verified"))


def admission(demo: MeshDemo, node: Node) -> dict[str, Any]:
    status = ControlClient(node.home).call("GET", "/status")
    counts = dict(status.get("admission") or {})
    log = demo.ws.root / f"{node.name}.log"
    counts["log_disconnects"] = log.read_text(errors="replace").count(DISCONNECT_LINE) if log.exists() else 0
    return counts


def run(work: Path, studies: int, slices: int, rows: int, concurrency: int, timeout: float) -> dict[str, Any]:
    demo = MeshDemo(Workspace(work / "mesh"))
    try:
        nodes = demo.setup(ORGS)
        sender = nodes["a"]
        uids = generate(work / "studies", studies, slices, rows)
        demo.cli(sender, "ingest", str(work / "studies"), "--no-progress")
        client = ControlClient(sender.home, timeout=120)

        def share(uid: str) -> str:
            body = {"study": uid, "to": RECIPIENTS, "priority": "routine"}
            return str(ControlClient(sender.home, timeout=120).call("POST", "/share", body)["manifest_id"])

        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            manifests = set(pool.map(share, uids))
        shared_s = time.perf_counter() - t0
        want = len(manifests) * len(RECIPIENTS)
        done = 0
        deadline = time.monotonic() + timeout
        while done < want:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{done} of {want} receipts after {timeout:g} s")
            time.sleep(1.0)  # polling the sender's control API (one /outbox call a second)
            done = receipts_done(client, manifests)
        wall = time.perf_counter() - t0
        entries = [e for e in demo.audit(sender) if e.get("manifest_id") in manifests]
        first_share = min(e["at_ms"] for e in entries if e["action"] == "share")
        last_receipt = max(e["at_ms"] for e in entries if e["action"] == "delivered")
        node_s = (last_receipt - first_share) / 1000
        return {"studies": len(manifests), "receipts": want, "node_s": node_s, "wall_s": wall,
                "shared_s": shared_s, "admission": {n.name: admission(demo, n) for n in nodes.values()}}
    finally:
        demo.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=200)
    ap.add_argument("--slices", type=int, default=5)
    ap.add_argument("--rows", type=int, default=512, help="rows and columns of each slice")
    ap.add_argument("--concurrency", type=int, default=4, help="POST /share requests in flight")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder (node logs) and print it")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-small-"))
    try:
        r = run(work, args.studies, args.slices, args.rows, args.concurrency, args.timeout)
    finally:
        if args.keep:
            print(f"scratch kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    rate = r["studies"] / r["node_s"]
    print_table("Many small studies: A shares with RJ1 and RAJ through its control API",
                ["studies", "slices", "receipts", "share calls (s)", "share -> last receipt, in A (s)",
                 "studies/s", "wall (s)"],
                [[r["studies"], args.slices, r["receipts"], f"{r['shared_s']:.1f}", f"{r['node_s']:.1f}",
                  f"{rate:.1f}", f"{r['wall_s']:.1f}"]])
    rows = []
    for name, adm in r["admission"].items():
        rows.append([name, adm.get("refused", "?"), adm.get("waited", "?"), adm.get("disconnected", "?"),
                     adm["log_disconnects"]])
    print_table("Admission control, from each node's /status and log",
                ["node", "refused", "waited (queued, not refused)", "disconnected", "disconnect log lines"], rows)
    disconnects = sum(max(int(adm.get("disconnected", 0)), int(adm["log_disconnects"])) for adm in r["admission"].values())
    # every peer in this bench is legitimate: any admission disconnect is one of a legitimate peer
    record(at_least(f"{args.studies} x {args.slices}-slice studies to 2 orgs >= 30 studies/s", rate,
                    TARGET_STUDIES_PER_S, "studies/s"),
           at_most("legitimate peers disconnected by admission control = 0", float(disconnects), 0, "disconnects"))


if __name__ == "__main__":
    main()
