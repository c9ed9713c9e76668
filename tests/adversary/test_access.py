"""Authorisation by provenance, attacked over real libp2p against real node processes (issue 11,
findings 1, 2, 3, 11 and 12).

Org RXH (certified, never a recipient of the study) plays the attacker from this process; org RXY is
its accomplice. A (RGT) ingested a study and shared it with B (RJ1). The attacker writes a manifest of
its own that lists the study's block IDs, names A (or B) and its accomplice as recipients, and announces
it: the node accepts the announcement (it is a recipient), but neither the author nor its accomplice
gets a single block, and `have` says nothing about what the node stores.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import pytest

from protocol.cid import CID
from protocol.errors import NotFoundError
from protocol.exchange_messages import (
    UNAUTHORISED,
    Ack,
    BlockAbsent,
    BlockData,
    BlockRequest,
    Hello,
    HaveReply,
    decode_block_frame,
    encode_response,
    unpack_bitmap,
)
from protocol.manifest import InstanceEntry
from tests.adversary.hostile import (
    INSTANCES_TRANSFERRED,
    SECURITY_ALERT,
    Client,
    client_for,
    in_thread,
    random_cid,
    wait_for,
)
from meshnode.demo.identity import Node
from meshnode.demo.mesh import MeshDemo
from meshnode.demo.workspace import Workspace

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ORGS = [("a", "RGT", "Cambridge University Hospitals NHS FT"),
        ("b", "RJ1", "Guy's and St Thomas' NHS FT"),
        ("c", "RAJ", "Mid and South Essex NHS FT")]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshDemo]:
    demo = MeshDemo(Workspace(tmp_path_factory.mktemp("access")))
    try:
        demo.setup(ORGS)
        demo.identity.add_node("x", "RXH", "Royal Example Hospital")  # the attacker: certified, never started
        demo.identity.add_node("y", "RXY", "Example Imaging Ltd")  # its accomplice
        yield demo
    finally:
        demo.close()


@pytest.fixture(scope="module")
def shared(mesh: MeshDemo) -> tuple[str, str, list[CID]]:
    """A study ingested at A and delivered to B: (study UID, manifest ID, its blocks)."""
    a = mesh.node("a")
    uid, _ = mesh.generate_and_ingest(a, 10, 21, 128, 128)
    manifest = mesh.share(a, uid, ["RJ1"], "routine")
    mesh.wait_for(lambda: mesh.delivered(a, manifest, ["RJ1"]), 60, "the study to reach RJ1")
    cids = [CID.parse(c) for i in mesh.cli(a, "show", uid)["instances_detail"] for c in i["blocks"]]
    return uid, manifest, cids


def stolen_manifest(attacker: Client, cids: list[CID], recipients: tuple[str, ...]) -> Any:
    """The attacker's own manifest: one bogus instance entry that lists someone else's block IDs."""
    entry = InstanceEntry(sop_class_uid="1.2.840.10008.5.1.4.1.1.2", sop_instance_uid="1.2.3.4.5.6.7.1",
                          series_uid="1.2.3.4.5.6.7", transfer_syntax="1.2.840.10008.1.2.1",
                          size=len(cids), digest=hashlib.sha256(b"x").digest(), blocks=tuple(cids))
    return attacker.manifest(recipients=recipients, instances=(entry,))


def alerts(mesh: MeshDemo, node: Node, actor: str) -> list[dict[str, Any]]:
    return [e for e in mesh.audit(node) if e["event_code"] == SECURITY_ALERT and e["actor"] == actor]


async def steal(mesh: MeshDemo, victim: Node, victim_org: str, cids: list[CID]) -> None:
    """Both ways of the confused deputy against one node that holds the study."""
    probe = cids[:8] + [random_cid() for _ in range(8)]  # 8 blocks the node holds, 8 nobody has
    async with client_for(mesh.node("x")) as x, client_for(mesh.node("y")) as y:
        x_peer, y_peer = await x.connect(victim), await y.connect(victim)
        assert isinstance(await x.hello(x_peer), Hello) and isinstance(await y.hello(y_peer), Hello)
        forged = stolen_manifest(x, probe, (victim_org, "RXY"))
        assert await x.announce(x_peer, forged) == Ack()  # the victim is a recipient: it accepts the manifest

        # the author of the manifest asks under it: refused outright (a sender never fetches its own share)
        for ask in (BlockRequest(forged.cid, tuple(probe[:16])), BlockRequest(forged.cid, tuple(cids[8:24]))):
            assert await x.blocks(x_peer, ask) == [encode_response(UNAUTHORISED)]
        assert await x.have(x_peer, forged.cid) == UNAUTHORISED

        # the accomplice is a recipient: its request is allowed, and every block is "absent"
        frames = [decode_block_frame(f) for f in await y.blocks(y_peer, BlockRequest(forged.cid, tuple(probe)))]
        assert [f.cid for f in frames if isinstance(f, BlockAbsent)] == probe
        assert not any(isinstance(f, BlockData) for f in frames)
        # ... and `have` reveals nothing: not one of the 8 held blocks shows
        reply = await y.have(y_peer, forged.cid)
        assert isinstance(reply, HaveReply) and not any(unpack_bitmap(reply.bitmap, len(probe)))

    # the author's attempts are security alerts; the accomplice's allowed-but-empty requests are not
    # (it asked under a manifest naming it), and nothing was served to anyone
    x_alerts = await in_thread(alerts, mesh, victim, x.peer_id)
    assert len([e for e in x_alerts if e["action"] == "unauthorised-request"]) == 3
    assert all("not-entitled" in e["detail"] for e in x_alerts if e["action"] == "unauthorised-request")
    served = [e for e in await in_thread(mesh.audit, victim)
              if e["action"] == "blocks-served" and e["actor"] in (x.peer_id, y.peer_id)]
    assert served == []


async def test_a_manifest_of_ones_own_takes_nothing_from_the_sender(
        mesh: MeshDemo, shared: tuple[str, str, list[CID]]) -> None:
    await steal(mesh, mesh.node("a"), "RGT", shared[2])


async def test_a_manifest_of_ones_own_takes_nothing_from_a_recipient(
        mesh: MeshDemo, shared: tuple[str, str, list[CID]]) -> None:
    await steal(mesh, mesh.node("b"), "RJ1", shared[2])


async def test_every_block_served_is_audited_and_counted(mesh: MeshDemo, shared: tuple[str, str, list[CID]]) -> None:
    a, b = mesh.node("a"), mesh.node("b")
    _, manifest, cids = shared
    distinct = len(set(cids))
    served = [e for e in await in_thread(mesh.audit, a)
              if e["action"] == "blocks-served" and e["manifest_id"] == manifest]
    assert served and {e["event_code"] for e in served} == {INSTANCES_TRANSFERRED}
    assert {e["actor_org"] for e in served} == {"RJ1"}
    blocks_audited = sum(int(e["detail"].split(" block")[0]) for e in served)
    # the outbox counts the same blocks, per recipient, and the status adds them up per org
    outbox = next(r for r in await in_thread(mesh.cli, a, "outbox") if r["manifest_id"] == manifest)
    assert outbox["recipients"]["RJ1"]["served"]["blocks"] == blocks_audited
    status = await in_thread(mesh.cli, a, "status")
    assert status["served"]["RJ1"]["blocks"] >= blocks_audited
    # B fetched every block once, from A, the only holder: what B counts as served by A is what A served
    entry = await in_thread(mesh.inbox_entry, b, manifest)
    assert entry is not None and sum(entry["served_by"].values()) == distinct == blocks_audited


async def test_an_early_request_raises_no_alert_and_a_relayed_manifest_lets_the_node_answer(mesh: MeshDemo) -> None:
    """Y, a recipient, asks A about a manifest the sender X has not announced to A yet: A refuses (it
    cannot tell early from hostile) but raises no alert. Y relays the sender's signed manifest; A checks
    it (signature, both orgs recipients) and accepts it, and then answers Y. A relay by an org that is not
    a recipient is refused as hostile."""
    a = mesh.node("a")
    async with client_for(mesh.node("x")) as x, client_for(mesh.node("y")) as y:
        peer = await y.connect(a)
        assert isinstance(await y.hello(peer), Hello)
        early = x.manifest(recipients=("RGT", "RXY"))
        assert await y.have(peer, early.cid) == UNAUTHORISED  # not received yet
        assert await y.announce(peer, early, x.certificate) == Ack()  # relayed with the sender's certificate
        reply = await y.have(peer, early.cid)
        assert isinstance(reply, HaveReply) and not any(unpack_bitmap(reply.bitmap, 5))  # nothing held yet

        not_for_y = x.manifest(recipients=("RGT",))
        refused = await y.announce(peer, not_for_y, x.certificate)
        assert not isinstance(refused, Ack)

    audit = await in_thread(mesh.audit, a)
    assert [e for e in audit if e["event_code"] == SECURITY_ALERT and e["manifest_id"] == str(early.cid)] == []
    received = [e for e in audit if e["action"] == "manifest-received" and e["manifest_id"] == str(early.cid)]
    assert len(received) == 1 and "relayed by RXY" in received[0]["detail"]
    assert any(e["action"] == "announce-refused" and e["actor"] == y.peer_id for e in audit)


async def test_a_manifest_recalled_before_it_arrived_is_refused_when_relayed_later(mesh: MeshDemo) -> None:
    """The sender's recall reaches A before its announcement did (A was down, say); a fellow recipient
    still fetching relays the manifest afterwards: A refuses it, without an alert (a race, not an attack),
    and never lists it."""
    a = mesh.node("a")
    async with client_for(mesh.node("x")) as x, client_for(mesh.node("y")) as y:
        x_peer, y_peer = await x.connect(a), await y.connect(a)
        assert isinstance(await x.hello(x_peer), Hello) and isinstance(await y.hello(y_peer), Hello)
        withdrawn = x.manifest(recipients=("RGT", "RXY"))
        assert await x.recall(x_peer, withdrawn.cid, withdrawn.document.study_uid) == Ack()
        refused = await y.announce(y_peer, withdrawn, x.certificate)
        assert not isinstance(refused, Ack) and refused.code == NotFoundError.code
        # a recall signed by another org does not bury somebody else's manifest
        other = x.manifest(recipients=("RGT", "RXY"))
        assert await y.recall(y_peer, other.cid, other.document.study_uid) == Ack()
        assert await x.announce(x_peer, other) == Ack()
    assert await in_thread(mesh.inbox_entry, a, str(withdrawn.cid)) is None
    alerts = [e for e in await in_thread(mesh.audit, a) if e["event_code"] == SECURITY_ALERT
              and (e["actor"] == y.peer_id and e["detail"].startswith("not-found") or e["manifest_id"] in
                   (str(withdrawn.cid), str(other.cid)))]
    assert alerts == []


async def test_fellow_recipients_racing_the_announcement_raise_no_alerts(
        mesh: MeshDemo, shared: tuple[str, str, list[CID]]) -> None:
    """A share to B and C at once: each asks the other what it holds, often before the other has the
    announcement. Both complete, and no node raises a security alert about it."""
    a, b, c = mesh.node("a"), mesh.node("b"), mesh.node("c")
    uid, _ = await in_thread(mesh.generate_and_ingest, a, 24, 22, 256, 256)
    manifest = await in_thread(mesh.share, a, uid, ["RAJ", "RJ1"], "urgent")
    await wait_for(lambda: mesh.delivered(a, manifest, ["RAJ", "RJ1"]), 90, "B and C to receive the share")
    for node in (a, b, c):
        noise = [e for e in await in_thread(mesh.audit, node)
                 if e["event_code"] == SECURITY_ALERT and e["manifest_id"] == manifest]
        assert noise == [], (node.name, noise)
    # and what each was served adds up to the study's blocks, whoever served them
    for node in (b, c):
        entry = await in_thread(mesh.inbox_entry, node, manifest)
        assert entry is not None and sum(entry["served_by"].values()) == entry["blocks_total"]
