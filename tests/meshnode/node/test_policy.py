"""meshnode.node.policy in process, on a real SQLite node store: the facts it gathers and the refusals it
audits (the same decisions the adversarial suite makes against real processes, in `make test`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshnode.config import NodeConfig
from meshnode.node.context import NodeContext
from meshnode.node.peers import PeerRegistry
from meshnode.node.policy import authorise_manifest_access, servable_in_order
from meshnode.storage.audit import EventCode
from meshnode.storage.dbthread import DatabaseThread
from meshnode.storage.node_storage import NodeStorage
from meshnode.storage.records import ManifestRow
from protocol.cid import CID
from protocol.errors import UnauthorisedError
from protocol.lifecycle import ManifestState
from protocol.keys import SigningKey
from tests.protocol.factories import NOW, STUDY_UID, guard_with_roster, key, make_manifest, sign_certificate

ME, SENDER, FELLOW, STRANGER = key(40), key(41), key(42), key(43)
A, B, C, D = (CID.of(bytes([i]) * 8) for i in range(4))


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[NodeContext]:
    storage = NodeStorage.open(tmp_path)
    peers = PeerRegistry(guard_with_roster())
    for n, (k, org) in enumerate([(SENDER, "RGT"), (FELLOW, "RAJ"), (STRANGER, "RXH")], start=2):
        peers.learn(k.peer_id, sign_certificate(k, org=org, serial_no=n), NOW)
    context = NodeContext(home=None, config=NodeConfig(org="RJ1"), key=ME,  # type: ignore[arg-type]
                          certificate=sign_certificate(ME, org="RJ1", serial_no=1), storage=storage,
                          db=DatabaseThread(storage.metadata), peers=peers,
                          directory=None, clock=lambda: float(NOW))  # type: ignore[arg-type]
    yield context
    storage.close()


def received(ctx: NodeContext, name: bytes, *, revision: int = 1, state: ManifestState = ManifestState.FETCHING,
             recipients: tuple[str, ...] = ("RAJ", "RJ1"), sender: str = "RGT", blocks: tuple[CID, ...] = (A, B, C),
             direction: str = "received") -> CID:
    mid = CID.of(name)
    ctx.storage.metadata.save_manifest(ManifestRow(mid, STUDY_UID, direction, sender, revision, state, NOW - 60,
                                                   NOW + 3600, b"raw", recipients), blocks)
    return mid


def alerts(ctx: NodeContext) -> list[Any]:
    return [e.event for e in ctx.storage.metadata.audit_entries() if e.event.code == EventCode.SECURITY_ALERT]


async def test_a_fellow_recipient_gets_only_what_this_node_fetched_under_the_manifest(ctx: NodeContext) -> None:
    mid = received(ctx, b"m")
    # A fetched under m; B held from elsewhere (another share, local ingest); C absent
    ctx.storage.metadata.record_blocks([(A, 1), (B, 1)], NOW * 1000, [(mid, A, SENDER.peer_id)])
    access = await authorise_manifest_access(ctx, FELLOW.peer_id, mid, (A, B, C))
    assert access.servable == {A}
    assert await servable_in_order(ctx, access, (A, B, C)) == [True, False, False]
    assert alerts(ctx) == []


async def test_the_sender_and_strangers_are_refused_with_an_alert(ctx: NodeContext) -> None:
    mid = received(ctx, b"m")
    ctx.storage.metadata.record_blocks([(A, 1)], NOW * 1000, [(mid, A, SENDER.peer_id)])
    for peer in (SENDER, STRANGER):
        with pytest.raises(UnauthorisedError, match="request refused"):
            await authorise_manifest_access(ctx, peer.peer_id, mid, (A,))
    with pytest.raises(UnauthorisedError, match="request refused"):  # a block the manifest does not list
        await authorise_manifest_access(ctx, FELLOW.peer_id, mid, (A, D))
    with pytest.raises(UnauthorisedError, match="request refused"):  # no certificate presented
        await authorise_manifest_access(ctx, key(99).peer_id, mid, (A,))
    details = [e.detail.split(";")[0] for e in alerts(ctx)]
    assert details == ["not-entitled", "not-entitled", "unlisted", "no valid certificate"]


async def test_early_and_dead_manifests_are_refused_without_an_alert(ctx: NodeContext) -> None:
    failed = received(ctx, b"failed", state=ManifestState.FAILED)
    recalled = received(ctx, b"recalled", state=ManifestState.RECALLED)
    old = received(ctx, b"rev1", revision=1)
    received(ctx, b"rev2", revision=2, recipients=("RAJ", "RJ1", "RXH"))  # names every org rev1 names
    for mid in (CID.of(b"never received"), failed, recalled, old):
        with pytest.raises(UnauthorisedError, match="request refused"):
            await authorise_manifest_access(ctx, FELLOW.peer_id, mid, (A,))
    assert alerts(ctx) == []


async def test_a_later_share_to_other_orgs_does_not_supersede(ctx: NodeContext) -> None:
    first = received(ctx, b"rev1", revision=1, recipients=("RAJ", "RJ1"))
    received(ctx, b"rev2", revision=2, recipients=("RJ1", "RXH"))
    ctx.storage.metadata.record_blocks([(A, 1)], NOW * 1000, [(first, A, SENDER.peer_id)])
    access = await authorise_manifest_access(ctx, FELLOW.peer_id, first, (A,))
    assert access.servable == {A}


def sent(ctx: NodeContext, signer: SigningKey) -> CID:
    """A real manifest of this node's org (RJ1) to RAJ, signed by `signer`, stored as sent, listing A, B, C."""
    signed = make_manifest(signer, sender_org="RJ1", recipients=("RAJ",)).sign(signer)
    ctx.storage.metadata.save_manifest(ManifestRow(signed.cid, STUDY_UID, "sent", "RJ1", 1, ManifestState.SENT,
                                                   NOW - 60, NOW + 3600, signed.encode(), ("RAJ",)), (A, B, C))
    return signed.cid


