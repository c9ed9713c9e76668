"""Several nodes per organisation, the sender's side (meshnode.node.replication), in one process over the
in-memory link: RGT runs s1 (which shares) and s2; RJ1 (r) receives. A sibling copy serves the recipient,
a receipt taken by s2 reaches s1, and a recall either node signs stops both (any node of the sender org may
recall: protocol.recall)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
from trio.testing import MockClock

from meshnode.directory.client import ResolvedPeer
from meshnode.node.delivery import NodeTransport
from meshnode.node.replication import REQUEST_TIMEOUT_S, Replication
from protocol.document import Signed
from protocol.errors import DocumentError, MeshError, NotFoundError, UnavailableError
from protocol.exchange_messages import (
    RECALL_PROTOCOL,
    RECEIPT_PROTOCOL,
    UNAUTHORISED,
    BlockData,
    BlockFrame,
    BlockRequest,
    RecallDelivery,
    ReceiptDelivery,
    Refused,
    decode_ack_reply,
    encode_request,
)
from protocol.lifecycle import ManifestState
from protocol.manifest import Manifest, Priority, Purpose
from protocol.outbox import DeliveryKey, DeliveryKind
from protocol.receipt import Receipt
from tests.meshnode.node.harness import HarnessNode, MemoryLink, MemoryMesh, wait_done


def sibling(mesh: MemoryMesh, node: HarnessNode, scope: str = "all") -> Replication:
    """The node's replication driver, wired as the runtime wires it (deliveries queued, not driven)."""
    rep = Replication(node.ctx, MemoryLink(mesh, node.peer_id), scope, node.sender.deliveries)
    node.receiver.sibling = rep.accept
    node.receiver.sibling_recalled = rep.sibling_recalled
    node.sender.on_shared = rep.offer
    node.sender.on_receipt = rep.receipt_taken
    node.sender.on_recall = rep.recalled
    return rep


async def ask_blocks(holder: HarnessNode, asker: HarnessNode, signed: Signed[Manifest]) -> list[BlockFrame]:
    frames: list[BlockFrame] = []

    async def write(frame: BlockFrame) -> None:
        frames.append(frame)

    cids = tuple(signed.document.block_order()[:8])
    await holder.wire.answer_blocks(asker.peer_id, encode_request(BlockRequest(signed.cid, cids)), write)
    return frames


async def deliver(mesh: MemoryMesh, to: HarnessNode, by: HarnessNode, protocol_id: str, payload: bytes) -> None:
    """`by` delivers a receipt or recall to `to` (certificates exchanged first, as on a connection)."""
    await mesh.hello(by, to)
    reply = decode_ack_reply(await to.wire.answer(protocol_id, by.peer_id, payload))
    if isinstance(reply, Refused):
        raise reply.to_error()


def receipt(r: HarnessNode, signed: Signed[Manifest]) -> bytes:
    return Receipt(signed.cid, r.org, r.peer_id, len(signed.document.instances), int(r.ctx.clock())).sign(r.key).encode()


def queued(node: HarnessNode, kind: DeliveryKind) -> list[str]:
    return [r.key.org for r in node.sender.deliveries.records() if r.key.kind is kind]


