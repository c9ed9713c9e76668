"""bench/shaped_link.py: node -> node over a 1 Gbit/s link, two network namespaces shaped with tc tbf.

    .venv/bin/python bench/shaped_link.py [--slices 300] [--mbit 1000]

The link is meshsim emulation's (simulations/emulation/shaping.py, reused,
not copied): each node in its own network namespace, joined by a veth pair
to a bridge in a core namespace where the directory runs; tc tbf shapes each
node's side (its uplink) and the bridge side (its downlink) at --mbit. A
study goes from A's namespace up A's link and down B's: a 1 Gbit/s path.
The nodes, the directory and their control-API probes are started by
simulations/emulation/cluster.py inside their namespaces.

Measured, in this order:
- the link: one plain TCP stream, this file re-run as a sink in B's
  namespace and a source in A's, 200 MB: what the shaped link carries
  (about 1448/1514 of the rate: TCP/IP and Ethernet headers);
- the nodes: A shares a generated CT with B (urgent), timed by A's own audit
  log from `share` to B's verified receipt (every block durable and verified
  at B), as bench/transfer.py (a) does on loopback.

Verdict (bench/summary.py): node -> node goodput >= 110 MB/s, with the
link's own TCP figure beside it. Needs root, `ip` and `tc` with tbf; when
they are missing the bench prints why and records nothing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pydicom  # noqa: E402

from bench.common import print_table  # noqa: E402
from bench.summary import at_least, record  # noqa: E402
from protocol.errors import UnavailableError  # noqa: E402
from simulations.emulation.cluster import Cluster, NodeProc  # noqa: E402
from simulations.emulation.shaping import Placement, Rate, Shaper, detect  # noqa: E402

TARGET_MB_PER_S = 110.0
LINK_PROBE_MB = 200
SINK_PORT = 5201
CHUNK = 1 << 20
RECEIPT_TIMEOUT = 900.0
POLL = 0.25


def _sink(host: str) -> None:
    """Child, in B's namespace: accept one connection, read to EOF, print bytes and seconds from the first byte."""
    with socket.create_server((host, SINK_PORT)) as server:
        print("READY", flush=True)
        conn, _ = server.accept()
        with conn:
            buf = bytearray(CHUNK)
            got = conn.recv_into(buf)
            started = time.perf_counter()
            while True:
                n = conn.recv_into(buf)
                if n == 0:
                    break
                got += n
            print(json.dumps({"bytes": got, "seconds": time.perf_counter() - started}), flush=True)


def _source(host: str, megabytes: int) -> None:
    """Child, in A's namespace: send `megabytes` MiB to the sink, then close."""
    block = bytes(CHUNK)
    with socket.create_connection((host, SINK_PORT), timeout=60) as conn:
        for _ in range(megabytes):
            conn.sendall(block)


