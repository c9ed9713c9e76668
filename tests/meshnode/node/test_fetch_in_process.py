"""The fetcher driven in one process on trio's MockClock (tests/meshnode/node/harness.py): real node contexts
and drivers, an in-memory link instead of libp2p. Fetch from one holder and from two; a holder that serves
corrupt blocks; a holder that stops answering; a restart that finds blocks durable but not recorded."""

from __future__ import annotations

import trio
from trio.testing import MockClock

from meshnode.node.block_sink import encode_note
from protocol.fetch_settings import FetchSettings
from meshnode.storage.blockstore import COMMIT_NOTE
from protocol.cid import CID
from protocol.document import Signed
from protocol.fetch_order import fetch_order
from protocol.manifest import Manifest
from tests.meshnode.node.harness import HarnessNode, MemoryMesh, SeenRequest, alerts, wait_done


def asked(requests: list[SeenRequest], holder: HarnessNode | None = None) -> list[CID]:
    return [c for r in requests if holder is None or r.holder == holder.peer_id for c in r.cids]


async def fetched_by(mesh: MemoryMesh, node: HarnessNode, signed: Signed[Manifest]) -> None:
    await wait_done(node, signed.cid, 600)
    assert node.failed == {}
    assert len(node.completed[signed.cid]) == len(signed.document.instances)


async def test_one_holder_every_block_once_in_the_nodes_order(autojump_clock: MockClock,
                                                              mesh: MemoryMesh, study: str) -> None:
    a, b = mesh.add("a", "RGT", 50), mesh.add("b", "RJ1", 51)
    async with trio.open_nursery() as nursery:
        await mesh.run(nursery)
        signed = await mesh.share(a, study, ["RJ1"])
        await mesh.announce(a, b, signed)
        await fetched_by(mesh, b, signed)
        nursery.cancel_scope.cancel()
    manifest = signed.document
    assert len(manifest.block_order()) > 64  # several requests, more than one window
    requests = mesh.requests_by(b)
    assert {r.holder for r in requests} == {a.peer_id}
    # each block once, in the node's order (protocol.fetch_order), in runs of consecutive blocks (requests
    # issued together leave in whichever order trio runs their tasks: sorted here)
    want = fetch_order(manifest, "RJ1", b.peer_id)
    positions = sorted([want.index(c) for c in r.cids] for r in requests)
    assert [i for run in positions for i in run] == list(range(len(want)))
    assert max(len(run) for run in positions) == FetchSettings().request_max_blocks
    assert b.store.present_blocks(manifest.block_order()) == set(manifest.block_order())
    # provenance: every block recorded as fetched under the manifest, from the sender
    assert b.store.obtained_blocks(signed.cid, manifest.block_order()) == set(manifest.block_order())


