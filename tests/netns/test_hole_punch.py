"""With hole punching allowed on both sides, a relayed connection between two NATed nodes becomes direct.

The NATs are those of the relay tests (shaping.nat_rules): MASQUERADE, no inbound port, FORWARD only for
tracked connections. TCP hole punching is possible through them, and test_nat_network.py proves it with a
plain simultaneous open before any node runs: Linux MASQUERADE keeps a connection's source port when it is
free, so the mapping depends only on the inside address and port (endpoint-independent, RFC 4787 4.1), and
a peer's SYN to that mapped address, arriving after the node's own SYN went out, is the reply direction of
a tracked connection and passes FORWARD as ESTABLISHED. The routers drop what they do not forward instead of
answering RST, so a SYN arriving a little early does not kill the other side's attempt.

DCUtR (py-libp2p's, driven by the node) does exactly that over the relayed connection: both sides learn each
other's observed (mapped) addresses and dial at the same time from their listening port (SO_REUSEPORT).
Shown here from the kernel's own state, not from the node's word: an established TCP connection between A and
B's router's public address, and the relay's interface carrying a small fraction of a study sent after the
upgrade, while the study still arrives byte-exact with its receipt.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshnode.dicom import synthetic
from simulations.emulation.reach import (
    ReachMesh,
    dropped_inbound,
    exported_bytes,
    ingest_and_share,
    link_bytes,
    tcp_peers,
)
from simulations.emulation.shaping import Rate

pytestmark = [pytest.mark.netns]

RATE = Rate(25e6, 25e6)
UPGRADE_TIMEOUT = 120.0
POLL = 0.5
RELAYED_SHARE_AT_MOST = 0.1  # of the study's bytes, after the upgrade (announcements, receipts, keep-alives)


@pytest.fixture
def punching(tmp_path: Path, netns_ok: None) -> Iterator[ReachMesh]:
    mesh = ReachMesh(tmp_path / "mesh", RATE, nat=True, hole_punching=True)
    try:
        mesh.build_network()
        mesh.start()
        yield mesh
    finally:
        mesh.close()


def test_a_relayed_connection_upgrades_to_direct_and_the_study_goes_direct(punching: ReachMesh,
                                                                           tmp_path: Path) -> None:
    cluster, relay, a, b = punching.nodes()
    b_public = punching.routers["ORGB"].public_ip
    assert b_public not in tcp_peers(a.placement)
    # a first study makes A connect to B, through the relay (the only address B publishes)
    first = synthetic.generate_ct_study(tmp_path / "first", slices=2, seed=171)
    ingest_and_share(cluster, a, b, first[0].parent)
    deadline = time.monotonic() + UPGRADE_TIMEOUT
    while b_public not in tcp_peers(a.placement):
        assert time.monotonic() < deadline, f"no direct connection A -> B within {UPGRADE_TIMEOUT:g} s"
        time.sleep(POLL)  # polling the kernel's connection table, bounded by the deadline
    # the second study goes over the direct connection: the relay carries a small fraction of it
    second = synthetic.generate_ct_study(tmp_path / "second", slices=12, seed=172)
    size = sum(f.stat().st_size for f in second)
    before = link_bytes(relay.placement)
    sent = ingest_and_share(cluster, a, b, second[0].parent)
    relayed = link_bytes(relay.placement) - before
    assert relayed <= RELAYED_SHARE_AT_MOST * size, (relayed, size)
    assert exported_bytes(cluster, b, sent.study, tmp_path / "export") == sorted(f.read_bytes() for f in second)
    assert b_public in tcp_peers(a.placement)


def test_behind_symmetric_nats_hole_punching_fails_and_the_relay_carries_on(tmp_path: Path, netns_ok: None) -> None:
    """Routers with a random public port per connection (shaping.nat_rules symmetric): the peer's predicted
    address maps to nothing, DCUtR cannot succeed, and studies still arrive, all through the relay."""
    mesh = ReachMesh(tmp_path / "mesh", RATE, nat=True, hole_punching=True, symmetric=True)
    try:
        mesh.build_network()
        mesh.start()
        cluster, relay, a, b = mesh.nodes()
        b_public = mesh.routers["ORGB"].public_ip
        first = synthetic.generate_ct_study(tmp_path / "first", slices=2, seed=173)
        ingest_and_share(cluster, a, b, first[0].parent)  # the relayed connection, and DCUtR's attempts on it
        # DCUtR does try: the routers drop the SYNs sent to the predicted (router, listen port) addresses
        deadline = time.monotonic() + UPGRADE_TIMEOUT
        while sum(dropped_inbound(r) for r in mesh.routers.values()) == 0:
            assert time.monotonic() < deadline, f"no hole-punch attempt within {UPGRADE_TIMEOUT:g} s"
            time.sleep(POLL)  # polling the routers' drop counters, bounded by the deadline
        second = synthetic.generate_ct_study(tmp_path / "second", slices=6, seed=174)
        size = sum(f.stat().st_size for f in second)
        before = link_bytes(relay.placement)
        sent = ingest_and_share(cluster, a, b, second[0].parent)
        assert link_bytes(relay.placement) - before >= 2 * size  # in to the relay and out again
        assert exported_bytes(cluster, b, sent.study, tmp_path / "export") == sorted(f.read_bytes() for f in second)
        assert b_public not in tcp_peers(a.placement)
    finally:
        mesh.close()
