"""C-STORE group commit vs the node's own block gc (review of issue 12, finding 1).

The leader thread makes its group's blocks durable (BlockStore.place keeps a block file already stored under
its CID and drops its own temp copy); before the group's transaction takes the database lock, the database
thread may run gc (after a recall), deleting those files since nothing references them yet. The group must
then fail (every caller gets an error, so a 0xA700) with nothing recorded, never answer success for an
instance whose blocks are gone."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio

from meshnode.gateway.group_commit import ThreadGroupCommit
from meshnode.gateway.intake import StoredInstance
from meshnode.gateway.routes import Route
from meshnode.storage.blockstore import BlockMissingError
from meshnode.storage.records import AddOutcome
from protocol.cid import CID
from tests.meshnode.gateway.conftest import GatewayFactory
from tests.meshnode.gateway.harness import config


async def test_gc_between_placing_and_committing_fails_the_group_and_records_nothing(
        gateways: GatewayFactory, ct_study: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    gw = await gateways()
    data = ct_study[0].read_bytes()
    commits = ThreadGroupCommit(gw.intake, trio.lowlevel.current_trio_token())

    def store() -> StoredInstance:
        return commits.commit(gw.intake.prepare(data, "dimse:PACS", durable=False), None)

    first = await trio.to_thread.run_sync(store)
    assert first.outcome is AddOutcome.ADDED
    # a recall forgets the study: its blocks are unreferenced, still on disk
    await gw.db.run(lambda s: s.forget_study(first.study_uid, [], int(time.time() * 1000)))

    real = gw.intake.make_durable

    def durable_then_gc(written: Sequence[tuple[Path, CID]]) -> None:
        real(written)  # place() finds the old files and drops the new temps
        gw.db.run_blocking(lambda _: gw.storage.gc(orphan_grace_s=3600))  # the database thread's turn

    monkeypatch.setattr(gw.intake, "make_durable", durable_then_gc)
    with pytest.raises(BlockMissingError):
        await trio.to_thread.run_sync(store)
    assert await gw.db.run(lambda s: s.instances(first.study_uid)) == []

    # the PACS retries (no gc this time): stored, every block on disk
    monkeypatch.setattr(gw.intake, "make_durable", real)
    again = await trio.to_thread.run_sync(store)
    (rec,) = await gw.db.run(lambda s: s.instances(again.study_uid))
    assert all(gw.storage.blocks.has(c) for c in rec.blocks)
    assert b"".join(gw.storage.blocks.get(c) for c in rec.blocks) == data


async def test_a_failing_announcer_note_after_a_thread_commit_does_not_end_the_node(
        gateways: GatewayFactory, ct_study: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """_committed runs on the trio loop via run_sync_soon: an exception there used to end the whole trio run
    (TrioInternalError). It is logged; the instance stays committed and the node goes on."""
    route = Route("rj1", ("RJ1",), called_ae="MESH_RJ1", quiet_period_s=3600)
    gw = await gateways(config(routes=[route]))
    commits = ThreadGroupCommit(gw.intake, trio.lowlevel.current_trio_token())

    def broken(study_uid: str, route: str, at_s: float) -> None:
        raise RuntimeError("a bug in the announcer's bookkeeping")

    monkeypatch.setattr(gw.announcer, "arrived", broken)
    stored = await trio.to_thread.run_sync(
        lambda: commits.commit(gw.intake.prepare(ct_study[0].read_bytes(), "dimse:PACS", durable=False), route))
    for _ in range(10):
        await trio.lowlevel.checkpoint()  # the loop runs the queued _committed
    assert [r.sop_instance_uid for r in await gw.db.run(lambda s: s.instances(stored.study_uid))] == [
        stored.sop_instance_uid]
