"""What a running node refuses, seen from the other end of a real libp2p connection.

The test process runs its own trio + py-libp2p host with the key and
certificate of a node home that was initialised and certified but never
started (org RXH, and RXY for a second org), dials a running node and speaks
the exchange protocols to it directly with documents it builds and signs
itself: every refusal comes back with its error code, nothing refused shows
up in the node's inbox, and every refusal is in the node's audit log.
The last test revokes a third running node (RAJ) and watches the mesh shut it out.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from libp2p.abc import INetStream
from libp2p.peer.id import ID

from meshnode.home import NodeHome
from common.p2p.dial import is_connected
from common.p2p.streams import (
    read_frame,
    serve_requests,
    serve_streams,
)
from protocol.certificate import Certificate
from protocol.cid import CID
from protocol.document import Signed
from protocol.errors import (
    CertificateRevokedError,
    DocumentExpiredError,
    LimitError,
    MeshError,
    RevisionRollbackError,
    UnauthorisedError,
    WrongOrganisationError,
)
from protocol.exchange_messages import (
    BLOCKS_PROTOCOL,
    RECEIPT_PROTOCOL,
    FRAME_LIMITS,
    UNAUTHORISED,
    Ack,
    BlockRequest,
    Hello,
    Refused,
    decode_block_frame,
    decode_block_request,
    encode_block_data_frame,
    encode_response,
)
from protocol.manifest import Manifest, Purpose
from tests.adversary.hostile import (
    EXCHANGE_TIMEOUT,
    SECURITY_ALERT,
    client_for,
    in_thread,
    random_cid,
    study_uid,
    wait_for,
)
from tests.protocol.factories import make_instance
from meshnode.demo.identity import Node
from meshnode.demo.mesh import MeshDemo
from meshnode.demo.workspace import Workspace

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


ORGS = [("a", "RGT", "Cambridge University Hospitals NHS FT"),
        ("b", "RJ1", "Guy's and St Thomas' NHS FT")]


def refusals(demo: MeshDemo, node: Node, actor: str) -> list[dict[str, Any]]:
    return [e for e in demo.audit(node)
            if e["event_code"] == SECURITY_ALERT and e["action"] == "announce-refused" and e["actor"] == actor]


def inbox_ids(demo: MeshDemo, node: Node) -> set[str]:
    return {r["manifest_id"] for r in demo.cli(node, "inbox")}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshDemo]:
    demo = MeshDemo(Workspace(tmp_path_factory.mktemp("refusals")))
    try:
        demo.setup([*ORGS, ("c", "RAJ", "Mid and South Essex NHS FT")], config={"trust.roster_refresh_seconds": 2})
        demo.identity.add_node("x", "RXH", "Royal Example Hospital")  # certified, never started
        demo.identity.add_node("y", "RXY", "Example Imaging Ltd")  # certified, never started
        yield demo
    finally:
        demo.close()


async def test_announce_refusals_carry_their_error_codes(mesh: MeshDemo) -> None:
    b, x, y = mesh.node("b"), mesh.node("x"), mesh.node("y")
    y_key, y_cert = NodeHome(y.home).signing_key(), NodeHome(y.home).certificate()
    async with client_for(x) as cx:
        peer = await cx.connect(b)
        before_hello = cx.manifest(recipients=("RJ1",))
        refused: list[tuple[Signed[Manifest], str]] = []
        accepted: list[Signed[Manifest]] = []

        async def refuse(signed: Signed[Manifest], error: type[MeshError],
                         certificate: Signed[Certificate] | None = None) -> None:
            reply = await cx.announce(peer, signed, certificate)
            assert isinstance(reply, Refused) and reply.code == error.code, (error.__name__, reply)
            refused.append((signed, error.name))

        async def accept(signed: Signed[Manifest]) -> None:
            assert await cx.announce(peer, signed) == Ack()
            accepted.append(signed)

        # no request is served before hello, however valid
        await refuse(before_hello, UnauthorisedError)
        reply = await cx.hello(peer)
        assert isinstance(reply, Hello) and reply.certificate == NodeHome(b.home).certificate().encode()
        await accept(before_hello)  # the very same manifest, now that the peer is known

        # replayed older revision: revision 2 accepted, then revision 1 (and another revision 2) refused
        study = study_uid()
        await accept(cx.manifest(recipients=("RJ1",), study_uid=study, revision=2))
        await refuse(cx.manifest(recipients=("RJ1",), study_uid=study, revision=1), RevisionRollbackError)
        await refuse(cx.manifest(recipients=("RJ1",), study_uid=study, revision=2, purpose=Purpose.RESEARCH),
                     RevisionRollbackError)

        # wrong organisation, every way round
        await refuse(cx.manifest(recipients=("RJ1",), sender_org="RGT"), WrongOrganisationError)  # X signs for RGT
        await refuse(cx.manifest(recipients=("RJ1",), signer=y_key), WrongOrganisationError, y_cert)  # Y signs for RXH
        await refuse(cx.manifest(recipients=("RJ1",), signer=y_key, sender_org="RXY"), WrongOrganisationError,
                     y_cert)  # Y's own manifest, announced by X
        await refuse(cx.manifest(recipients=("RAJ", "RGT")), WrongOrganisationError)  # RJ1 is not a recipient

        # expired
        now = int(time.time())
        await refuse(cx.manifest(recipients=("RJ1",), created_at=now - 3 * 3600, expires_at=now - 3600),
                     DocumentExpiredError)

    # every refusal is in B's audit log, in order, as a security alert naming X and the reason
    logged = await in_thread(refusals, mesh, b, x.peer_id)
    # the first, before hello, was refused without being read (limits before trust): audited as such
    assert [e["detail"].split(":")[0] for e in logged] == [name for _, name in refused[1:]]
    unread = [e for e in await in_thread(mesh.audit, b)
              if e["event_code"] == SECURITY_ALERT and e["action"] == "unknown-peer-refused"]
    assert x.peer_id in {e["actor"] for e in unread}
    assert all(e["outcome"] != 0 for e in logged)
    # B's inbox lists what it accepted and nothing it refused (a refused manifest is never recorded, so
    # one look at the end covers every refusal; the first one was accepted after hello)
    inbox = await in_thread(inbox_ids, mesh, b)
    assert {str(s.cid) for s in accepted} <= inbox
    assert not inbox & {str(s.cid) for s, _ in refused[1:]}


async def test_non_recipient_learns_nothing_about_blocks(mesh: MeshDemo) -> None:
    a, b, x = mesh.node("a"), mesh.node("b"), mesh.node("x")
    uid, _ = await in_thread(mesh.generate_and_ingest, a, 12, 11, 128, 128)
    manifest = await in_thread(mesh.share, a, uid, ["RJ1"], "routine")
    await wait_for(lambda: mesh.delivered(a, manifest, ["RJ1"]), 30, "the study to reach RJ1")
    shown = await in_thread(mesh.cli, a, "show", uid)
    real = [CID.parse(c) for i in shown["instances_detail"] for c in i["blocks"]]
    manifest_id, made_up = CID.parse(manifest), random_cid()
    refusal = encode_response(UNAUTHORISED)

    async with client_for(x) as cx:
        peer = await cx.connect(a)
        assert isinstance(await cx.hello(peer), Hello)  # a valid certificate: X is known, just not a recipient
        asks = [BlockRequest(manifest_id, tuple(real[:8])),  # the real manifest, its real blocks
                BlockRequest(manifest_id, (random_cid(),)),  # the real manifest, a block nobody has
                BlockRequest(made_up, tuple(real[:8]))]  # real blocks under a manifest that does not exist
        for ask in asks:
            frames = await cx.blocks(peer, ask)
            assert frames == [refusal], ask  # exactly one frame, byte for byte the same whatever was asked
            assert decode_block_frame(frames[0]) == UNAUTHORISED
        assert await cx.have(peer, manifest_id) == UNAUTHORISED
        assert await cx.have(peer, made_up) == UNAUTHORISED

    alerts = [e for e in await in_thread(mesh.audit, a)
              if e["event_code"] == SECURITY_ALERT and e["actor"] == x.peer_id
              and e["manifest_id"] in (manifest, str(made_up))]
    # a request about the real manifest is an alert (X is not a recipient); one about a manifest A has
    # not received is not (it could be merely early: protocol.access), though it is refused the same way
    assert [e["manifest_id"] for e in alerts] == [manifest] * 3
    assert {e["action"] for e in alerts} == {"unauthorised-request"}
    assert {e["actor_org"] for e in alerts} == {"RXH"}
    # and the recipient's own copy is untouched: B still has the study A sent it
    assert (await in_thread(mesh.inbox_entry, b, manifest) or {}).get("state") == "receipted"


async def test_blocks_that_match_their_cids_but_not_the_signed_digest_fail_the_study(mesh: MeshDemo) -> None:
    """X announces a study and serves its blocks itself; every block matches its CID, but one instance does
    not reassemble to the digest X signed. B refuses the study: state failed, a 110113 alert, no receipt."""
    b, x = mesh.node("b"), mesh.node("x")
    good, bad = secrets.token_bytes(300_000), secrets.token_bytes(200_000)
    blocks = {CID.of(good): good, CID.of(bad): bad}
    served: list[CID] = []
    receipts: list[bytes] = []

    async def serve_blocks(peer: ID, stream: INetStream) -> None:
        limits = FRAME_LIMITS[BLOCKS_PROTOCOL]
        payload = await read_frame(stream, limits.request)
        assert payload is not None
        for cid in decode_block_request(payload).cids:
            served.append(cid)
            await stream.write(encode_block_data_frame(cid, blocks[cid], limits.response))

    async def take_receipt(peer: ID, payload: bytes) -> bytes:
        receipts.append(payload)
        return encode_response(Ack())

    async with client_for(x) as cx:
        serve_streams(cx.host, BLOCKS_PROTOCOL, serve_blocks, timeout=EXCHANGE_TIMEOUT)
        serve_requests(cx.host, RECEIPT_PROTOCOL, take_receipt, max_request=FRAME_LIMITS[RECEIPT_PROTOCOL].request,
                       timeout=EXCHANGE_TIMEOUT)
        peer = await cx.connect(b)
        assert isinstance(await cx.hello(peer), Hello)
        honest = make_instance(1, blocks=1)
        honest = dataclasses.replace(honest, size=len(good), digest=hashlib.sha256(good).digest(),
                                     blocks=(CID.of(good),))
        lying = dataclasses.replace(make_instance(2, blocks=1), size=len(bad),
                                    digest=hashlib.sha256(b"not these bytes").digest(), blocks=(CID.of(bad),))
        signed = cx.manifest(recipients=("RJ1",), instances=(honest, lying))
        assert await cx.announce(peer, signed) == Ack()

        def failed() -> bool:
            return any(r["manifest_id"] == str(signed.cid) and r["state"] == "failed" for r in mesh.cli(b, "inbox"))

        await wait_for(failed, 30, "B to refuse the study")
        await trio.sleep(1.0)  # not synchronisation: a receipt, were one sent, would follow at once; none may
    assert sorted(set(served)) == sorted(blocks)  # B fetched both blocks from X
    assert receipts == []
    entries = [e for e in await in_thread(mesh.audit, b) if e["manifest_id"] == str(signed.cid)]
    alerts = [e for e in entries if e["event_code"] == SECURITY_ALERT]
    assert [e["action"] for e in alerts] == ["verification-failed"]
    assert "does not match its manifest" in alerts[0]["detail"]
    assert "received" not in [e["action"] for e in entries]  # no instance of it was recorded as received


def test_revoked_node_is_shut_out(mesh: MeshDemo) -> None:
    """C (RAJ) is revoked; the other tests never talk to it, so they do not care whether this runs first."""
    a, c = mesh.node("a"), mesh.node("c")
    first, _ = mesh.generate_and_ingest(a, 10, seed=21, rows=128, columns=128)
    delivered = mesh.share(a, first, ["RAJ"])
    mesh.wait_for(lambda: mesh.delivered(a, delivered, ["RAJ"]), 30, "the first study to reach RAJ")
    assert c.peer_id in {p["peer_id"] for p in mesh.cli(a, "peers")}

    assert mesh.identity.revoke(c)["newly_revoked"] is True
    assert mesh.identity.publish_roster()["revoked"] == [c.serial]
    mesh.wait_for(lambda: c.peer_id not in {p["peer_id"] for p in mesh.cli(a, "peers")}, 10,
                  "A to drop the revoked peer")
    # the alert is written once the connection is closed, just after the peer is dropped
    alerts = mesh.wait_for(lambda: [e for e in mesh.audit(a)
                                    if e["event_code"] == SECURITY_ALERT and e["action"] == "peer-revoked"],
                           10, "A's peer-revoked security alert")
    assert [e["actor"] for e in alerts] == [c.peer_id]

    # C cannot announce: its share (of the study it holds) to A stays undelivered, the revocation as the reason
    from_c = mesh.share(c, first, ["RGT"])
    # and A cannot get a study to C any more (a new revision of the same study)
    to_c = mesh.share(a, first, ["RAJ"])

    def outbox_row(node: Node, manifest: str) -> dict[str, Any]:
        recipients: dict[str, Any] = next(r for r in mesh.cli(node, "outbox")
                                          if r["manifest_id"] == manifest)["recipients"]
        return recipients

    def failed_with_revocation(node: Node, manifest: str, org: str) -> dict[str, Any] | None:
        row = outbox_row(node, manifest)[org]
        return row if row["attempts"] >= 1 and "revoked" in row["last_error"] else None

    row_c = mesh.wait_for(lambda: failed_with_revocation(c, from_c, "RGT"), 15, "C's announcement to be refused")
    assert row_c["state"] != "delivered" and not row_c["receipt_verified"]
    assert "certificate-revoked" in row_c["last_error"]
    row_a = mesh.wait_for(lambda: failed_with_revocation(a, to_c, "RAJ"), 15, "A's delivery to C to fail")
    assert row_a["state"] in ("pending", "attempting") and not row_a["receipt_verified"]
    assert mesh.inbox_entry(c, to_c) is None

    # nor can C fetch, even the blocks of the study it legitimately received before: stop C and
    # play it from this process with its own key and certificate
    cids = [CID.parse(ci) for i in mesh.cli(a, "show", first)["instances_detail"] for ci in i["blocks"]]
    assert mesh.stop(c) == 0
    trio.run(_revoked_cannot_fetch, a, c, CID.parse(delivered), cids)
    assert mesh.inbox_entry(a, from_c) is None  # A never listed C's manifest, after some seconds of retries


async def _revoked_cannot_fetch(a: Node, revoked: Node, manifest_id: CID, cids: list[CID]) -> None:
    async with client_for(revoked) as client:
        peer = await client.connect(a)
        reply = await client.hello(peer)
        assert isinstance(reply, Refused) and reply.code == CertificateRevokedError.code
        frames = await client.blocks(peer, BlockRequest(manifest_id, tuple(cids[:8])))
        assert frames == [encode_response(UNAUTHORISED)]
        assert await client.have(peer, manifest_id) == UNAUTHORISED


async def test_flooding_peer_is_cut_off_without_hurting_others(mesh: MeshDemo) -> None:
    a, b = mesh.node("a"), mesh.node("b")
    # X floods B with questions about a real share it is not a recipient of (each one a refusal B audits)
    study, _ = await in_thread(mesh.generate_and_ingest, a, 2, 8, 64, 64)
    not_for_x = CID.parse(await in_thread(mesh.share, a, study, ["RJ1"]))
    await wait_for(lambda: mesh.inbox_entry(b, str(not_for_x)), 30, "B to receive the share")
    async with client_for(mesh.node("x")) as x:
        peer = await x.connect(b)
        assert isinstance(await x.hello(peer), Hello)
        outcomes: dict[str, int] = {}

        async def one() -> None:
            try:
                reply = await x.have(peer, not_for_x)
                key = f"refused-{reply.code}" if isinstance(reply, Refused) else "answered"
            except MeshError as exc:
                key = exc.name
            outcomes[key] = outcomes.get(key, 0) + 1

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for _ in range(1500):  # far above the 500 requests/s and 64 streams allowed per peer
                    nursery.start_soon(one)
        assert outcomes.get(f"refused-{LimitError.code}", 0) > 0, outcomes
        assert outcomes.get(f"refused-{UnauthorisedError.code}", 0) > 0, outcomes  # the admitted ones
        # after repeated violations B closes the connection
        await wait_for(lambda: not is_connected(x.host, peer), 30, "B to cut X off")
    # meanwhile and afterwards B serves everybody else
    study, files = await in_thread(mesh.generate_and_ingest, a, 4, 9, 128, 128)
    manifest = await in_thread(mesh.share, a, study, ["RJ1"])
    await wait_for(lambda: mesh.delivered(a, manifest, ["RJ1"]), 60, "a share to B after the flood")