async def test_this_nodes_own_share_serves_what_it_holds(ctx: NodeContext) -> None:
    mine = sent(ctx, ME)
    ctx.storage.metadata.record_blocks([(A, 1), (B, 1)], NOW * 1000)
    access = await authorise_manifest_access(ctx, FELLOW.peer_id, mine, (A, B, C))
    assert access.servable == {A, B}  # C is not stored: absent


async def test_a_siblings_share_serves_only_what_this_node_copied_under_it(ctx: NodeContext) -> None:
    """Review M3: another node of this org signed it; A was copied under it, B is on disk from elsewhere."""
    theirs = sent(ctx, key(44))
    ctx.storage.metadata.record_blocks([(A, 1), (B, 1)], NOW * 1000, [(theirs, A, key(44).peer_id)])
    access = await authorise_manifest_access(ctx, FELLOW.peer_id, theirs, (A, B, C))
    assert access.servable == {A}
    assert await servable_in_order(ctx, access, (A, B, C)) == [True, False, False]


async def test_what_is_served_is_counted_at_once_and_written_in_one_batch(ctx: NodeContext) -> None:
    from meshnode.node.served import ServedLedger

    mid = received(ctx, b"m")
    ledger = ServedLedger(ctx)
    ledger.add(FELLOW.peer_id, "RAJ", mid, STUDY_UID, 16, 1600)
    ledger.add(FELLOW.peer_id, "RAJ", mid, STUDY_UID, 4, 400)
    assert ctx.served == {"RAJ": [20, 2000]}  # at once, for status
    assert ctx.storage.metadata.served(mid) == []  # not written yet
    await ledger.flush()
    [row] = ctx.storage.metadata.served(mid)
    assert (row.org, row.blocks, row.bytes) == ("RAJ", 20, 2000)
    [entry] = [e.event for e in ctx.storage.metadata.audit_entries() if e.event.action == "blocks-served"]
    assert entry.code == EventCode.INSTANCES_TRANSFERRED and entry.actor == FELLOW.peer_id
    assert entry.detail == "20 block(s), 2000 bytes in 2 request(s)" and STUDY_UID not in entry.study
    await ledger.flush()  # nothing pending: nothing written
    assert len([e for e in ctx.storage.metadata.audit_entries() if e.event.action == "blocks-served"]) == 1
