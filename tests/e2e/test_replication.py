"""Several nodes per sender organisation, with real processes (issue 16): RGT runs s1 and s2, each with its
own key and certificate under org code RGT ([replication] mode all, the default); RJ1 runs r. s1 shares a
study; s2 copies it from s1; s1 is killed (SIGKILL); r completes from s2 byte-exact; r's receipt, which s1
cannot take, reaches s2, and s1 shows it once it is back (s2 passes it on)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshnode.control.client import ControlClient
from meshnode.demo.mesh import MeshDemo

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def actions(mesh: MeshDemo, node_name: str, action: str) -> list[dict[str, object]]:
    return [e for e in mesh.audit(mesh.node(node_name)) if e["action"] == action]


def test_a_study_is_served_and_receipted_by_the_other_sender_node(mesh: MeshDemo, tmp_path: Path) -> None:
    nodes = mesh.setup([("s1", "RGT", "Cambridge University Hospitals NHS FT"),
                        ("r", "RJ1", "Guy's and St Thomas' NHS FT")], start=False)
    s1, r = nodes["s1"], nodes["r"]
    s2 = mesh.identity.add_node("s2", "RGT", "Cambridge University Hospitals NHS FT", listen="/ip4/127.0.0.1/tcp/0")
    mesh.configure(r, {"node.auto_fetch": False})  # r fetches once s1 is gone: from s2 only
    for node in (s1, s2, r):
        mesh.start(node)
    study, files = mesh.generate_and_ingest(s1, 6, rows=256, columns=256)
    manifest = mesh.share(s1, study, ["RJ1"], priority="routine")
    mesh.wait_for(lambda: mesh.inbox_entry(r, manifest), 60, "the announcement at r")
    copies = mesh.wait_for(lambda: actions(mesh, "s2", "sibling-copy"), 90, "s2's copy of s1's study")
    assert copies[0]["manifest_id"] == manifest
    assert "0 not served" in str(copies[0]["detail"])

    mesh.procs.pop("s1").kill()  # s1 is gone without a word
    mesh.ws.run("meshnode", "fetch", manifest, "--home", str(r.home))
    mesh.wait_for(lambda: mesh.delivered(s2, manifest, ["RJ1"]), 180, "r's receipt at s2")
    out = tmp_path / "out-r"
    mesh.cli(r, "export", study, str(out))
    assert sorted(p.read_bytes() for p in out.rglob("*.dcm")) == sorted(f.read_bytes() for f in files)
    served = [e for e in actions(mesh, "s2", "blocks-served") if e["manifest_id"] == manifest]
    assert served and all(e["actor_org"] == "RJ1" for e in served)

    mesh.start(s1)  # back: s2's delivery passes r's receipt on
    mesh.wait_for(lambda: mesh.delivered(s1, manifest, ["RJ1"]), 180, "r's receipt at s1 after its restart")
    # the offer to s2 is shown apart from the recipients, at either node
    for node in (s1, s2):
        row = next(r for r in ControlClient(node.home).call("GET", "/outbox") if r["manifest_id"] == manifest)
        assert set(row["recipients"]) == {"RJ1"}
    row = next(r for r in ControlClient(s1.home).call("GET", "/outbox") if r["manifest_id"] == manifest)
    assert row["siblings"]["state"] == "delivered"
