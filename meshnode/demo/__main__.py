"""`make demo`: the full mesh on 127.0.0.1, every party a real process.

An authority and a directory; three organisations' nodes. Org A ingests a
generated 200-slice CT (512x512, 16-bit) and shares it urgently with B and C;
both fetch it directly from whichever nodes hold it (C also from B), verify
every block and instance, and send signed receipts. Then both export it and
the demo checks every file byte for byte. `--identity` runs the shorter
identity-plane demo instead.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from protocol.errors import MeshError
from meshnode.demo import identity_main
from meshnode.demo.mesh import MeshDemo
from meshnode.demo.workspace import Workspace

SLICES = 200


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def progress_line(demo: MeshDemo, manifest: str, names: list[str]) -> str:
    parts = []
    for name in names:
        entry = demo.inbox_entry(demo.node(name), manifest)
        if entry is None:
            parts.append(f"{demo.node(name).org}: waiting")
        else:
            pct = 100 * entry["blocks_done"] / max(1, entry["blocks_total"])
            parts.append(f"{demo.node(name).org}: {pct:5.1f}% {entry['state']}")
    return "   ".join(parts)


def run_mesh(keep: bool) -> int:
    root = Path(tempfile.mkdtemp(prefix="dicom-mesh-demo-"))
    demo = MeshDemo(Workspace(root))
    started = time.monotonic()
    try:
        say(f"dicom-mesh demo (scratch folder {root})")
        nodes = demo.setup([("a", "RGT", "Cambridge University Hospitals NHS FT"),
                            ("b", "RJ1", "Guy's and St Thomas' NHS FT"),
                            ("c", "RAJ", "Mid and South Essex NHS FT")])
        a, b, c = nodes["a"], nodes["b"], nodes["c"]
        say("1. authority, directory and three nodes running: " + ", ".join(f"{n.org} {n.peer_id[:16]}.."
                                                                          for n in (a, b, c)))
        study, files = demo.generate_and_ingest(a, SLICES)
        size = sum(f.stat().st_size for f in files)
        say(f"2. RGT ingested a {SLICES}-slice CT ({size / 1e6:,.0f} MB)")
        t0 = time.monotonic()
        manifest = demo.share(a, study, ["RJ1", "RAJ"], "urgent")
        say(f"3. RGT shared it urgently with RJ1 and RAJ: manifest {manifest}")
        last = ""
        while not demo.delivered(a, manifest, ["RJ1", "RAJ"]):
            line = progress_line(demo, manifest, ["b", "c"])
            if line != last:
                say("   " + line)
                last = line
            if time.monotonic() - t0 > 90:
                raise TimeoutError("the study did not arrive within 90 s")
            time.sleep(0.3)
        seconds = time.monotonic() - t0
        say(f"4. both signed receipts verified at RGT after {seconds:.1f} s")
        expected = sorted(f.read_bytes() for f in files)
        for node in (b, c):
            out = root / f"export-{node.name}"
            demo.cli(node, "export", study, str(out))
            got = sorted(p.read_bytes() for p in out.rglob("*.dcm"))
            if got != expected:
                raise SystemExit(f"demo FAILED: {node.org}'s export differs from what RGT ingested")
        say("5. RJ1 and RAJ exported the study: every file byte-exact to the original")
        orgs = {n.peer_id: n.org for n in (a, b, c)}
        say(f"6. summary: {2 * size / 1e6:,.0f} MB delivered in {seconds:.1f} s "
            f"({2 * size / 1e6 / seconds:,.0f} MB/s to two recipients)")
        for node in (b, c):
            served = demo.inbox_entry(node, manifest) or {}
            shares = served.get("served_by", {})
            total = max(1, sum(shares.values()))
            say(f"   {node.org} got its blocks from: " + ", ".join(
                f"{orgs.get(p, p[:12])} {100 * n / total:.0f}%" for p, n in sorted(shares.items())))
        for node in (a, b, c):
            demo.stop(node)
        say(f"demo OK in {time.monotonic() - started:.0f} s")
        return 0
    except (MeshError, TimeoutError) as exc:
        sys.stderr.write(f"demo FAILED: {exc} (logs in {root})\n")
        keep = True
        return 1
    finally:
        demo.close()
        if keep:
            say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(prog="make demo")
    parser.add_argument("--identity", action="store_true", help="run the identity-plane demo instead")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder for inspection")
    args = parser.parse_args()
    if args.identity:
        return identity_main.main(["--keep"] if args.keep else [])
    return run_mesh(args.keep)


if __name__ == "__main__":
    raise SystemExit(main())
