"""The "served" figures add up (issue 11, finding 12): a recipient killed mid-transfer and restarted
still counts every block once for the peer that served it, and the sender counts every block it sent."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from meshnode.demo.mesh import MeshDemo
from meshnode.demo.workspace import Workspace

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshDemo]:
    demo = MeshDemo(Workspace(tmp_path_factory.mktemp("served")))
    try:
        demo.setup([("a", "RGT", "Cambridge University Hospitals NHS FT")], start=False)
        a = demo.node("a")
        demo.configure(a, {"limits.upload_mb_per_s": 3})  # slow enough to stop the recipient halfway
        demo.start(a)
        demo.identity.add_node("b", "RJ1", "Guy's and St Thomas' NHS FT", listen="/ip4/127.0.0.1/tcp/0")
        demo.start(demo.node("b"))
        yield demo
    finally:
        demo.close()


def test_served_by_adds_up_across_a_kill_and_restart(mesh: MeshDemo) -> None:
    a, b = mesh.node("a"), mesh.node("b")
    uid, _ = mesh.generate_and_ingest(a, 24, 31, 512, 512)  # about 12.6 MB: four seconds at 3 MB/s
    manifest = mesh.share(a, uid, ["RJ1"], "routine")

    def halfway() -> bool:
        entry = mesh.inbox_entry(b, manifest)
        return entry is not None and entry["blocks_done"] >= entry["blocks_total"] // 4

    mesh.wait_for(halfway, 60, "B to hold a quarter of the study")
    proc = mesh.procs.pop("b")
    proc.send_signal(signal.SIGKILL)  # no chance to save anything on the way out
    proc.wait(10)
    mesh.start(b)
    mesh.wait_for(lambda: mesh.delivered(a, manifest, ["RJ1"]), 120, "the study to reach B after the restart")

    entry = mesh.inbox_entry(b, manifest)
    assert entry is not None and entry["state"] == "receipted"
    # every block once, for the one peer that served it, whatever happened in between
    assert list(entry["served_by"].values()) == [entry["blocks_total"]]
    # the sender counts every block it sent, including any the recipient lost in the kill
    outbox = next(r for r in mesh.cli(a, "outbox") if r["manifest_id"] == manifest)
    assert outbox["recipients"]["RJ1"]["served"]["blocks"] >= entry["blocks_total"]
    assert mesh.cli(a, "status")["served"]["RJ1"]["blocks"] >= entry["blocks_total"]
