"""The sibling path (several nodes per organisation, protocol.replication) attacked: it opens nothing to
anyone but a node of the org that signed the manifest, asking a node of that same org.

In one process over the in-memory link (tests/meshnode/node/harness.py: the real Receiver, Wire handlers and
access policy): RGT runs two nodes, s1 (which ingested and shares the study) and s2; RJ1 (r) is the
recipient; RXH (x) is certified and never a recipient. Written before the sibling path existed: the
positive case failed (s2 was refused as the manifest's sender org) and the hostile ones held.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import trio
from trio.testing import MockClock

from meshnode.dicom import synthetic
from meshnode.node.replication import Replication
from protocol.cid import CID
from protocol.document import Signed
from protocol.errors import WrongOrganisationError
from protocol.exchange_messages import (
    UNAUTHORISED,
    BlockData,
    BlockFrame,
    BlockRequest,
    encode_request,
)
from protocol.manifest import Manifest, Priority, Purpose
from tests.meshnode.node.harness import (
    HarnessNode,
    MemoryLink,
    MemoryMesh,
    alerts,
    ingest_study,
)
from tests.protocol.factories import NOW, sign_roster

CHUNK = 1024


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("study")
    synthetic.generate_ct_study(out, slices=3, rows=64, columns=64, seed=7)
    return out


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[MemoryMesh]:
    m = MemoryMesh(tmp_path)
    yield m
    m.close()


@pytest.fixture
def study(tmp_path: Path, source: Path) -> str:
    return ingest_study(tmp_path / "s1", source, chunk_size=CHUNK)


async def ask_blocks(holder: HarnessNode, asker: HarnessNode, manifest_id: CID, cids: list[CID]) -> list[object]:
    frames: list[BlockFrame] = []

    async def write(frame: BlockFrame) -> None:
        frames.append(frame)

    await holder.wire.answer_blocks(asker.peer_id, encode_request(BlockRequest(manifest_id, tuple(cids[:8]))), write)
    return list(frames)


def nodes(mesh: MemoryMesh) -> tuple[HarnessNode, HarnessNode, HarnessNode, HarnessNode]:
    s1, s2 = mesh.add("s1", "RGT", 60), mesh.add("s2", "RGT", 61)
    return s1, s2, mesh.add("r", "RJ1", 62), mesh.add("x", "RXH", 63)


async def shared(mesh: MemoryMesh, s1: HarnessNode, study: str, *others: HarnessNode) -> Signed[Manifest]:
    signed = await s1.sender.share(study, ["RJ1"], Priority.URGENT, Purpose.CARE)
    for node in others:
        await mesh.hello(node, s1)
    return signed


async def test_a_sibling_may_copy_its_orgs_manifest(autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    s1, s2, _, _ = nodes(mesh)
    signed = await shared(mesh, s1, study, s2)
    frames = await ask_blocks(s1, s2, signed.cid, list(signed.document.block_order()))
    assert frames and all(isinstance(f, BlockData) for f in frames)
    assert alerts(s1, "unauthorised-request") == []


async def test_a_node_of_another_org_gets_nothing(autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    s1, _, _, x = nodes(mesh)
    signed = await shared(mesh, s1, study, x)
    assert await ask_blocks(s1, x, signed.cid, list(signed.document.block_order())) == [UNAUTHORISED]
    assert alerts(s1, "unauthorised-request") == [x.peer_id]


async def test_a_revoked_sibling_gets_nothing(autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    s1, s2, _, _ = nodes(mesh)
    signed = await shared(mesh, s1, study, s2)
    serial = s2.ctx.certificate.document.serial
    s1.ctx.peers.guard.accept(sign_roster(2, revoked=[serial]).encode(), NOW)
    assert await ask_blocks(s1, s2, signed.cid, list(signed.document.block_order())) == [UNAUTHORISED]
    assert alerts(s1, "unauthorised-request") == [s2.peer_id]


async def test_the_recipient_cannot_offer_the_senders_manifest_as_a_sibling_copy(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    """r holds RGT's manifest legitimately; offered to s2 (RGT), it is neither a sibling copy nor a share."""
    s1, s2, r, _ = nodes(mesh)
    s2.receiver.sibling = Replication(s2.ctx, MemoryLink(mesh, s2.peer_id), "all").accept
    signed = await shared(mesh, s1, study)
    with pytest.raises(WrongOrganisationError):
        await MemoryLink(mesh, r.peer_id).announce(s2.peer_id, signed.encode(), s1.ctx.certificate.encode())
    assert s2.store.manifest(signed.cid) is None


