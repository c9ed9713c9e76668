"""Urgent overtakes routine: with a large routine transfer in flight, an urgent study completes first.

The sender's uplink is capped (upload_mb_per_s) so that a 120-slice routine
CT (~63 MB) takes several seconds to cross; once the recipient shows it
fetching, a small urgent study is shared over the same link. The urgent one
must be received, verified and receipted while the routine one is still
incomplete, and both must end byte-exact.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from meshnode.demo.identity import Node
from meshnode.demo.mesh import MeshDemo
from meshnode.demo.workspace import Workspace

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ORGS = [("a", "RGT", "Cambridge University Hospitals NHS FT"),
        ("b", "RJ1", "Guy's and St Thomas' NHS FT")]
UPLOAD_MB_PER_S = 10  # 63 MB of routine study: ~6 s on the wire
ROUTINE_SLICES = 120
URGENT_SLICES = 5


def test_urgent_overtakes_routine(tmp_path: Path) -> None:
    demo = MeshDemo(Workspace(tmp_path))
    try:
        _scenario(demo, tmp_path)
    finally:
        demo.close()


def _rows(demo: MeshDemo, node: Node) -> dict[str, dict[str, Any]]:
    """One snapshot of the node's inbox, by manifest ID."""
    return {r["manifest_id"]: r for r in demo.cli(node, "inbox")}


def _scenario(demo: MeshDemo, tmp_path: Path) -> None:
    nodes = demo.setup(ORGS, start=False)
    a, b = nodes["a"], nodes["b"]
    demo.configure(a, {"limits.upload_mb_per_s": UPLOAD_MB_PER_S})
    demo.start(a)
    demo.start(b)
    routine_uid, routine_files = demo.generate_and_ingest(a, ROUTINE_SLICES, seed=31)
    urgent_uid, urgent_files = demo.generate_and_ingest(a, URGENT_SLICES, seed=32)

    routine = demo.share(a, routine_uid, ["RJ1"], "routine")

    def routine_in_flight() -> dict[str, Any] | None:
        row = _rows(demo, b).get(routine)
        return row if row and row["state"] == "fetching" and 0 < row["blocks_done"] < row["blocks_total"] else None

    in_flight = demo.wait_for(routine_in_flight, 20, "the routine study to be fetching")
    shared_at = time.monotonic()
    urgent = demo.share(a, urgent_uid, ["RJ1"], "urgent")

    def urgent_receipted() -> dict[str, dict[str, Any]] | None:
        rows = _rows(demo, b)
        return rows if rows.get(urgent, {}).get("state") == "receipted" else None

    snapshot = demo.wait_for(urgent_receipted, 30, "the urgent study to be receipted", interval=0.1)
    seen_s = time.monotonic() - shared_at
    routine_then = snapshot[routine]
    # one snapshot of B's inbox: the urgent study complete and receipted, the routine one still on its way
    assert routine_then["state"] == "fetching"
    assert routine_then["blocks_done"] < routine_then["blocks_total"]
    assert demo.delivered(a, urgent, ["RJ1"])  # A holds RJ1's verified receipt for the urgent one

    demo.wait_for(lambda: demo.delivered(a, routine, ["RJ1"]), 60, "the routine study to be delivered")
    # A's audit log, in the order things happened: both shared, the urgent one delivered first
    events = [(e["action"], e["manifest_id"], e["at_ms"]) for e in demo.audit(a)
              if e["action"] in ("share", "delivered")]
    at = {(action, mid): ms for action, mid, ms in events}
    assert [(action, mid) for action, mid, _ in events] == [
        ("share", routine), ("share", urgent), ("delivered", urgent), ("delivered", routine)]
    print(f"\nurgent study ({URGENT_SLICES} slices): shared to verified receipt at RGT in "
          f"{at['delivered', urgent] - at['share', urgent]} ms (first instance usable at RJ1 after "
          f"{snapshot[urgent]['first_instance_ms']} ms of fetching; seen receipted through the CLI after "
          f"{seen_s:.1f} s); routine study then at {routine_then['blocks_done']}/{routine_then['blocks_total']} "
          f"blocks (was {in_flight['blocks_done']} when the urgent one was shared)")
    print(f"routine study ({ROUTINE_SLICES} slices): shared to verified receipt in "
          f"{at['delivered', routine] - at['share', routine]} ms at {UPLOAD_MB_PER_S} MB/s upload cap")
    for uid, files in ((routine_uid, routine_files), (urgent_uid, urgent_files)):
        out = tmp_path / f"export-{uid[-8:]}"
        demo.cli(b, "export", uid, str(out))
        assert sorted(p.read_bytes() for p in out.rglob("*.dcm")) == sorted(f.read_bytes() for f in files)
