"""protocol.fetch_order: where each recipient starts fetching (the node and the simulator use it)."""

from __future__ import annotations

from protocol.fetch_order import fetch_order, rotated, start_offset
from protocol.manifest import Manifest
from tests.protocol.factories import make_instance, make_manifest


def _study(instances: int, recipients: tuple[str, ...]) -> tuple[Manifest, list[object]]:
    manifest = make_manifest(instances=tuple(make_instance(i, blocks=2) for i in range(1, instances + 1)),
                             recipients=recipients)
    return manifest, list(manifest.block_order())


def test_recipients_start_evenly_spaced_whatever_their_peer_ids() -> None:
    for recipients in (("RAJ", "RJ1"), ("RAJ", "RJ1", "RXH")):
        manifest, order = _study(61, recipients)  # 2 first-instance blocks + 120 others
        starts = []
        for n, org in enumerate(sorted(recipients)):
            wanted = fetch_order(manifest, org, f"12D3KooWpeer{n}")
            assert sorted(wanted, key=str) == sorted(order, key=str)  # every block, each once
            assert wanted[:2] == list(manifest.instances[0].blocks)  # the first instance first
            starts.append(order.index(wanted[2]) - 2)
        share = 120 // len(recipients)
        for k, start in enumerate(starts):  # each within the first half of its own share
            assert k * share <= start < k * share + share // 2 + 1, (recipients, starts)


def test_nodes_of_one_org_start_at_different_points_within_its_share() -> None:
    manifest, order = _study(201, ("RAJ", "RJ1"))  # 2 first-instance blocks + 400 others: 200 per org
    starts = {order.index(fetch_order(manifest, "RJ1", f"12D3KooWnode{i}")[2]) - 2 for i in range(6)}
    assert len(starts) > 1
    assert all(200 <= s < 300 for s in starts), starts  # RJ1, the second org: the first half of its share


def test_offsets_and_rotation_on_plain_indices() -> None:
    assert start_offset(("RAJ", "RJ1"), "RAJ", "n", 0) == 0
    assert start_offset(("RAJ",), "RAJ", "n", 10) == 0 or start_offset(("RAJ",), "RAJ", "n", 10) < 5
    assert 50 <= start_offset(("RAJ", "RJ1"), "RJ1", "n", 100) < 75
    assert rotated([0, 1], [2, 3, 4, 5], 2) == [0, 1, 4, 5, 2, 3]
    assert rotated([0], [], 3) == [0]
    assert rotated([0, 1], [1, 2], 0) == [0, 1, 2]  # each item once