async def test_a_sibling_cannot_read_blocks_under_another_orgs_manifest_that_lists_them(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    """x signs a manifest to RGT listing s1's blocks (a confused deputy): s1 accepts it as a received
    manifest, but neither x (its signer) nor s2 (a node of its recipient org, not of its signer's) reads a
    block s1 never fetched under it."""
    s1, s2, _, x = nodes(mesh)
    own = await shared(mesh, s1, study, s2, x)
    forged = replace(own.document, sender_org="RXH", sender_peer=x.peer_id, recipients=("RGT",)).sign(x.key)
    await MemoryLink(mesh, x.peer_id).announce(s1.peer_id, forged.encode())
    row = s1.store.manifest(forged.cid)
    assert row is not None and row.direction == "received"  # an ordinary received manifest, not a copy
    cids = list(forged.document.block_order())
    assert await ask_blocks(s1, x, forged.cid, cids) == [UNAUTHORISED]
    frames = await ask_blocks(s1, s2, forged.cid, cids)
    assert not any(isinstance(f, BlockData) for f in frames)


async def test_a_node_of_another_org_cannot_copy_from_a_sibling_copy(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    """s2's copy serves the recipient (as s1 would) and nobody else: not x, not a manifest's sender org
    outside it."""
    s1, s2, r, x = nodes(mesh)
    rep = Replication(s2.ctx, MemoryLink(mesh, s2.peer_id), "all")
    s2.receiver.sibling = rep.accept
    signed = await shared(mesh, s1, study, s2)
    async with trio.open_nursery() as nursery:
        await mesh.run(nursery)
        nursery.start_soon(rep.run)
        await MemoryLink(mesh, s1.peer_id).announce(s2.peer_id, signed.encode())
        with trio.fail_after(600):
            assert await rep.wait_copied(signed.cid) == len(signed.document.block_order())
        nursery.cancel_scope.cancel()
    await mesh.hello(r, s2)
    await mesh.hello(x, s2)
    cids = list(signed.document.block_order())
    assert all(isinstance(f, BlockData) for f in await ask_blocks(s2, r, signed.cid, cids))
    assert await ask_blocks(s2, x, signed.cid, cids) == [UNAUTHORISED]
    assert alerts(s2, "unauthorised-request") == [x.peer_id]


async def test_a_copy_offered_with_mode_nothing_is_recorded_not_copied(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    s1, s2, _, _ = nodes(mesh)
    rep = Replication(s2.ctx, MemoryLink(mesh, s2.peer_id), "nothing")
    s2.receiver.sibling = rep.accept
    signed = await shared(mesh, s1, study, s2)
    await MemoryLink(mesh, s1.peer_id).announce(s2.peer_id, signed.encode())
    row = s2.store.manifest(signed.cid)
    assert row is not None and row.direction == "sent" and row.sender_org == "RGT"
    assert s2.store.present_blocks(signed.document.block_order()) == set()




async def test_a_sibling_cannot_make_another_serve_blocks_it_holds_under_other_manifests(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    """s1 holds a study only as a recipient of r's research share (and from its own ingest). s2, a node of
    s1's own org, signs a manifest listing those blocks for RXH (a colluding org) and offers it to s1 as a
    sibling copy: s1 stores it, but serves none of those blocks under it, neither to s2 (its signer, on
    the sibling path) nor to x (RXH, a recipient of it). Before the fix (rule 4: 'this node's org signed
    M') both read every block."""
    s1, s2, r, x = nodes(mesh)
    s1.receiver.sibling = Replication(s1.ctx, MemoryLink(mesh, s1.peer_id), "all").accept
    own = await shared(mesh, s1, study, s2, x, r)
    cids = list(own.document.block_order())
    # s1 holds these blocks as fetched under r's research share (provenance recorded)
    research = replace(own.document, sender_org="RJ1", sender_peer=r.peer_id, recipients=("RGT",),
                       purpose=Purpose.RESEARCH).sign(r.key)
    await MemoryLink(mesh, r.peer_id).announce(s1.peer_id, research.encode())
    s1.store.record_blocks([], 0, [(research.cid, c, r.peer_id) for c in set(cids)])
    forged = replace(own.document, sender_peer=s2.peer_id, recipients=("RXH",), revision=7).sign(s2.key)
    await MemoryLink(mesh, s2.peer_id).announce(s1.peer_id, forged.encode())
    row = s1.store.manifest(forged.cid)
    assert row is not None and row.direction == "sent"  # accepted as a sibling's manifest
    assert not any(isinstance(f, BlockData) for f in await ask_blocks(s1, s2, forged.cid, cids))
    assert not any(isinstance(f, BlockData) for f in await ask_blocks(s1, x, forged.cid, cids))