def link_mb_per_s(a: Placement, b: Placement) -> float:
    """MB/s of one plain TCP stream from A's namespace to B's over the shaped path."""
    me = str(Path(__file__).resolve())
    sink = subprocess.Popen([*b.prefix, sys.executable, me, "--role", "sink", "--host", b.host],
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        assert sink.stdout is not None
        if sink.stdout.readline().strip() != "READY":
            raise UnavailableError("the link probe's sink did not start")
        subprocess.run([*a.prefix, sys.executable, me, "--role", "source", "--host", b.host, "--mb",
                        str(LINK_PROBE_MB)], check=True, timeout=300, stdin=subprocess.DEVNULL)
        out, _ = sink.communicate(timeout=60)
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait()
    report = json.loads(out.strip().splitlines()[-1])
    return float(report["bytes"]) / 1e6 / float(report["seconds"])


def _audit(cluster: Cluster, node: NodeProc) -> list[dict[str, object]]:
    out = str(cluster.cli(node, "audit", "export", "--json"))
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def share_seconds(cluster: Cluster, sender: NodeProc, manifest: str, org: str) -> float:
    """From the sender's audit log: its `share` of the manifest to the verified receipt from `org`."""
    entries = [e for e in _audit(cluster, sender) if e.get("manifest_id") == manifest]
    shared = min(int(str(e["at_ms"])) for e in entries if e["action"] == "share")
    delivered = min(int(str(e["at_ms"])) for e in entries if e["action"] == "delivered" and e["actor_org"] == org)
    return (delivered - shared) / 1000


def delivered(cluster: Cluster, sender: NodeProc, manifest: str, org: str) -> bool:
    rows = cluster.call(sender, "GET", "/outbox")
    if not isinstance(rows, list):
        raise UnavailableError("GET /outbox did not answer a list")
    row = next((r for r in rows if r["manifest_id"] == manifest), None)
    return row is not None and bool(row["recipients"].get(org, {}).get("receipt_verified"))


def measure_shaped(work: Path, slices: int, mbit: float) -> tuple[float, float, int] | str:
    """(node -> node MB/s, the link's plain TCP MB/s, study bytes), or why the link cannot be built here."""
    try:
        shaper: Shaper = detect("netns")
    except UnavailableError as exc:
        return str(exc)
    cluster = Cluster(work / "shaped")
    rate = Rate(mbit * 1e6 / 8, mbit * 1e6 / 8)
    try:
        shaper.setup_core()
        cluster.start_authority_and_directory(shaper.directory())
        a = NodeProc("RGT", "acute-trust", cluster.root / "node-a", shaper.add_node(0, rate)[0])
        b = NodeProc("RJ1", "acute-trust", cluster.root / "node-b", shaper.add_node(1, rate)[0])
        link = link_mb_per_s(a.placement, b.placement)
        for node in (a, b):
            cluster.add_node(node, {})
            cluster.start_node(node)
        from meshnode.dicom import synthetic

        files = synthetic.generate_ct_study(work / "shaped-study", slices=slices, seed=5)
        size = sum(f.stat().st_size for f in files)
        ingested = json.loads(str(cluster.cli(a, "ingest", str(files[0].parent), "--no-progress", "--json")))
        if ingested.get("instances") != len(files):
            raise UnavailableError(f"A ingested {ingested.get('instances')} of {len(files)} instances")
        study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        shared = cluster.call(a, "POST", "/share", {"study": study, "to": [b.org], "priority": "urgent"})
        if not isinstance(shared, dict):
            raise UnavailableError("POST /share did not answer an object")
        manifest = str(shared["manifest_id"])
        deadline = time.monotonic() + RECEIPT_TIMEOUT
        while not delivered(cluster, a, manifest, b.org):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no verified receipt from B within {RECEIPT_TIMEOUT:g} s")
            time.sleep(POLL)  # polling a real process's visible state, bounded by the deadline
        return size / 1e6 / share_seconds(cluster, a, manifest, b.org), link, size
    finally:
        cluster.stop_all()
        shaper.teardown()


def report_shaped(result: tuple[float, float, int] | str, slices: int, mbit: float) -> None:
    """Print the section and record its verdict (nothing recorded when the link could not be built)."""
    if isinstance(result, str):
        print(f"\nshaped link ({mbit:g} Mbit/s, network namespaces): SKIPPED: {result}")
        return
    node, link, size = result
    print_table(f"Node -> node over a {mbit:g} Mbit/s tc tbf link (two network namespaces), {slices}-slice CT, "
                f"{size / 1e6:,.0f} MB",
                ["measure", "MB/s", "share of the link's TCP"],
                [["plain TCP stream over the link (its capacity)", f"{link:,.1f}", "1.00"],
                 ["dicom-mesh node -> node (durable, verified, receipt)", f"{node:,.1f}", f"{node / link:.2f}"]])
    record(at_least(f"node -> node over a {mbit:g} Mbit/s shaped link >= {TARGET_MB_PER_S:.0f} MB/s", node,
                    TARGET_MB_PER_S, "MB/s", peer=f"plain TCP over the link {link:,.1f} MB/s", peer_value=link))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--role", choices=["bench", "sink", "source"], default="bench")
    parser.add_argument("--host", default="")
    parser.add_argument("--mb", type=int, default=LINK_PROBE_MB)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--mbit", type=float, default=1000.0)
    args = parser.parse_args()
    if args.role == "sink":
        _sink(args.host)
        return
    if args.role == "source":
        _source(args.host, args.mb)
        return
    work = Path(tempfile.mkdtemp(prefix="bench-shaped-"))
    try:
        report_shaped(measure_shaped(work, args.slices, args.mbit), args.slices, args.mbit)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
