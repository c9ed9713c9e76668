"""meshnode.node.org_fetcher on trio's MockClock (tests/meshnode/node/harness.py): two nodes of the recipient
organisation RJ1; the first-ranked fetches from the sender, the other copies from it; the other takes over
when the first goes away mid-transfer, or stops making progress."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio
from trio.testing import MockClock

from meshnode.node.org_fetcher import OrgFetcher
from protocol.cid import CID
from protocol.document import Signed
from protocol.manifest import Manifest
from protocol.org_fetch import OrgRole, rank
from tests.meshnode.node.harness import HarnessNode, MemoryLink, MemoryMesh, wait_done


@dataclass
class Running:
    node: HarnessNode
    org_fetcher: OrgFetcher
    scope: trio.CancelScope


async def start(mesh: MemoryMesh, nursery: trio.Nursery, node: HarnessNode) -> Running:
    """The node's fetcher and org fetcher, in a cancel scope of their own (cancelled: the node "dies")."""
    of = OrgFetcher(node.ctx, MemoryLink(mesh, node.peer_id), node.fetcher, interval=1.0)

    async def accepted(signed: Signed[Manifest], at: float) -> None:
        await of.begin(signed, at)

    node.receiver.on_accepted = accepted
    scope = trio.CancelScope()

    async def run() -> None:
        with scope:
            async with trio.open_nursery() as inner:
                inner.start_soon(node.fetcher.run)
                inner.start_soon(of.run)

    nursery.start_soon(run)
    return Running(node, of, scope)


async def until(check: Callable[[], bool], timeout: float = 600) -> None:
    with trio.fail_after(timeout):
        while not check():
            await trio.sleep(0.1)


def blocks_held(node: HarnessNode, signed: Signed[Manifest]) -> int:
    return len(node.store.obtained_blocks(signed.cid, signed.document.block_order()))


async def scenario(mesh: MemoryMesh, study: str,
                   body: Callable[[trio.Nursery, HarnessNode, Running, Running, Signed[Manifest]], Awaitable[None]]
                   ) -> None:
    a = mesh.add("a", "RGT", 50)
    b1, b2 = mesh.add("b1", "RJ1", 51), mesh.add("b2", "RJ1", 52)
    async with trio.open_nursery() as nursery:
        mesh._nursery = nursery  # the holders' answers run here (MemoryMesh.run would start every fetcher)
        nursery.start_soon(a.fetcher.run)
        running = {n.peer_id: await start(mesh, nursery, n) for n in (b1, b2)}
        signed = await mesh.share(a, study, ["RJ1"])
        first, second = (running[p] for p in rank(str(signed.cid), [b1.peer_id, b2.peer_id]))
        await body(nursery, a, first, second, signed)
        nursery.cancel_scope.cancel()


def holders_asked(mesh: MemoryMesh, node: HarnessNode, manifest_id: CID) -> set[str]:
    return {r.holder for r in mesh.requests_by(node) if r.manifest_id == manifest_id}


async def test_first_ranked_fetches_and_the_other_copies_from_it(autojump_clock: MockClock, mesh: MemoryMesh,
                                                                 study: str) -> None:
    async def body(nursery: trio.Nursery, a: HarnessNode, first: Running, second: Running,
                   signed: Signed[Manifest]) -> None:
        await mesh.announce(a, first.node, signed)
        await mesh.announce(a, second.node, signed)
        await wait_done(first.node, signed.cid, 600)
        await wait_done(second.node, signed.cid, 600)
        assert first.org_fetcher.roles[signed.cid] is OrgRole.FETCH
        assert second.org_fetcher.roles[signed.cid] is OrgRole.COPY
        assert second.org_fetcher.copied(signed.cid)  # its completion sends no receipt
        assert not first.org_fetcher.copied(signed.cid)
        # the sender uploads the study once: the second node asked only its sibling
        assert holders_asked(mesh, first.node, signed.cid) == {a.peer_id}
        assert holders_asked(mesh, second.node, signed.cid) == {first.node.peer_id}
        for r in (first, second):
            assert len(r.node.completed[signed.cid]) == len(signed.document.instances)

    await scenario(mesh, study, body)


async def test_the_other_takes_over_when_the_first_goes_away_mid_transfer(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    async def body(nursery: trio.Nursery, a: HarnessNode, first: Running, second: Running,
                   signed: Signed[Manifest]) -> None:
        total = len(signed.document.block_order())
        await mesh.announce(a, first.node, signed)
        await mesh.announce(a, second.node, signed)
        await until(lambda: blocks_held(first.node, signed) >= total // 4)
        first.scope.cancel()  # killed mid-transfer, and unreachable
        del mesh.nodes[first.node.peer_id]
        assert blocks_held(first.node, signed) < total
        await wait_done(second.node, signed.cid, 600)
        assert second.org_fetcher.roles[signed.cid] is OrgRole.FETCH
        assert not second.org_fetcher.copied(signed.cid)  # it sends the organisation's receipt
        assert a.peer_id in holders_asked(mesh, second.node, signed.cid)
        assert len(second.node.completed[signed.cid]) == len(signed.document.instances)
        assert any(e.event.action == "org-fetch-takeover" for e in second.node.store.audit_entries())

    await scenario(mesh, study, body)


async def test_the_other_takes_over_a_stalled_first_after_takeover_seconds(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    async def body(nursery: trio.Nursery, a: HarnessNode, first: Running, second: Running,
                   signed: Signed[Manifest]) -> None:
        total = len(signed.document.block_order())
        await mesh.announce(a, first.node, signed)
        await mesh.announce(a, second.node, signed)
        await until(lambda: blocks_held(first.node, signed) >= total // 4)
        first.scope.cancel()  # stalls, but answers what it holds
        stalled_at = trio.current_time()
        await until(lambda: signed.cid in second.org_fetcher.roles)
        assert second.org_fetcher.roles[signed.cid] is OrgRole.FETCH
        assert trio.current_time() - stalled_at >= second.org_fetcher.takeover_seconds - 2  # virtual seconds
        await wait_done(second.node, signed.cid, 600)
        # it fetched from the sender, and from its stalled sibling what it held
        assert a.peer_id in holders_asked(mesh, second.node, signed.cid)

    await scenario(mesh, study, body)


async def test_a_single_node_org_fetches_at_once(autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    a, b = mesh.add("a", "RGT", 50), mesh.add("b", "RJ1", 51)
    async with trio.open_nursery() as nursery:
        mesh._nursery = nursery
        nursery.start_soon(a.fetcher.run)
        r = await start(mesh, nursery, b)
        signed = await mesh.share(a, study, ["RJ1"])
        t0 = trio.current_time()
        await mesh.announce(a, b, signed)
        await until(lambda: signed.cid in b.fetcher.active or signed.cid in b.completed)
        assert trio.current_time() - t0 < 1
        assert r.org_fetcher.roles[signed.cid] is OrgRole.FETCH
        await wait_done(b, signed.cid, 600)
        nursery.cancel_scope.cancel()