async def test_a_share_is_offered_to_the_siblings_and_copied_by_mode(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    s1, s2, r = mesh.add("a", "RGT", 50), mesh.add("s2", "RGT", 52), mesh.add("r", "RJ1", 51)
    sibling(mesh, s1)
    rep2 = sibling(mesh, s2)
    async with trio.open_nursery() as nursery:
        await mesh.run(nursery)
        nursery.start_soon(rep2.run)
        signed = await s1.sender.share(study, ["RJ1"], Priority.ROUTINE, Purpose.CARE)
        # the offer is a durable delivery to the node's own org, beside the recipient's
        assert sorted(queued(s1, DeliveryKind.ANNOUNCE)) == ["RGT", "RJ1"]
        await MemoryLink(mesh, s1.peer_id).announce(s2.peer_id, signed.encode())  # what NodeTransport does
        with trio.fail_after(600):
            assert await rep2.wait_copied(signed.cid) == len(signed.document.block_order())
        row = s2.store.manifest(signed.cid)
        # the org's own sent manifest at s2, never a received study; no receipt for a sibling copy
        assert row is not None and row.direction == "sent" and row.sender_org == "RGT"
        assert s2.store.manifests("received") == []
        assert queued(s2, DeliveryKind.RECEIPT) == []
        # s1 announces and is gone at once: r completes from s2, each instance verified against its digest
        await mesh.announce(s1, r, signed)
        del mesh.nodes[s1.peer_id]
        await wait_done(r, signed.cid, 600)
        nursery.cancel_scope.cancel()
    assert signed.cid in r.completed and len(r.completed[signed.cid]) == len(signed.document.instances)
    assert s2.peer_id in {q.holder for q in mesh.requests_by(r)}


async def test_urgent_mode_copies_urgent_studies_only(autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    s1, s2 = mesh.add("a", "RGT", 50), mesh.add("s2", "RGT", 52)
    mesh.add("r", "RJ1", 51)
    rep2 = sibling(mesh, s2, "urgent")
    async with trio.open_nursery() as nursery:
        await mesh.run(nursery)
        nursery.start_soon(rep2.run)
        routine = await s1.sender.share(study, ["RJ1"], Priority.ROUTINE, Purpose.CARE)
        await MemoryLink(mesh, s1.peer_id).announce(s2.peer_id, routine.encode())
        stat = await s1.sender.share(study, ["RJ1"], Priority.STAT, Purpose.CARE)
        await MemoryLink(mesh, s1.peer_id).announce(s2.peer_id, stat.encode())
        with trio.fail_after(600):
            await rep2.wait_copied(stat.cid)
        nursery.cancel_scope.cancel()
    assert routine.cid not in rep2.copied and s2.store.manifest(routine.cid) is not None
    assert s2.store.present_blocks(stat.document.block_order()) == set(stat.document.block_order())


async def test_a_receipt_taken_by_a_sibling_is_passed_on_once(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    s1, s2, r = mesh.add("a", "RGT", 50), mesh.add("s2", "RGT", 52), mesh.add("r", "RJ1", 51)
    sibling(mesh, s1)
    sibling(mesh, s2)
    signed = await s1.sender.share(study, ["RJ1"], Priority.ROUTINE, Purpose.CARE)
    await MemoryLink(mesh, s1.peer_id).announce(s2.peer_id, signed.encode())
    raw = receipt(r, signed)
    # s1 is down: r's receipt goes to s2, which records it and queues it for its siblings
    await deliver(mesh, s2, r, RECEIPT_PROTOCOL, encode_request(ReceiptDelivery(raw, r.ctx.certificate.encode())))
    assert "RJ1" in s2.store.receipts(signed.cid)
    assert queued(s2, DeliveryKind.SIBLING_RECEIPT) == ["RGT"]
    # s1 back: s2's delivery brings it the recipient's receipt with the recipient's certificate
    await deliver(mesh, s1, s2, RECEIPT_PROTOCOL, encode_request(ReceiptDelivery(raw, r.ctx.certificate.encode())))
    assert "RJ1" in s1.store.receipts(signed.cid)
    assert queued(s1, DeliveryKind.SIBLING_RECEIPT) == []  # from a sibling: not passed on again


async def test_any_node_of_the_sender_org_may_recall(autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    s1, s2, r = mesh.add("a", "RGT", 50), mesh.add("s2", "RGT", 52), mesh.add("r", "RJ1", 51)
    sibling(mesh, s1)
    sibling(mesh, s2)
    async with trio.open_nursery() as nursery:
        await mesh.run(nursery)
        signed = await s1.sender.share(study, ["RJ1"], Priority.ROUTINE, Purpose.CARE)
        await MemoryLink(mesh, s1.peer_id).announce(s2.peer_id, signed.encode())
        await mesh.announce(s1, r, signed)
        await wait_done(r, signed.cid, 600)
        nursery.cancel_scope.cancel()
    recall = await s2.sender.recall(signed.cid, "wrong patient")
    assert sorted(queued(s2, DeliveryKind.RECALL)) == ["RGT", "RJ1"]
    payload = encode_request(RecallDelivery(recall.encode(), s2.ctx.certificate.encode()))
    await deliver(mesh, r, s2, RECALL_PROTOCOL, payload)
    row = r.store.manifest(signed.cid)
    assert row is not None and row.state is ManifestState.RECALLED
    # the node that signed it records its sibling's recall and stops serving it
    assert any(isinstance(f, BlockData) for f in await ask_blocks(s1, r, signed))
    await deliver(mesh, s1, s2, RECALL_PROTOCOL, payload)
    s1_row = s1.store.manifest(signed.cid)
    assert s1_row is not None and s1_row.state is ManifestState.RECALLED
    assert await ask_blocks(s1, r, signed) == [UNAUTHORISED]


async def test_a_recall_relayed_by_another_org_changes_nothing_at_a_sibling(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    """s1's signed recall, handed to s2 by the recipient (not a node of RGT): s2 keeps its copy live."""
    s1, s2, r = mesh.add("a", "RGT", 50), mesh.add("s2", "RGT", 52), mesh.add("r", "RJ1", 51)
    sibling(mesh, s2, "nothing")
    signed = await s1.sender.share(study, ["RJ1"], Priority.ROUTINE, Purpose.CARE)
    await MemoryLink(mesh, s1.peer_id).announce(s2.peer_id, signed.encode())
    recall = await s1.sender.recall(signed.cid, "wrong patient")
    payload = encode_request(RecallDelivery(recall.encode(), s1.ctx.certificate.encode()))
    with pytest.raises(NotFoundError):
        await deliver(mesh, s2, r, RECALL_PROTOCOL, payload)
    row = s2.store.manifest(signed.cid)
    assert row is not None and row.state is not ManifestState.RECALLED


async def test_an_interrupted_copy_resumes_after_a_restart(autojump_clock: MockClock, mesh: MemoryMesh,
                                                           study: str) -> None:
    s1, s2 = mesh.add("a", "RGT", 50), mesh.add("s2", "RGT", 52)
    mesh.add("r", "RJ1", 51)
    sibling(mesh, s2)  # accepts the offer; its copier never runs (the node stops before)
    signed = await s1.sender.share(study, ["RJ1"], Priority.ROUTINE, Purpose.CARE)
    await MemoryLink(mesh, s1.peer_id).announce(s2.peer_id, signed.encode())
    assert s2.store.present_blocks(signed.document.block_order()) == set()
    restarted = sibling(mesh, s2)
    async with trio.open_nursery() as nursery:
        await mesh.run(nursery)
        nursery.start_soon(restarted.run)
        with trio.fail_after(600):
            assert await restarted.wait_copied(signed.cid) == len(signed.document.block_order())
        nursery.cancel_scope.cancel()
    assert await sibling(mesh, s2).resume() == 0  # nothing left to copy


async def test_copy_interrupted_by_holder_down_is_retried_when_it_returns(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    """Review M2 (its demonstration test): before the fix s2 held 0 of the blocks an hour after s1 returned."""
    s1, s2 = mesh.add("a", "RGT", 50), mesh.add("s2", "RGT", 52)
    mesh.add("r", "RJ1", 51)
    rep2 = sibling(mesh, s2)
    async with trio.open_nursery() as nursery:
        await mesh.run(nursery)
        nursery.start_soon(rep2.run)
        signed = await s1.sender.share(study, ["RJ1"], Priority.STAT, Purpose.CARE)
        await MemoryLink(mesh, s1.peer_id).announce(s2.peer_id, signed.encode())
        # s1 is patched right after offering: gone before the copy starts
        del mesh.nodes[s1.peer_id]
        await trio.sleep(5)
        mesh.nodes[s1.peer_id] = s1  # back an hour later
        await trio.sleep(3600)
        nursery.cancel_scope.cancel()
    order = signed.document.block_order()
    present = s2.store.present_blocks(order)
    assert len(present) == len(set(order)), f"s2 holds {len(present)} of {len(set(order))} blocks after s1 returned"


class HungTo(MemoryLink):
    """A link on which one sibling accepts a block stream and then answers nothing (a frozen VM)."""

    def __init__(self, mesh: MemoryMesh, me: str, hung: str) -> None:
        super().__init__(mesh, me)
        self.hung = hung

    async def fetch_blocks(self, peer_id: str, request: BlockRequest) -> AsyncIterator[BlockFrame]:
        if peer_id == self.hung:
            await trio.sleep_forever()
        async for frame in super().fetch_blocks(peer_id, request):
            yield frame


async def test_a_hung_signer_stalls_nothing_and_another_sibling_serves_the_copy(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    """Review M2: the signer s1 hangs on every block request; s3 holds a copy; s2 copies from s3 after the
    request deadline, and a later offer is copied too (the copier is not stuck)."""
    s1, s2, s3 = mesh.add("a", "RGT", 50), mesh.add("s2", "RGT", 52), mesh.add("s3", "RGT", 53)
    mesh.add("r", "RJ1", 51)
    rep3 = sibling(mesh, s3)
    rep2 = Replication(s2.ctx, HungTo(mesh, s2.peer_id, s1.peer_id), "all", s2.sender.deliveries)
    s2.receiver.sibling = rep2.accept
    async with trio.open_nursery() as nursery:
        await mesh.run(nursery)
        nursery.start_soon(rep3.run)
        nursery.start_soon(rep2.run)
        signed = await s1.sender.share(study, ["RJ1"], Priority.STAT, Purpose.CARE)
        await MemoryLink(mesh, s1.peer_id).announce(s3.peer_id, signed.encode())
        with trio.fail_after(600):
            await rep3.wait_copied(signed.cid)
        await MemoryLink(mesh, s1.peer_id).announce(s2.peer_id, signed.encode())
        with trio.fail_after(3 * REQUEST_TIMEOUT_S):
            assert await rep2.wait_copied(signed.cid) == len(set(signed.document.block_order()))
        nursery.cancel_scope.cancel()
    assert s3.peer_id in {r.holder for r in mesh.requests if r.requester == s2.peer_id}


class SiblingsWire:
    """The wire and sessions a NodeTransport uses, reduced to who took what (review M1's sketch): `down`
    cannot be reached, `refusing` refuses for good (a skewed clock: 'created in the future')."""

    def __init__(self, peers: list[HarnessNode], down: tuple[str, ...] = (), refusing: tuple[str, ...] = ()) -> None:
        self.peers = [ResolvedPeer(n.ctx.certificate, None) for n in peers]
        self.down, self.refusing = down, refusing
        self.took: list[str] = []

    async def org_peers(self, org: str) -> list[ResolvedPeer]:
        return self.peers

    async def ensure(self, peer: ResolvedPeer) -> None:
        if peer.peer_id in self.down:
            raise UnavailableError(f"no route to {peer.peer_id}")

    async def _take(self, peer_id: str) -> None:
        if peer_id in self.refusing:
            raise DocumentError("created in the future")
        self.took.append(peer_id)

    async def deliver_recall(self, peer_id: str, payload: bytes) -> None:
        await self._take(peer_id)

    async def announce(self, peer_id: str, manifest: bytes, certificate: bytes | None = None) -> None:
        await self._take(peer_id)


@pytest.mark.parametrize("kind", [DeliveryKind.ANNOUNCE, DeliveryKind.RECALL])
async def test_an_offer_or_recall_to_the_own_org_is_retried_until_every_sibling_took_it(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str, kind: DeliveryKind) -> None:
    """Review M1: with s3 down, s2 taking it used to mark the delivery done; it must stay retrying."""
    s1, s2, s3 = mesh.add("a", "RGT", 50), mesh.add("s2", "RGT", 52), mesh.add("s3", "RGT", 53)
    signed = await s1.sender.share(study, ["RJ1"], Priority.ROUTINE, Purpose.CARE)
    key = DeliveryKey(kind, signed.cid, "RGT")
    transport = NodeTransport(s1.ctx)
    fake = SiblingsWire([s2, s3], down=(s3.peer_id,))
    transport.connect(fake, fake)  # type: ignore[arg-type]
    with pytest.raises(UnavailableError):
        await transport.deliver(key, b"recall")
    assert fake.took == [s2.peer_id]
    fake.down = ()
    await transport.deliver(key, b"recall")  # s3 back: done (s2 takes it again: idempotent there)
    assert s3.peer_id in fake.took


async def test_a_siblings_permanent_refusal_does_not_stop_the_others(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    """Review M1: s2 refuses for good; s3 still gets the recall; the delivery fails with s2's error (shown
    in the outbox), instead of stopping at s2."""
    s1, s2, s3 = mesh.add("a", "RGT", 50), mesh.add("s2", "RGT", 52), mesh.add("s3", "RGT", 53)
    signed = await s1.sender.share(study, ["RJ1"], Priority.ROUTINE, Purpose.CARE)
    transport = NodeTransport(s1.ctx)
    fake = SiblingsWire([s2, s3], refusing=(s2.peer_id,))
    transport.connect(fake, fake)  # type: ignore[arg-type]
    with pytest.raises(DocumentError):
        await transport.deliver(DeliveryKey(DeliveryKind.RECALL, signed.cid, "RGT"), b"recall")
    assert fake.took == [s3.peer_id]


async def test_a_recall_that_reaches_a_sibling_before_the_offer_keeps_it_dead(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    """Review m1: s1's recall reaches s2 first (a tombstone); the late offer is not stored live, not copied,
    not served."""
    s1, s2 = mesh.add("a", "RGT", 50), mesh.add("s2", "RGT", 52)
    r = mesh.add("r", "RJ1", 51)
    sibling(mesh, s2)
    signed = await s1.sender.share(study, ["RJ1"], Priority.ROUTINE, Purpose.CARE)
    recall = await s1.sender.recall(signed.cid, "wrong patient")
    await deliver(mesh, s2, s1, RECALL_PROTOCOL,
                  encode_request(RecallDelivery(recall.encode(), s1.ctx.certificate.encode())))
    await MemoryLink(mesh, s1.peer_id).announce(s2.peer_id, signed.encode())
    row = s2.store.manifest(signed.cid)
    assert row is None or row.state is ManifestState.RECALLED
    await mesh.hello(r, s2)
    assert not any(isinstance(f, BlockData) for f in await ask_blocks(s2, r, signed))


async def test_receipt_recorded_but_not_passed_on_when_stopped_in_between(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    """Review m2 (its demonstration test): the recipient's redelivery still queues the pass-on."""
    s1, s2, r = mesh.add("a", "RGT", 50), mesh.add("s2", "RGT", 52), mesh.add("r", "RJ1", 51)
    sibling(mesh, s1)
    rep2 = sibling(mesh, s2)
    signed = await s1.sender.share(study, ["RJ1"], Priority.ROUTINE, Purpose.CARE)
    await MemoryLink(mesh, s1.peer_id).announce(s2.peer_id, signed.encode())
    raw = receipt(r, signed)
    real = rep2.receipt_taken

    async def crash(*a: object) -> None:  # the process stops after save_receipt, before the enqueue
        raise MeshError("simulated stop")
    s2.sender.on_receipt = crash
    with pytest.raises(MeshError):
        await deliver(mesh, s2, r, RECEIPT_PROTOCOL, encode_request(ReceiptDelivery(raw, r.ctx.certificate.encode())))
    s2.sender.on_receipt = real
    # r was not acknowledged: it delivers again
    await deliver(mesh, s2, r, RECEIPT_PROTOCOL, encode_request(ReceiptDelivery(raw, r.ctx.certificate.encode())))
    assert "RJ1" in s2.store.receipts(signed.cid)
    assert queued(s2, DeliveryKind.SIBLING_RECEIPT) == ["RGT"], "the receipt never reaches s1"


async def test_a_siblings_recall_drops_the_signers_pending_announcements(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    """Review m3: s1's announcement to RJ1 is still queued (r unreachable) when s2 recalls; s1 records the
    recall and drops it, instead of failing it later as 'recalled: not announced' (a false FAILED event)."""
    s1, s2 = mesh.add("a", "RGT", 50), mesh.add("s2", "RGT", 52)
    sibling(mesh, s1)
    sibling(mesh, s2)
    signed = await s1.sender.share(study, ["RJ1"], Priority.ROUTINE, Purpose.CARE)
    await MemoryLink(mesh, s1.peer_id).announce(s2.peer_id, signed.encode())
    assert "RJ1" in queued(s1, DeliveryKind.ANNOUNCE)
    recall = await s2.sender.recall(signed.cid, "wrong patient")
    await deliver(mesh, s1, s2, RECALL_PROTOCOL,
                  encode_request(RecallDelivery(recall.encode(), s2.ctx.certificate.encode())))
    row = s1.store.manifest(signed.cid)
    assert row is not None and row.state is ManifestState.RECALLED
    assert "RJ1" not in queued(s1, DeliveryKind.ANNOUNCE)


async def test_a_recall_is_queued_for_the_siblings_in_the_same_write(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    """Review m2 (recall side): the node stops right after the recall's transaction, before on_recall; the
    recall to its own org is queued all the same."""
    s1 = mesh.add("a", "RGT", 50)
    mesh.add("s2", "RGT", 52)
    sibling(mesh, s1)
    signed = await s1.sender.share(study, ["RJ1"], Priority.ROUTINE, Purpose.CARE)

    async def crash(*a: object) -> None:
        raise MeshError("simulated stop")
    s1.sender.on_recall = crash
    with pytest.raises(MeshError):
        await s1.sender.recall(signed.cid, "wrong patient")
    assert sorted(queued(s1, DeliveryKind.RECALL)) == ["RGT", "RJ1"]
