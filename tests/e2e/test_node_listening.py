"""`meshnode status` shows where the node listens: its libp2p multiaddrs, the control API (at the configured
[control] port), the HTTP listener and the DIMSE gateway (issue 15, part 5). A real node process."""

from __future__ import annotations

import json

import pytest

from meshnode.demo.mesh import MeshDemo
from meshnode.demo.workspace import free_tcp_port


@pytest.mark.slow
def test_status_shows_every_listen_address(mesh: MeshDemo) -> None:
    node = mesh.setup([("a", "RGT", "Org A")], start=False)["a"]
    control, http = free_tcp_port(), free_tcp_port()
    mesh.configure(node, {"control.port": control, "http.listen": f"127.0.0.1:{http}", "dimse.enabled": True,
                          "dimse.port": 0, "dimse.ae_title": "RGT_MESH"})
    mesh.start(node)
    status = mesh.cli(node, "status")
    listening = status["listening"]
    assert listening["control"] == f"http://127.0.0.1:{control}"
    assert json.loads((node.home / "control.json").read_text())["url"] == listening["control"]
    assert listening["http"] == f"http://127.0.0.1:{http}"
    dimse = json.loads((node.home / "dimse.json").read_text())
    assert listening["dimse"] == {"ae_title": "RGT_MESH", "host": dimse["host"], "port": dimse["port"]}
    assert listening["libp2p"] and all(a.startswith("/ip4/127.0.0.1/tcp/") for a in listening["libp2p"])
    assert all(int(a.split("/tcp/")[1].split("/")[0]) > 0 for a in listening["libp2p"])
