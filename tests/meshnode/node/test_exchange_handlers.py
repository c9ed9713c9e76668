"""The node's request handlers in one process (tests/meshnode/node/harness.py): what a peer's request frame
gets back from Wire.answer / Wire.answer_blocks, past the same gate a libp2p stream passes, and what it
changes. The receiver accepting and refusing manifests (not a recipient, recalled before it arrived, an
older revision, relays), the access rule on block requests (sender, fellow recipient, stranger, a
manifest written to make the node a confused deputy), and malformed or unauthenticated frames."""

from __future__ import annotations

import pytest
from trio.testing import MockClock

from meshnode.study.manifest_builder import build_manifest
from meshnode.node.wire import UNKNOWN_PEER
from protocol.cid import CID
from protocol.document import Signed
from protocol.errors import (
    CertificateMismatchError,
    DecodeError,
    ForgedCertificateError,
    NotFoundError,
    RevisionRollbackError,
    WrongOrganisationError,
)
from protocol.exchange_messages import (
    ANNOUNCE_PROTOCOL,
    HAVE_PROTOCOL,
    HELLO_PROTOCOL,
    RECALL_PROTOCOL,
    UNAUTHORISED,
    Announce,
    BlockAbsent,
    BlockData,
    BlockFrame,
    BlockRequest,
    HaveRequest,
    Hello,
    RecallDelivery,
    Refused,
    decode_ack_reply,
    decode_have_reply,
    decode_hello_reply,
    encode_request,
    encode_response,
)
from protocol.manifest import Manifest, Priority, Purpose
from tests.meshnode.node.harness import HarnessNode, MemoryMesh, alerts
from tests.protocol.factories import NOW


def nodes(mesh: MemoryMesh) -> tuple[HarnessNode, HarnessNode, HarnessNode, HarnessNode]:
    """A sends (RGT); B (RJ1) and C (RAJ) are recipients; D (RYJ) is not."""
    return (mesh.add("a", "RGT", 50), mesh.add("b", "RJ1", 51), mesh.add("c", "RAJ", 52),
            mesh.add("d", "RYJ", 53))


async def announce(sender: HarnessNode, to: HarnessNode, manifest: bytes, certificate: bytes | None = None) -> Refused | None:
    """`sender` announces (or relays, with the sender's certificate) a manifest to `to`: its refusal, if any."""
    payload = encode_request(Announce(manifest, certificate or sender.ctx.certificate.encode()))
    reply = decode_ack_reply(await to.wire.answer(ANNOUNCE_PROTOCOL, sender.peer_id, payload))
    return reply if isinstance(reply, Refused) else None


async def blocks(asker: HarnessNode, holder: HarnessNode, manifest_id: CID, cids: tuple[CID, ...]) -> list[BlockFrame]:
    frames: list[BlockFrame] = []

    async def write(frame: BlockFrame) -> None:
        frames.append(frame)

    await holder.wire.answer_blocks(asker.peer_id, encode_request(BlockRequest(manifest_id, cids)), write)
    return frames


async def introduced(mesh: MemoryMesh) -> None:
    """Every node has presented its certificate to every other (hello)."""
    for asker in mesh.nodes.values():
        for holder in mesh.nodes.values():
            if asker is not holder:
                await mesh.hello(asker, holder)


