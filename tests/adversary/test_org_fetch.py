"""Several nodes of a recipient organisation, attacked (in one process, on trio's MockClock: the node's real
drivers and wire handlers over tests/meshnode/node/harness.py's in-memory link).

- A node of another organisation passing for a sibling: listed under the org by a lying directory, claiming
  to hold the whole study; or asking a recipient node what it holds of a manifest, as a sibling would.
- Forged progress: a sibling that says it holds everything and serves nothing.
- Receipts at the sender: the org's second receipt, a replay, another org's node signing for the org, a
  node of the right org receipting a manifest its org was not sent.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from trio.testing import MockClock

from meshnode.dicom import synthetic
from meshnode.directory.client import ResolvedPeer
from meshnode.node.org_fetcher import OrgFetcher
from protocol.cid import CID
from protocol.document import Signed
from protocol.errors import UnauthorisedError
from protocol.exchange_messages import (
    RECEIPT_PROTOCOL,
    Ack,
    ReceiptDelivery,
    decode_ack_reply,
    encode_request,
    pack_bitmap,
)
from protocol.manifest import Manifest
from protocol.org_fetch import OrgRole
from protocol.receipt import Receipt
from tests.meshnode.node.harness import (
    HarnessNode,
    MemoryLink,
    MemoryMesh,
    alerts,
    ingest_study,
    wait_done,
)

CHUNK = 1024


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("study")
    synthetic.generate_ct_study(out, slices=6, rows=64, columns=64, seed=7)
    return out


@pytest.fixture
def study(tmp_path: Path, source: Path) -> str:
    return ingest_study(tmp_path / "a", source, chunk_size=CHUNK)


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[MemoryMesh]:
    m = MemoryMesh(tmp_path)
    yield m
    m.close()


class LyingLink(MemoryLink):
    """A node's link whose directory also lists `impostors` under the node's own org, and whose answers from
    `forged` say they hold every block (what a hostile directory or a hostile peer could make it see)."""

    def __init__(self, mesh: MemoryMesh, me: str, impostors: list[HarnessNode], forged: set[str]) -> None:
        super().__init__(mesh, me)
        self.impostors = impostors
        self.forged = forged
        self.asked: list[str] = []

    async def org_peers(self, org: str) -> list[ResolvedPeer]:
        return [*await super().org_peers(org), *(ResolvedPeer(n.ctx.certificate, None) for n in self.impostors)]

    async def have(self, peer_id: str, manifest_id: CID) -> bytes:
        self.asked.append(peer_id)
        if peer_id in self.forged:
            row = self._own().store.manifest(manifest_id)
            assert row is not None
            total = len(self._own().ctx.manifests.open(manifest_id, row.raw).document.block_order())
            return pack_bitmap([True] * total)
        return await super().have(peer_id, manifest_id)


def attach(mesh: MemoryMesh, nursery: trio.Nursery, node: HarnessNode, link: MemoryLink) -> OrgFetcher:
    of = OrgFetcher(node.ctx, link, node.fetcher, interval=1.0)

    async def accepted(signed: Signed[Manifest], at: float) -> None:
        await of.begin(signed, at)

    node.receiver.on_accepted = accepted
    nursery.start_soon(node.fetcher.run)
    nursery.start_soon(of.run)
    return of


async def test_a_node_of_another_org_listed_as_a_sibling_is_ignored(autojump_clock: MockClock, mesh: MemoryMesh,
                                                                     study: str) -> None:
    """The directory lists RXH's node under RJ1 and it claims to hold the whole study: RJ1's only node still
    fetches from the sender itself (and will send the receipt), and never asks the impostor anything."""
    a, b, x = mesh.add("a", "RGT", 50), mesh.add("b", "RJ1", 51), mesh.add("x", "RXH", 59)
    async with trio.open_nursery() as nursery:
        mesh._nursery = nursery
        nursery.start_soon(a.fetcher.run)
        link = LyingLink(mesh, b.peer_id, [x], {x.peer_id})
        of = attach(mesh, nursery, b, link)
        signed = await mesh.share(a, study, ["RJ1"])
        await mesh.announce(a, b, signed)
        await wait_done(b, signed.cid, 600)
        nursery.cancel_scope.cancel()
    assert of.roles[signed.cid] is OrgRole.FETCH
    assert not of.copied(signed.cid)
    assert x.peer_id not in link.asked
    assert {r.holder for r in mesh.requests_by(b)} == {a.peer_id}


async def test_a_node_of_another_org_asking_as_a_sibling_learns_nothing(autojump_clock: MockClock,
                                                                         mesh: MemoryMesh, study: str) -> None:
    """RJ1's node holds the study; RXH's node asks it what it holds, as RJ1's other node would: refused, and
    a security alert. RJ1's other node asking the same gets the bitmap (siblings are recipients)."""
    a, b1, b2 = mesh.add("a", "RGT", 50), mesh.add("b1", "RJ1", 51), mesh.add("b2", "RJ1", 52)
    x = mesh.add("x", "RXH", 59)
    async with trio.open_nursery() as nursery:
        await mesh.run(nursery)
        signed = await mesh.share(a, study, ["RJ1"])
        await mesh.announce(a, b1, signed)
        await wait_done(b1, signed.cid, 600)
        with pytest.raises(UnauthorisedError):
            await MemoryLink(mesh, x.peer_id).ensure_peer_id(b1.peer_id)
            await MemoryLink(mesh, x.peer_id).have(b1.peer_id, signed.cid)
        await MemoryLink(mesh, b2.peer_id).ensure_peer_id(b1.peer_id)
        bitmap = await MemoryLink(mesh, b2.peer_id).have(b1.peer_id, signed.cid)
        nursery.cancel_scope.cancel()
    assert alerts(b1, "unauthorised-request") == [x.peer_id]
    assert bitmap == pack_bitmap([True] * len(signed.document.block_order()))


