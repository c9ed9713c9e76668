"""The exchange with real processes on 127.0.0.1: authority, directory and nodes of several orgs."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from meshnode.demo.identity import Node
from meshnode.demo.mesh import MeshDemo

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

#: how far into the transfer the recipient is killed (its progress is saved every half second, so it holds more)
KILL_AT = 0.6
ORGS = [("a", "RGT", "Org A"), ("b", "RJ1", "Org B"), ("c", "RAJ", "Org C")]


def exported(demo: MeshDemo, node_name: str, study: str, out: Path) -> list[bytes]:
    demo.cli(demo.node(node_name), "export", study, str(out))
    return sorted(p.read_bytes() for p in out.rglob("*.dcm"))


def codes(entries: list[dict[str, object]], action: str) -> list[dict[str, object]]:
    return [e for e in entries if e["action"] == action]


def test_three_node_share_multi_source_receipts_audit(mesh: MeshDemo, tmp_path: Path) -> None:
    # Capped uplinks, so that the study takes a few seconds even on a fast machine and each recipient
    # hears what the other holds while it still needs it.
    nodes = mesh.setup(ORGS, config={"limits.upload_mb_per_s": 30})
    a, b, c = nodes["a"], nodes["b"], nodes["c"]
    study, files = mesh.generate_and_ingest(a, 120, rows=512, columns=512)
    manifest = mesh.share(a, study, ["RJ1", "RAJ"])
    mesh.wait_for(lambda: mesh.delivered(a, manifest, ["RJ1", "RAJ"]), 90, "both signed receipts")
    expected = sorted(f.read_bytes() for f in files)
    assert exported(mesh, "b", study, tmp_path / "out-b") == expected
    assert exported(mesh, "c", study, tmp_path / "out-c") == expected
    # multi-source: each recipient got blocks both from the sender and from the other recipient
    for node, other in ((b, c), (c, b)):
        entry = mesh.inbox_entry(node, manifest)
        assert entry is not None and entry["state"] == "receipted"
        served = entry["served_by"]
        assert served.get(a.peer_id, 0) > 0 and served.get(other.peer_id, 0) > 0, served
    outbox = next(r for r in mesh.cli(a, "outbox") if r["manifest_id"] == manifest)
    assert {org: d["state"] for org, d in outbox["recipients"].items()} == {"RJ1": "delivered", "RAJ": "delivered"}
    assert {org: d["status"] for org, d in outbox["recipients"].items()} == {"RJ1": "delivered", "RAJ": "delivered"}
    # audit entries on all three (110104 Instances Transferred), chains intact
    sent = mesh.audit(a)
    assert codes(sent, "share") and len(codes(sent, "delivered")) == 2
    assert all(e["event_code"] == 110104 for e in codes(sent, "delivered"))
    for node in (b, c):
        log = mesh.audit(node)
        assert codes(log, "manifest-received") and codes(log, "received")
        assert mesh.ws.run("meshnode", "audit", "verify", "--home", str(node.home)).code == 0


def test_recipient_killed_mid_transfer_resumes_without_refetching(mesh: MeshDemo, tmp_path: Path) -> None:
    nodes = mesh.setup(ORGS[:2], config={"limits.upload_mb_per_s": 10})
    a, b = nodes["a"], nodes["b"]
    study, files = mesh.generate_and_ingest(a, 100, rows=512, columns=512)
    manifest = mesh.share(a, study, ["RJ1"])

    def partway() -> bool:
        entry = mesh.inbox_entry(b, manifest)
        return entry is not None and KILL_AT * entry["blocks_total"] <= entry["blocks_done"]

    mesh.wait_for(partway, 60, "the transfer to be well under way", interval=0.1)
    os.kill(mesh.procs["b"].pid, signal.SIGKILL)
    mesh.procs.pop("b").wait()
    # every block B made durable before the kill (B holds nothing else): named by its CID only once it
    # was synced, whether or not B recorded it before it died
    on_disk = {p.name for p in (b.home / "store" / "blocks").rglob("b*") if p.is_file()}
    served_before = _settled_served(mesh, a)
    assert not mesh.delivered(a, manifest, ["RJ1"])  # killed before it had verified the study
    mesh.start(b)
    mesh.wait_for(lambda: mesh.delivered(a, manifest, ["RJ1"]), 90, "the receipt after restart")
    entry = mesh.inbox_entry(b, manifest)
    assert entry is not None
    served_after = mesh.cli(a, "status")["served"]["RJ1"]["blocks"] - served_before["blocks"]
    missing = entry["blocks_total"] - len(on_disk)
    # only what was not durable at B was fetched again: no block verified on its disk was sent twice
    assert served_after - missing == 0, (served_after, missing, len(on_disk))
    assert exported(mesh, "b", study, tmp_path / "out") == sorted(f.read_bytes() for f in files)


def _settled_served(mesh: MeshDemo, node: Node) -> dict[str, int]:
    """What a node has served RJ1 once its count stops moving (a stream cut by a kill is counted when the
    sender notices)."""
    last: list[dict[str, int]] = []

    def settled() -> bool:
        last.append(mesh.cli(node, "status")["served"]["RJ1"])
        return len(last) > 1 and last[-1] == last[-2]

    mesh.wait_for(settled, 30, "the sender's served count to settle", interval=1.0)
    return last[-1]


def test_corrupting_peer_is_banned_and_blocks_come_from_elsewhere(mesh: MeshDemo, tmp_path: Path) -> None:
    nodes = mesh.setup(ORGS, start=False, config={"limits.upload_mb_per_s": 20})
    a, b, c = nodes["a"], nodes["b"], nodes["c"]
    mesh.start(a)
    mesh.start(c)
    # B runs a node that flips a bit in every block it serves
    corrupting = (
        "import sys; import meshnode.node.wire as w\n"
        "orig = w.Wire._read_block\n"
        "def bad(self, cid):\n"
        "    f = orig(self, cid)\n"
        "    return w.BlockData(f.cid, f.data[:-1] + bytes([f.data[-1] ^ 1])) if isinstance(f, w.BlockData) else f\n"
        "w.Wire._read_block = bad\n"
        "from meshnode.cli.main import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    proc, addrs = mesh.ws.start_service([sys.executable, "-c", corrupting, "run", "--home", str(b.home), "-v"], "b")
    mesh.procs["b"] = proc
    study, files = mesh.generate_and_ingest(a, 60, rows=512, columns=512)
    first = mesh.share(a, study, ["RJ1"])
    mesh.wait_for(lambda: mesh.delivered(a, first, ["RJ1"]), 90, "B to hold the study")
    second = mesh.share(a, study, ["RJ1", "RAJ"])  # B holds every block; C will try it as a source
    mesh.wait_for(lambda: mesh.delivered(a, second, ["RAJ"]), 120, "C's receipt")
    assert exported(mesh, "c", study, tmp_path / "out-c") == sorted(f.read_bytes() for f in files)
    log = mesh.audit(c)
    corrupt = codes(log, "corrupt-block")
    assert corrupt and all(e["actor"] == b.peer_id and e["event_code"] == 110113 for e in corrupt)
    assert [e["actor"] for e in codes(log, "peer-banned")] == [b.peer_id]
    entry = mesh.inbox_entry(c, second)
    assert entry is not None and entry["served_by"].get(b.peer_id, 0) == 0
    scrub = mesh.cli(c, "scrub")
    assert scrub["corrupt"] == []


def test_recall_stops_serving_and_collects_blocks(mesh: MeshDemo, tmp_path: Path) -> None:
    nodes = mesh.setup(ORGS[:2])
    a, b = nodes["a"], nodes["b"]
    study, files = mesh.generate_and_ingest(a, 10, rows=256, columns=256)
    manifest = mesh.share(a, study, ["RJ1"])
    mesh.wait_for(lambda: mesh.delivered(a, manifest, ["RJ1"]), 60, "the receipt")
    assert any(s["study_uid"] == study for s in mesh.cli(b, "studies"))
    mesh.ws.run("meshnode", "recall", manifest, "--reason", "wrong patient", "--home", str(a.home))
    mesh.wait_for(lambda: (mesh.inbox_entry(b, manifest) or {}).get("state") == "recalled", 60, "the recall at B")
    mesh.wait_for(lambda: not any(s["study_uid"] == study for s in mesh.cli(b, "studies")), 30,
                  "B to forget the study")
    store = b.home / "store" / "blocks"
    assert not [p for p in store.rglob("b*") if p.is_file()], "recalled blocks were not collected"
    log = mesh.audit(b)
    assert [e["detail"] for e in codes(log, "manifest-recalled")] == ["withdraw: wrong patient"]


def test_directory_down_known_peers_keep_exchanging(mesh: MeshDemo, tmp_path: Path) -> None:
    nodes = mesh.setup(ORGS[:2])
    a, b = nodes["a"], nodes["b"]
    study, files = mesh.generate_and_ingest(a, 8, rows=256, columns=256)
    first = mesh.share(a, study, ["RJ1"])
    mesh.wait_for(lambda: mesh.delivered(a, first, ["RJ1"]), 60, "the first receipt")
    assert mesh.identity.stop_directory() == 0
    study2, files2 = mesh.generate_and_ingest(a, 8, seed=2, rows=256, columns=256)
    second = mesh.share(a, study2, ["RJ1"])
    mesh.wait_for(lambda: mesh.delivered(a, second, ["RJ1"]), 60, "the receipt with the directory down")
    assert exported(mesh, "b", study2, tmp_path / "out") == sorted(f.read_bytes() for f in files2)


def test_a_hung_recipient_does_not_hold_up_the_others(mesh: MeshDemo, tmp_path: Path) -> None:
    nodes = mesh.setup(ORGS)
    a, b, c = nodes["a"], nodes["b"], nodes["c"]
    study, files = mesh.generate_and_ingest(a, 6, rows=128, columns=128)
    hung = mesh.procs["c"]
    os.kill(hung.pid, signal.SIGSTOP)  # RAJ's node accepts TCP connections but never answers
    try:
        manifest = mesh.share(a, study, ["RAJ", "RJ1"])
        mesh.wait_for(lambda: mesh.delivered(a, manifest, ["RJ1"]), 60, "RJ1's receipt while RAJ hangs")
        row = next(r for r in mesh.cli(a, "outbox") if r["manifest_id"] == manifest)
        # RAJ's first attempt is still waiting on the hung node: RJ1 did not queue behind it
        raj = row["recipients"]["RAJ"]
        assert raj["state"] == "attempting" and raj["attempts"] == 1 and raj["last_error"] == "", raj
    finally:
        os.kill(hung.pid, signal.SIGCONT)
    mesh.wait_for(lambda: mesh.delivered(a, manifest, ["RAJ", "RJ1"]), 90, "RAJ's receipt once it answers")
    assert exported(mesh, "c", study, tmp_path / "out") == sorted(f.read_bytes() for f in files)


def test_announcement_to_unreachable_org_retried_across_restart(mesh: MeshDemo, tmp_path: Path) -> None:
    nodes = mesh.setup(ORGS[:2])
    a, b = nodes["a"], nodes["b"]
    study, files = mesh.generate_and_ingest(a, 6, rows=128, columns=128)
    assert mesh.stop(b) == 0  # RJ1's only node is down
    manifest = mesh.share(a, study, ["RJ1"])

    def failed_attempts() -> int:
        row = next(r for r in mesh.cli(a, "outbox") if r["manifest_id"] == manifest)
        delivery = row["recipients"]["RJ1"]
        return int(delivery["attempts"]) if delivery["state"] == "pending" and delivery["last_error"] else 0

    mesh.wait_for(lambda: failed_attempts() >= 1, 60, "a failed announcement attempt")
    assert mesh.stop(a) == 0  # the sender restarts while the delivery is still pending
    mesh.start(a)
    mesh.start(b)
    mesh.wait_for(lambda: mesh.delivered(a, manifest, ["RJ1"]), 90, "delivery after both restarts")
    assert exported(mesh, "b", study, tmp_path / "out") == sorted(f.read_bytes() for f in files)