# -- the receiver --------------------------------------------------------------------------------
async def test_a_recipient_accepts_an_announcement_records_it_and_starts_fetching(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    a, b, _, _ = nodes(mesh)
    await introduced(mesh)
    signed = await mesh.share(a, study, ["RAJ", "RJ1"])
    assert await announce(a, b, signed.encode()) is None
    row = b.store.manifest(signed.cid)
    assert row is not None and row.direction == "received" and row.sender_org == "RGT"
    assert signed.cid in b.fetcher.active
    assert await announce(a, b, signed.encode()) is None  # a retried announcement: the same answer, once
    assert [m.manifest_id for m in b.store.manifests("received")] == [signed.cid]


async def test_a_node_that_is_not_a_recipient_refuses_and_records_nothing(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    a, _, _, d = nodes(mesh)
    await introduced(mesh)
    signed = await mesh.share(a, study, ["RAJ", "RJ1"])
    refused = await announce(a, d, signed.encode())
    assert refused is not None and refused.code == WrongOrganisationError.code
    assert d.store.manifest(signed.cid) is None and not d.fetcher.active
    assert alerts(d, "announce-refused") == [a.peer_id]


async def test_a_manifest_recalled_before_it_arrived_is_refused_when_it_does(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    a, b, c, _ = nodes(mesh)
    await introduced(mesh)
    signed = await mesh.share(a, study, ["RAJ", "RJ1"])
    recall = await a.sender.recall(signed.cid, "wrong patient")
    reply = decode_ack_reply(await b.wire.answer(
        RECALL_PROTOCOL, a.peer_id, encode_request(RecallDelivery(recall.encode(), a.ctx.certificate.encode()))))
    assert not isinstance(reply, Refused)
    refused = await announce(a, b, signed.encode())  # the announcement, late
    assert refused is not None and refused.code == NotFoundError.code
    # a fellow recipient relaying it (it has not heard of the recall) is refused alike, without an alert
    refused = await announce(c, b, signed.encode(), a.ctx.certificate.encode())
    assert refused is not None and refused.code == NotFoundError.code
    assert b.store.manifest(signed.cid) is None and not b.fetcher.active
    assert alerts(b, "announce-refused") == [a.peer_id]


async def test_an_older_revision_is_refused_once_a_newer_one_is_here(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    a, b, _, _ = nodes(mesh)
    await introduced(mesh)
    first = await mesh.share(a, study, ["RAJ", "RJ1"])
    second = await mesh.share(a, study, ["RAJ", "RJ1"])
    assert (first.document.revision, second.document.revision) == (1, 2)
    assert await announce(a, b, second.encode()) is None
    refused = await announce(a, b, first.encode())
    assert refused is not None and refused.code == RevisionRollbackError.code
    assert b.store.manifest(first.cid) is None


async def test_a_fellow_recipient_may_relay_the_senders_manifest_a_stranger_may_not(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    a, b, c, d = nodes(mesh)
    await introduced(mesh)
    signed = await mesh.share(a, study, ["RAJ", "RJ1"])
    refused = await announce(d, b, signed.encode(), a.ctx.certificate.encode())
    assert refused is not None and refused.code == WrongOrganisationError.code
    assert b.store.manifest(signed.cid) is None
    assert await announce(c, b, signed.encode(), a.ctx.certificate.encode()) is None
    row = b.store.manifest(signed.cid)
    assert row is not None and row.sender_org == "RGT"  # still the sender's manifest, signed by it
    received = [e.event for e in b.store.audit_entries() if e.event.action == "manifest-received"]
    assert [(e.actor, e.actor_org) for e in received] == [(c.peer_id, "RAJ")]


# -- the access rule on block requests -------------------------------------------------------------
async def test_the_sender_serves_its_recipients_and_refuses_everyone_else(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    a, b, c, d = nodes(mesh)
    await introduced(mesh)
    signed = await mesh.share(a, study, ["RAJ", "RJ1"])
    assert await announce(a, c, signed.encode()) is None
    cids = signed.document.block_order()[:4]
    served = await blocks(b, a, signed.cid, cids)
    assert [type(f) for f in served] == [BlockData] * 4
    assert all(isinstance(f, BlockData) and f.cid.matches(f.data) for f in served)
    assert await blocks(d, a, signed.cid, cids) == [UNAUTHORISED]  # not a recipient
    assert alerts(a, "unauthorised-request") == [d.peer_id]
    # a fellow recipient that has fetched nothing under the manifest serves nothing, and says only "absent"
    assert await blocks(b, c, signed.cid, cids) == [BlockAbsent(cid) for cid in cids]
    # the sender may not read from its recipients what they fetched under its own manifest either
    assert await blocks(a, c, signed.cid, cids) == [UNAUTHORISED]
    assert alerts(c, "unauthorised-request") == [a.peer_id]


async def test_a_manifest_written_to_make_the_node_a_confused_deputy_serves_nothing(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    """D (no recipient of A's share) signs its own manifest listing A's blocks, naming A and a colluding
    org E as recipients: A accepts it (it is a recipient), but serves E nothing under it, since A neither
    signed it nor fetched those blocks under it; its availability answer says nothing either."""
    a, _, _, d = nodes(mesh)
    e = mesh.add("e", "RQW", 54)
    await introduced(mesh)
    instances = a.store.instances(study)
    forged: Signed[Manifest] = build_manifest(
        instances, sender_org="RYJ", sender_peer=d.peer_id, recipients=["RGT", "RQW"], priority=Priority.ROUTINE,
        purpose=Purpose.CARE, created_at=NOW, expires_at=NOW + 3600).sign(d.key)
    assert await announce(d, a, forged.encode()) is None
    cids = forged.document.block_order()[:4]
    assert await blocks(e, a, forged.cid, cids) == [BlockAbsent(cid) for cid in cids]
    have = decode_have_reply(await a.wire.answer(HAVE_PROTOCOL, e.peer_id, encode_request(HaveRequest(forged.cid))))
    assert not isinstance(have, Refused) and set(have.bitmap) == {0}


# -- malformed and unauthenticated frames -----------------------------------------------------------
async def test_malformed_request_frames_get_a_decode_refusal_and_change_nothing(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    a, b, _, _ = nodes(mesh)
    await introduced(mesh)
    signed = await mesh.share(a, study, ["RAJ", "RJ1"])
    audit_before = len(b.store.audit_entries())
    good = encode_request(Announce(signed.encode(), a.ctx.certificate.encode()))
    for payload in (b"", b"\xff" * 16, good[: len(good) // 2], good[:-1], b"\xa1\x61x\x9f\xff"):
        for protocol_id in (ANNOUNCE_PROTOCOL, HAVE_PROTOCOL, RECALL_PROTOCOL):
            reply = decode_ack_reply(await b.wire.answer(protocol_id, a.peer_id, payload)) \
                if protocol_id != HAVE_PROTOCOL else decode_have_reply(await b.wire.answer(protocol_id, a.peer_id, payload))
            assert isinstance(reply, Refused) and reply.code == DecodeError.code, (protocol_id, payload[:8])
    assert b.store.manifests() == [] and not b.fetcher.active
    assert len(b.store.audit_entries()) == audit_before
    # a block request that does not decode, is cut short or names no block: the handler raises (its stream
    # is reset at the boundary) before writing anything
    request = encode_request(BlockRequest(signed.cid, signed.document.block_order()[:16]))
    written: list[BlockFrame] = []

    async def write(frame: BlockFrame) -> None:
        written.append(frame)

    for payload in (b"\x00", request.replace(b"\x90", b"\x80"), request[:-3]):
        with pytest.raises(DecodeError):
            await a.wire.answer_blocks(b.peer_id, payload, write)
    assert written == [] and a.ctx.served == {}


async def test_a_peer_without_a_verified_certificate_is_refused_unread(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    a, b, _, _ = nodes(mesh)
    signed = await mesh.share(a, study, ["RAJ", "RJ1"])
    for protocol_id, payload in ((ANNOUNCE_PROTOCOL, encode_request(Announce(signed.encode(), a.ctx.certificate.encode()))),
                                 (HAVE_PROTOCOL, encode_request(HaveRequest(signed.cid)))):
        assert await b.wire.answer(protocol_id, a.peer_id, payload) == encode_response(UNKNOWN_PEER)
    assert b.store.manifest(signed.cid) is None
    assert alerts(b, "unknown-peer-refused") == [a.peer_id]  # once a minute per peer, not per request


async def test_a_hello_with_a_garbled_or_borrowed_certificate_is_refused_and_audited(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    a, b, c, _ = nodes(mesh)
    for certificate, error in ((b"\x00garbage", ForgedCertificateError), (c.ctx.certificate.encode(), CertificateMismatchError)):
        reply = decode_hello_reply(await b.wire.answer(HELLO_PROTOCOL, a.peer_id, encode_request(Hello(certificate))))
        assert isinstance(reply, Refused) and reply.code == error.code
    reply = decode_hello_reply(await b.wire.answer(HELLO_PROTOCOL, a.peer_id, b"\xff\xff"))
    assert isinstance(reply, Refused) and reply.code == ForgedCertificateError.code
    assert b.ctx.peers.certificate_of(a.peer_id) is None
    assert alerts(b, "hello-refused") == [a.peer_id]  # the first; the repeats within a minute are counted in it
