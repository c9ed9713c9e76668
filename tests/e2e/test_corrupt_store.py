"""A block that rots on a running node's disk, found while the node serves it (issue 11, finding 10).

Real node processes; the test process plays org RXH (certified, never started) as a recipient asking for
blocks. A byte of a stored block file is flipped under the running node. The node must answer BlockAbsent
for that block and serve the rest of the request (no traceback in its log), quarantine the file, stop
advertising the block in `have`, audit one 110113 alert, and where it received the study under a
manifest still live, fetch the block again from another holder and verify it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from meshnode.storage.blockstore import BlockStore
from protocol.cid import CID
from protocol.exchange_messages import BlockAbsent, BlockData, BlockRequest, HaveReply, Hello, decode_block_frame
from tests.e2e.test_exchange_refusals import client_for, in_thread, wait_for
from meshnode.demo.identity import Node
from meshnode.demo.mesh import MeshDemo
from meshnode.demo.workspace import Workspace

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SECURITY_ALERT = 110113


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshDemo]:
    demo = MeshDemo(Workspace(tmp_path_factory.mktemp("corrupt")))
    try:
        demo.setup([("a", "RGT", "Cambridge University Hospitals NHS FT"), ("b", "RJ1", "Guy's and St Thomas' NHS FT")])
        demo.identity.add_node("x", "RXH", "Royal Example Hospital")  # certified, never started: a recipient
        yield demo
    finally:
        demo.close()


def block_order(shown: dict[str, Any]) -> list[CID]:
    """Distinct blocks in manifest order (the order of a `have` bitmap)."""
    return list(dict.fromkeys(CID.parse(c) for i in shown["instances_detail"] for c in i["blocks"]))


def rot(node: Node, cid: CID) -> bytes:
    """Flip a byte of the block's file under the running node; returns the good bytes."""
    path = BlockStore(node.home / "store").path_of(cid)
    good = path.read_bytes()
    data = bytearray(good)
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    return good


def alerts(mesh: MeshDemo, node: Node, cid: CID) -> list[dict[str, Any]]:
    return [e for e in mesh.audit(node) if e["event_code"] == SECURITY_ALERT and str(cid) in e["detail"]]


def log_of(mesh: MeshDemo, node: Node) -> str:
    return (mesh.ws.root / f"{node.name}.log").read_text(errors="replace")


async def ask(mesh: MeshDemo, node: Node, manifest: str, cids: list[CID]) -> tuple[list[Any], bytes]:
    """As RXH: the frames answering a block request, and the node's `have` bitmap."""
    async with client_for(mesh.node("x")) as cx:
        peer = await cx.connect(node)
        assert isinstance(await cx.hello(peer), Hello)
        frames = [decode_block_frame(f) for f in await cx.blocks(peer, BlockRequest(CID.parse(manifest), tuple(cids)))]
        have = await cx.have(peer, CID.parse(manifest))
        assert isinstance(have, HaveReply)
        return frames, have.bitmap


def held(order: list[CID], bitmap: bytes) -> set[CID]:
    return {cid for i, cid in enumerate(order) if bitmap[i >> 3] & (0x80 >> (i & 7))}


async def test_a_rotten_block_of_the_nodes_own_study_is_absent_quarantined_and_no_longer_advertised(
        mesh: MeshDemo) -> None:
    b = mesh.node("b")
    uid, _ = await in_thread(mesh.generate_and_ingest, b, 4, 41, 64, 64)
    manifest = await in_thread(mesh.share, b, uid, ["RXH"], "routine")
    shown = await in_thread(mesh.cli, b, "show", uid)
    order = block_order(shown)
    bad = CID.parse(shown["instances_detail"][0]["blocks"][-1])
    others = [c for c in order if c != bad][:3]
    _, bitmap = await ask(mesh, b, manifest, others)
    assert held(order, bitmap) == set(order)
    rot(b, bad)

    frames, _ = await ask(mesh, b, manifest, [others[0], bad, *others[1:]])
    assert [type(f) for f in frames] == [BlockData, BlockAbsent, BlockData, BlockData]
    assert all(isinstance(f, BlockData) and f.cid == c and c.matches(f.data)
               for f, c in zip([frames[0], *frames[2:]], others))

    async def not_advertised() -> bool:
        return held(order, (await ask(mesh, b, manifest, others[:1]))[1]) == set(order) - {bad}

    with trio.fail_after(20):
        while not await not_advertised():
            await trio.sleep(0.3)  # polling a real process's visible state
    found = await wait_for(lambda: alerts(mesh, b, bad), 20, "B's alert")
    assert len(found) == 1 and "quarantined" in found[0]["detail"] and "not fetched again" in found[0]["detail"]
    assert len(list((b.home / "store" / "quarantine").iterdir())) == 1
    assert "Traceback" not in await in_thread(log_of, mesh, b)


async def test_a_rotten_block_of_a_received_study_comes_back_verified_from_another_holder(mesh: MeshDemo) -> None:
    a, b = mesh.node("a"), mesh.node("b")
    uid, _ = await in_thread(mesh.generate_and_ingest, a, 4, 42, 64, 64)
    manifest = await in_thread(mesh.share, a, uid, ["RJ1", "RXH"], "routine")
    await wait_for(lambda: mesh.delivered(a, manifest, ["RJ1"]), 60, "B to receive the study")
    shown = await in_thread(mesh.cli, b, "show", uid)
    bad = CID.parse(shown["instances_detail"][1]["blocks"][-1])
    good = rot(b, bad)
    assert hashlib.sha256(good).digest() == bad.digest

    frames, _ = await ask(mesh, b, manifest, [bad])
    assert frames == [BlockAbsent(bad)]
    found = await wait_for(lambda: alerts(mesh, b, bad), 20, "B's alert")
    assert len(found) == 1 and f"fetching it again under manifest {manifest}" in found[0]["detail"]
    repaired = await wait_for(lambda: [e for e in mesh.audit(b) if e["action"] == "block-repaired"
                                       and e["manifest_id"] == manifest], 60, "B to fetch the block again")
    assert len(repaired) == 1
    assert BlockStore(b.home / "store").path_of(bad).read_bytes() == good  # verified: the bytes its CID names
    assert (await in_thread(mesh.inbox_entry, b, manifest) or {}).get("state") == "receipted"
    frames, _ = await ask(mesh, b, manifest, [bad])
    assert frames == [BlockData(bad, good)]  # served again
    assert len(alerts(mesh, b, bad)) == 1
    assert "Traceback" not in await in_thread(log_of, mesh, b)
