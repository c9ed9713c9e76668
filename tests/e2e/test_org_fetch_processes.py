"""Two nodes of one recipient organisation, as real processes on 127.0.0.1 (each its own key and certificate
under RJ1): the node protocol.org_fetch ranks first fetches from the sender while the other stands by; it
is killed mid-transfer; the other takes over and completes, byte-exact; exactly one receipt reaches the
sender; restarted, the killed node copies the study from its sibling, and the sender uploads nothing more
and still has one receipt."""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from meshnode.control.client import ControlClient
from meshnode.demo.identity import Node
from meshnode.demo.mesh import MeshDemo
from protocol.org_fetch import rank

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

#: how far into the transfer the fetching node is killed
KILL_AT = 0.3
ORGS = [("a", "RGT", "Org A"), ("b1", "RJ1", "Org B"), ("b2", "RJ1", "Org B")]


def exported(demo: MeshDemo, node_name: str, study: str, out: Path) -> list[bytes]:
    demo.cli(demo.node(node_name), "export", study, str(out))
    return sorted(p.read_bytes() for p in out.rglob("*.dcm"))


def inbox(node: Node, manifest: str) -> dict[str, Any] | None:
    """Asked of the node's control API from this process (a CLI process costs a real share of the CPU)."""
    rows = ControlClient(node.home).call("GET", "/inbox")
    return next((r for r in rows if r["manifest_id"] == manifest), None)


def actions(demo: MeshDemo, node_name: str, action: str, manifest: str) -> list[dict[str, object]]:
    return [e for e in demo.audit(demo.node(node_name)) if e["action"] == action and e.get("manifest_id") == manifest]


def receipts_queued(node: Node) -> int:
    """Receipts this recipient node queued for delivery (its outbox's receipt items, meshnode.node.delivery):
    counted at the recipient, so a copying node that sent a receipt shows here although the sender records
    one receipt per org and acknowledges the others."""
    with sqlite3.connect(f"file:{node.home / 'node.db'}?mode=ro", uri=True, timeout=10) as db:
        return int(db.execute("SELECT count(*) FROM retry_queue WHERE queue = 'delivery' AND key LIKE 'receipt %'"
                              ).fetchone()[0])


def test_recipient_org_node_killed_mid_transfer_sibling_completes_one_receipt(mesh: MeshDemo,
                                                                              tmp_path: Path) -> None:
    # the sender's uplink capped so that the transfer takes ~15 s: the kill lands mid-transfer on a busy machine
    nodes = mesh.setup(ORGS, config={"limits.upload_mb_per_s": 3.5, "replication.takeover_seconds": 3})
    a = nodes["a"]
    study, files = mesh.generate_and_ingest(a, 100, rows=512, columns=512)
    expected = sorted(f.read_bytes() for f in files)
    manifest = mesh.share(a, study, ["RJ1"])
    by_peer = {nodes[n].peer_id: n for n in ("b1", "b2")}
    first, second = (by_peer[p] for p in rank(manifest, by_peer))

    def partway() -> bool:
        entry = inbox(nodes[first], manifest)
        return entry is not None and KILL_AT * entry["blocks_total"] <= entry["blocks_done"]

    mesh.wait_for(partway, 60, "the first-ranked node's transfer to be under way", interval=0.1)
    standing_by = inbox(nodes[second], manifest)
    assert standing_by is not None and standing_by["blocks_done"] == 0  # one node of the org fetches
    os.kill(mesh.procs[first].pid, signal.SIGKILL)
    mesh.procs.pop(first).wait()
    assert not mesh.delivered(a, manifest, ["RJ1"])

    mesh.wait_for(lambda: mesh.delivered(a, manifest, ["RJ1"]), 120, "the org's receipt from the other node")
    assert exported(mesh, second, study, tmp_path / "out-second") == expected
    entry = mesh.inbox_entry(nodes[second], manifest)
    assert entry is not None and entry["state"] == "receipted"
    assert actions(mesh, second, "org-fetch-takeover", manifest)
    assert len(actions(mesh, "a", "delivered", manifest)) == 1
    served = mesh.cli(a, "status")["served"]["RJ1"]

    mesh.start(nodes[first])  # learns from its sibling before fetching: copies, sends no receipt
    mesh.wait_for(lambda: (inbox(nodes[first], manifest) or {}).get("state") == "receipted", 120,
                  "the restarted node to copy the study from its sibling")
    assert exported(mesh, first, study, tmp_path / "out-first") == expected
    assert actions(mesh, first, "org-copy", manifest)
    assert mesh.cli(a, "status")["served"]["RJ1"] == served  # the sender uploaded nothing more
    assert len(actions(mesh, "a", "delivered", manifest)) == 1
    # the org's one receipt was queued by the node that took over, none by the copying node (review i16 MINOR 9:
    # the sender's own count above cannot tell, as it records one receipt per org and acknowledges the rest)
    assert (receipts_queued(nodes[second]), receipts_queued(nodes[first])) == (1, 0)
    outbox = next(r for r in mesh.cli(a, "outbox") if r["manifest_id"] == manifest)
    assert {org: d["state"] for org, d in outbox["recipients"].items()} == {"RJ1": "delivered"}
