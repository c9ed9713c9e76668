"""A node behind a relay, with real processes on 127.0.0.1: authority, directory, a relay node (role relay,
relay_service), a node with reachability private (only its relayed address is published) and a public node.
A study goes each way, byte-exact, with receipts, and the relay's metrics show the traffic went through it.
(Namespaced NAT with real MASQUERADE is tests/netns, another harness.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from meshnode.demo.mesh import MeshDemo
from tests.e2e.web import enable_http, http_url

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def exported(demo: MeshDemo, node_name: str, study: str, out: Path) -> list[bytes]:
    demo.cli(demo.node(node_name), "export", study, str(out))
    return sorted(p.read_bytes() for p in out.rglob("*.dcm"))


def relay_metrics(url: str, prefix: str = "meshnode_relay") -> dict[str, float]:
    text = requests.get(url + "/metrics", timeout=30).text
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name.startswith(prefix)}


def test_study_both_ways_through_a_relay(mesh: MeshDemo, tmp_path: Path) -> None:
    d = mesh.identity
    d.create_authority()
    d.start_directory()
    d.publish_roster()
    relay = d.add_node("relay", "RLY", "Relay", listen="/ip4/127.0.0.1/tcp/0", role="relay")
    mesh.configure(relay, {"reach.relay_service": True})
    enable_http(relay)
    relay_addr = mesh.start(relay)[0]
    assert "/p2p/" in relay_addr
    a = d.add_node("a", "RGT", "Org A", listen="/ip4/127.0.0.1/tcp/0")
    b = d.add_node("b", "RJ1", "Org B (behind NAT)", listen="/ip4/127.0.0.1/tcp/0")
    mesh.configure(b, {"reach.reachability": "private", "reach.relays": [relay_addr], "reach.hole_punching": False})
    mesh.configure(a, {"reach.hole_punching": False})  # the traffic stays on the relay (upgraded: the next test)
    mesh.start(a)
    mesh.start(b)
    url = http_url(relay)
    mesh.wait_for(lambda: relay_metrics(url).get("meshnode_relay_reservations_active") == 1, 60,
                  "B's reservation on the relay")
    resolved = d.resolve(a, "RJ1")
    assert resolved.code == 0, resolved
    assert "/p2p-circuit/p2p/" + b.peer_id in resolved.stdout
    assert b.addr.split("/p2p/")[0] + "\"" not in resolved.stdout  # B's direct address is not published

    study, files = mesh.generate_and_ingest(a, 12, rows=256, columns=256)
    manifest = mesh.share(a, study, ["RJ1"])
    mesh.wait_for(lambda: mesh.delivered(a, manifest, ["RJ1"]), 120, "B's receipt through the relay")
    assert exported(mesh, "b", study, tmp_path / "out-b") == sorted(f.read_bytes() for f in files)

    back, back_files = mesh.generate_and_ingest(b, 8, seed=2, rows=256, columns=256)
    back_manifest = mesh.share(b, back, ["RGT"])
    mesh.wait_for(lambda: mesh.delivered(b, back_manifest, ["RGT"]), 120, "A's receipt through the relay")
    assert exported(mesh, "a", back, tmp_path / "out-a") == sorted(f.read_bytes() for f in back_files)

    m = relay_metrics(url)
    size = sum(len(x) for x in (*(f.read_bytes() for f in files), *(f.read_bytes() for f in back_files)))
    assert m["meshnode_relay_circuits_total"] >= 1
    assert m["meshnode_relay_bytes_total"] > size  # every study byte crossed the relay (as ciphertext)
    assert m["meshnode_relay_refused_uncertified_total"] == 0

    # B's certificate revoked: the relay drops its reservation at the new roster and refuses it again
    d.revoke(b)
    d.publish_roster()
    mesh.wait_for(lambda: relay_metrics(url).get("meshnode_relay_reservations_active") == 0, 60,
                  "the revoked node's reservation dropped")


def test_relayed_address_through_a_node_without_role_relay_is_not_dialled(mesh: MeshDemo) -> None:
    """B's signed record names C, an ordinary node, as its relay: A refuses to dial C for it (the directory
    says C's certificate has no role relay), so C never hears of A, and A's delivery says why."""
    nodes = mesh.setup([("a", "RGT", "Org A"), ("c", "RAJ", "Org C")])
    a, c = nodes["a"], nodes["c"]
    b = mesh.identity.add_node("b", "RJ1", "Org B", listen="/ip4/127.0.0.1/tcp/0")
    forged = f"{c.addr}/p2p-circuit/p2p/{b.peer_id}"
    mesh.ws.run("meshnode", "directory", "register", "--home", str(b.home), "--addr", forged, "--json")
    study, _files = mesh.generate_and_ingest(a, 2, rows=64, columns=64)
    manifest = mesh.share(a, study, ["RJ1"])

    def refused() -> bool:
        row = next(r for r in mesh.cli(a, "outbox") if r["manifest_id"] == manifest)
        return "role relay" in json.dumps(row)

    mesh.wait_for(refused, 60, "A's delivery to refuse the forged relay")
    assert a.peer_id not in json.dumps(mesh.cli(c, "peers"))


def test_hole_punching_upgrades_the_relayed_connection(mesh: MeshDemo, tmp_path: Path) -> None:
    """Both sides with hole_punching on (the default): the relayed connection A opened to the private B is
    replaced by a direct one (on loopback B's listen port is reachable, as it is behind a NAT that DCUtR
    punched through: tests/netns has the real NAT), and the study still arrives byte-exact."""
    d = mesh.identity
    d.create_authority()
    d.start_directory()
    d.publish_roster()
    relay = d.add_node("relay", "RLY", "Relay", listen="/ip4/127.0.0.1/tcp/0", role="relay")
    mesh.configure(relay, {"reach.relay_service": True})
    enable_http(relay)
    relay_addr = mesh.start(relay)[0]
    a = d.add_node("a", "RGT", "Org A", listen="/ip4/127.0.0.1/tcp/0")
    b = d.add_node("b", "RJ1", "Org B (behind NAT)", listen="/ip4/127.0.0.1/tcp/0")
    mesh.configure(b, {"reach.reachability": "private", "reach.relays": [relay_addr],
                       "reach.hole_punch_loopback": True})  # all on 127.0.0.1: refused otherwise
    mesh.configure(a, {"reach.hole_punch_loopback": True})
    enable_http(a)
    enable_http(b)
    mesh.start(a)
    mesh.start(b)
    url = http_url(relay)
    mesh.wait_for(lambda: relay_metrics(url).get("meshnode_relay_reservations_active") == 1, 60, "B's reservation")
    study, files = mesh.generate_and_ingest(a, 4, rows=128, columns=128)
    manifest = mesh.share(a, study, ["RJ1"])
    mesh.wait_for(lambda: mesh.delivered(a, manifest, ["RJ1"]), 120, "B's receipt")
    assert exported(mesh, "b", study, tmp_path / "out-b") == sorted(f.read_bytes() for f in files)

    def upgraded() -> bool:
        return sum(relay_metrics(http_url(n), "meshnode_reach_hole_punch_upgrades").get(
            "meshnode_reach_hole_punch_upgrades_total", 0) for n in (a, b)) >= 1

    mesh.wait_for(upgraded, 60, "the relayed connection replaced by a direct one")
    assert relay_metrics(url)["meshnode_relay_circuits_total"] >= 1
    mesh.wait_for(lambda: relay_metrics(url)["meshnode_relay_circuits_active"] == 0, 60, "the circuit closed")