async def test_multi_source_two_recipients_fetch_from_the_sender_and_each_other(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    a, b, c = mesh.add("a", "RGT", 50), mesh.add("b", "RJ1", 51), mesh.add("c", "RAJ", 52)
    async with trio.open_nursery() as nursery:
        await mesh.run(nursery)
        signed = await mesh.share(a, study, ["RAJ", "RJ1"])
        await mesh.announce(a, b, signed)
        await mesh.announce(a, c, signed)
        await fetched_by(mesh, b, signed)
        await fetched_by(mesh, c, signed)
        nursery.cancel_scope.cancel()
    order = signed.document.block_order()
    for node, other in ((b, c), (c, b)):
        requests = mesh.requests_by(node)
        from_a, from_other = asked(requests, a), asked(requests, other)
        assert from_a and from_other, f"{node.name} fetched from one holder only"
        assert sorted(from_a + from_other) == sorted(order)  # every block once, from one holder or the other
        assert node.store.served_by(signed.cid) == {a.peer_id: len(from_a), other.peer_id: len(from_other)}


async def holding(mesh: MemoryMesh, study: str) -> tuple[HarnessNode, HarnessNode, HarnessNode, Signed[Manifest]]:
    """A sends; C holds the whole study, fetched under an earlier revision of the share (so it may serve it
    under the new one); B has not started on the new one yet. Call with the mesh running."""
    a, b, c = (mesh.node(k) for k in list(mesh.nodes))
    first = await mesh.share(a, study, ["RAJ"])
    await mesh.announce(a, c, first)
    await fetched_by(mesh, c, first)
    signed = await mesh.share(a, study, ["RAJ", "RJ1"])
    await mesh.announce(a, c, signed)
    await fetched_by(mesh, c, signed)
    assert asked(mesh.requests_by(c)) and not [r for r in mesh.requests_by(c) if r.manifest_id == signed.cid]
    return a, b, c, signed


async def test_a_fellow_recipient_holding_the_study_serves_part_of_it(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    mesh.add("a", "RGT", 50), mesh.add("b", "RJ1", 51), mesh.add("c", "RAJ", 52)
    async with trio.open_nursery() as nursery:
        await mesh.run(nursery)
        a, b, c, signed = await holding(mesh, study)
        await mesh.announce(a, b, signed)
        await fetched_by(mesh, b, signed)
        nursery.cancel_scope.cancel()
    requests = mesh.requests_by(b)
    from_a, from_c = asked(requests, a), asked(requests, c)
    assert from_a and from_c, "B fetched from one holder only"
    assert sorted(from_a + from_c) == sorted(signed.document.block_order())


async def test_a_corrupting_holder_is_banned_and_its_blocks_fetched_elsewhere(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    mesh.add("a", "RGT", 50), mesh.add("b", "RJ1", 51), mesh.add("c", "RAJ", 52)
    async with trio.open_nursery() as nursery:
        await mesh.run(nursery)
        a, b, c, signed = await holding(mesh, study)
        mesh.corrupting.add(c.peer_id)  # C now flips a bit in every block it serves
        await mesh.announce(a, b, signed)
        await fetched_by(mesh, b, signed)
        nursery.cancel_scope.cancel()
    requests = mesh.requests_by(b)
    from_c = asked(requests, c)
    assert from_c, "B never asked C"
    assert set(from_c) <= set(asked(requests, a))  # whatever C served was fetched again from A
    assert set(alerts(b, "corrupt-block")) == {c.peer_id}
    assert alerts(b, "peer-banned") == [c.peer_id]
    assert b.store.served_by(signed.cid) == {a.peer_id: len(signed.document.block_order())}  # none of C's
    assert b.ctx.storage.blocks.scrub().corrupt == ()


async def test_a_holder_that_stops_answering_times_out_and_the_blocks_come_from_elsewhere(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    mesh.add("a", "RGT", 50), mesh.add("b", "RJ1", 51), mesh.add("c", "RAJ", 52)
    async with trio.open_nursery() as nursery:
        await mesh.run(nursery)
        a, b, c, signed = await holding(mesh, study)
        mesh.silent.add(c.peer_id)  # C accepts block requests and never answers them
        started = trio.current_time()
        await mesh.announce(a, b, signed)
        await fetched_by(mesh, b, signed)
        took = trio.current_time() - started
        nursery.cancel_scope.cancel()
    requests = mesh.requests_by(b)
    from_c = asked(requests, c)
    assert from_c, "B never asked C"
    assert set(from_c) <= set(asked(requests, a))  # every block asked of C was asked of A after
    assert took >= b.ctx.config.request_timeout  # the blocks C held up waited for the request timeout
    assert b.store.served_by(signed.cid) == {a.peer_id: len(signed.document.block_order())}


async def interrupted_group(mesh: MemoryMesh, study: str, *, torn: int = 0, stray: int = 0) -> tuple[
        HarnessNode, HarnessNode, HarnessNode, Signed[Manifest], list[CID]]:
    """B as a kill between a commit group's rename and its database transaction leaves it: the group's ten
    blocks (B's first ten of A's manifest) on disk, named in the group's note, not in the blocks table;
    then `torn` more named in the note but not whole at their CID path, and `stray` more on disk, unrecorded,
    not in the note (an interrupted ingest, say). Returns A, B, C, the manifest and B's fetch order."""
    a, b, c = mesh.add("a", "RGT", 50), mesh.add("b", "RJ1", 51), mesh.add("c", "RAJ", 52)
    signed = await mesh.share(a, study, ["RAJ", "RJ1"])
    order = fetch_order(signed.document, "RJ1", b.peer_id)
    group, torn_ones, strays = order[:10], order[10:10 + torn], order[10 + torn:10 + torn + stray]
    source, blocks = a.ctx.storage.blocks, b.ctx.storage.blocks
    staged = [blocks.stage(source.get(cid), cid) for cid in group]
    blocks.commit_staged([s for s in staged if s is not None],
                         encode_note([(signed.cid, cid, a.peer_id) for cid in [*group, *torn_ones]]))
    for cid in torn_ones:
        blocks.path_of(cid).write_bytes(source.get(cid)[:-7])
    for cid in strays:
        blocks.put(source.get(cid), cid)
    assert b.store.present_blocks(order) == set()
    return a, b, c, signed, order


async def test_blocks_a_crash_left_durable_but_unrecorded_are_adopted_not_fetched_again(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    a, b, c, signed, order = await interrupted_group(mesh, study)
    async with trio.open_nursery() as nursery:
        await mesh.run(nursery)
        await mesh.announce(a, b, signed)  # B's fetcher starts: the restart's resume
        await fetched_by(mesh, b, signed)
        nursery.cancel_scope.cancel()
    group = order[:10]
    requested = asked(mesh.requests_by(b))
    assert not set(group) & set(requested), "blocks verified on disk were fetched again"
    assert sorted(requested) == sorted(order[10:])
    # adopted with their provenance (fetched under the manifest, from A): B may serve them to C
    assert b.store.obtained_blocks(signed.cid, group) == set(group)
    await mesh.hello(c, b)
    assert all(await b.receiver.availability(c.peer_id, signed.cid))


async def test_a_torn_block_is_deleted_and_an_unnamed_one_fetched_again_never_adopted(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    a, b, _, signed, order = await interrupted_group(mesh, study, torn=1, stray=1)
    torn, stray = order[10], order[11]
    async with trio.open_nursery() as nursery:
        await mesh.run(nursery)
        await mesh.announce(a, b, signed)
        await fetched_by(mesh, b, signed)
        nursery.cancel_scope.cancel()
    requested = asked(mesh.requests_by(b))
    assert sorted(requested) == sorted(order[10:])  # the torn block and the stray one were fetched
    assert b.ctx.storage.blocks.get(torn) == a.ctx.storage.blocks.get(torn)  # whole now
    assert b.ctx.storage.blocks.scrub().corrupt == ()
    assert stray in b.store.obtained_blocks(signed.cid, [stray])  # recorded as fetched, once it was


async def test_a_garbled_note_adopts_nothing_and_everything_is_fetched(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    a, b, _, signed, order = await interrupted_group(mesh, study)
    note = b.ctx.storage.blocks.root / COMMIT_NOTE
    lines = note.read_bytes().splitlines()
    # torn, foreign and swapped lines: none names a (manifest, block, peer) as written
    note.write_bytes(b"\xff\x00garbage\n" + lines[0][:30] + b"\n" + b" ".join(lines[1].split(b" ")[::-1]) + b"\n")
    async with trio.open_nursery() as nursery:
        await mesh.run(nursery)
        await mesh.announce(a, b, signed)
        await fetched_by(mesh, b, signed)
        nursery.cancel_scope.cancel()
    assert sorted(asked(mesh.requests_by(b))) == sorted(order)  # nothing adopted: everything fetched