async def test_forged_progress_a_sibling_that_claims_everything_and_serves_nothing(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    """b1 (a sibling) says it holds every block but never answers a block request: b2 starts copying from
    it, sees no progress for takeover_seconds, then fetches from the sender and completes as the org's
    fetcher (so it sends the receipt)."""
    a, b1, b2 = mesh.add("a", "RGT", 50), mesh.add("b1", "RJ1", 51), mesh.add("b2", "RJ1", 52)
    mesh.silent.add(b1.peer_id)
    async with trio.open_nursery() as nursery:
        mesh._nursery = nursery
        nursery.start_soon(a.fetcher.run)
        of = attach(mesh, nursery, b2, LyingLink(mesh, b2.peer_id, [], {b1.peer_id}))
        signed = await mesh.share(a, study, ["RJ1"])
        await mesh.announce(a, b2, signed)
        start = trio.current_time()
        await wait_done(b2, signed.cid, 600)
        took = trio.current_time() - start
        nursery.cancel_scope.cancel()
    assert b2.failed == {}
    assert of.roles[signed.cid] is OrgRole.FETCH
    assert not of.copied(signed.cid)
    assert took >= of.takeover_seconds  # virtual seconds: it waited for its sibling first
    assert a.peer_id in {r.holder for r in mesh.requests_by(b2)}
    assert any(e.event.action == "org-copy-stalled" for e in b2.store.audit_entries())


async def deliver(mesh: MemoryMesh, by: HarnessNode, to: HarnessNode, receipt: bytes, cert: bytes) -> object:
    link = MemoryLink(mesh, by.peer_id)
    await link.ensure_peer_id(to.peer_id)
    return decode_ack_reply(await link._ask(to.peer_id, RECEIPT_PROTOCOL,
                                            encode_request(ReceiptDelivery(receipt, cert))))


def delivered_entries(node: HarnessNode, manifest_id: CID) -> list[str]:
    return [e.event.actor for e in node.store.audit_entries()
            if e.event.action == "delivered" and e.event.manifest_id == str(manifest_id)]


async def test_receipts_one_per_org_and_hostile_ones_change_nothing(autojump_clock: MockClock, mesh: MemoryMesh,
                                                                      study: str) -> None:
    a, b1, b2 = mesh.add("a", "RGT", 50), mesh.add("b1", "RJ1", 51), mesh.add("b2", "RJ1", 52)
    x, c = mesh.add("x", "RXH", 59), mesh.add("c", "RAJ", 53)
    async with trio.open_nursery() as nursery:
        await mesh.run(nursery)
        signed = await mesh.share(a, study, ["RJ1"])
        to_raj = await mesh.share(a, study, ["RAJ"])
        n = len(signed.document.instances)
        now = int(b1.ctx.clock())

        def receipt(node: HarnessNode, org: str, manifest: Signed[Manifest] = signed) -> bytes:
            return Receipt(manifest.cid, org, node.peer_id, n, now).sign(node.key).encode()

        cert = {node.peer_id: node.ctx.certificate.encode() for node in (b1, b2, x, c)}
        first = receipt(b1, "RJ1")
        # hostile first, so that nothing is recorded before them
        forged = await deliver(mesh, x, a, receipt(x, "RJ1"), cert[x.peer_id])  # another org signs for RJ1
        not_sent = await deliver(mesh, x, a, receipt(x, "RXH"), cert[x.peer_id])  # RXH was not sent it
        wrong_manifest = await deliver(mesh, b1, a, receipt(b1, "RJ1", to_raj), cert[b1.peer_id])
        assert not isinstance(forged, Ack) and not isinstance(not_sent, Ack)
        assert not isinstance(wrong_manifest, Ack)
        assert a.store.receipts(signed.cid) == {} or not a.store.receipts(signed.cid)
        assert not a.store.receipts(to_raj.cid)
        # the org's receipt, then its second node's, then a replay of the first: one recorded, one audited
        assert isinstance(await deliver(mesh, b1, a, first, cert[b1.peer_id]), Ack)
        assert isinstance(await deliver(mesh, b2, a, receipt(b2, "RJ1"), cert[b2.peer_id]), Ack)
        assert isinstance(await deliver(mesh, b1, a, first, cert[b1.peer_id]), Ack)
        nursery.cancel_scope.cancel()
    assert list(a.store.receipts(signed.cid)) == ["RJ1"]
    assert delivered_entries(a, signed.cid) == [b1.peer_id]
    assert not delivered_entries(a, to_raj.cid)
