"""The NAT the relay tests run behind, checked with plain TCP before any node runs on it.

Two organisations each behind a MASQUERADE router (simulations/emulation/shaping.py nat_rules), a public
namespace with the bridge. A node behind NAT reaches the public namespace; nobody reaches it, neither at its
private address nor at its router's public address (no inbound port is open); and yet a TCP simultaneous
open, what DCUtR does, passes both NATs, because their mapping is endpoint-independent and conntrack takes
the peer's SYN as the reply to the node's own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from simulations.emulation.reach import ReachMesh, can_connect, punch
from simulations.emulation.shaping import Placement, Rate

pytestmark = [pytest.mark.netns]

RATE = Rate(50e6, 50e6)
PUNCH_PORT = 7412


@pytest.fixture
def mesh(netns_ok: None, tmp_path: Path) -> Iterator[ReachMesh]:
    mesh = ReachMesh(tmp_path, RATE)
    try:
        mesh.build_network()
        yield mesh
    finally:
        mesh.close()


def test_a_node_behind_nat_reaches_the_public_side_and_nobody_reaches_it(mesh: ReachMesh) -> None:
    _, relay, a, b = mesh.nodes()
    ra, rb = mesh.routers["ORGA"], mesh.routers["ORGB"]
    assert can_connect(a.placement, relay.placement, relay.placement.host) == "connected"
    assert can_connect(b.placement, relay.placement, relay.placement.host) == "connected"
    for src, dst, host in ((a.placement, b.placement, b.placement.host),  # B's private address: no route
                           (a.placement, b.placement, rb.public_ip),  # B's router: nothing open
                           (b.placement, a.placement, ra.public_ip),
                           (relay.placement, a.placement, ra.public_ip),  # not even from the public side
                           (relay.placement, a.placement, a.placement.host)):
        answer = can_connect(src, dst, host)
        assert answer.startswith("failed"), (host, answer)
    public = Placement(["ip", "netns", "exec", mesh.shaper.core], "10.77.0.1")
    assert can_connect(public, a.placement, ra.public_ip).startswith("failed")


def test_a_tcp_simultaneous_open_passes_both_nats(mesh: ReachMesh) -> None:
    """Hole punching is possible here: each side binds one port and dials the other's router at it."""
    _, _, a, b = mesh.nodes()
    answers = punch(a.placement, b.placement, mesh.routers["ORGA"].public_ip, mesh.routers["ORGB"].public_ip,
                    PUNCH_PORT)
    assert answers == ["connected", "connected"], answers


def test_a_symmetric_nat_defeats_the_simultaneous_open(netns_ok: None, tmp_path: Path) -> None:
    """The control for the test above: with a random public port per connection (MASQUERADE --random-fully,
    endpoint-dependent mapping) the same simultaneous open fails, so the check can tell the two apart."""
    mesh = ReachMesh(tmp_path, RATE, symmetric=True)
    try:
        mesh.build_network()
        _, relay, a, b = mesh.nodes()
        assert can_connect(a.placement, relay.placement, relay.placement.host) == "connected"
        answers = punch(a.placement, b.placement, mesh.routers["ORGA"].public_ip, mesh.routers["ORGB"].public_ip,
                        PUNCH_PORT, seconds=5.0)
        assert all(x.startswith("failed") for x in answers), answers
    finally:
        mesh.close()
