"""WADO-RS and patient reconciliation (review finding 4): a manifest waiting in the queue holds back exactly
the instances it lists, when they were received; a foreign manifest naming a local study's UID (even listing
its instances) hides nothing local."""

from __future__ import annotations

from pathlib import Path

from meshnode.storage.patients import ReconciliationRow, ReconState
from meshnode.storage.sqlite_metadata import SqliteMetadataStore
from protocol.cid import CID
from tests.meshnode.web.wado_node import Node, wado_node

EVIL = CID.of(b"a foreign manifest")


async def _status(node: Node, sop: str | None = None) -> int:
    path = f"/dicomweb/studies/{node.study}"
    if sop is not None:
        record = next(r for r in node.records if r.sop_instance_uid == sop)
        path += f"/series/{record.series_uid}/instances/{sop}"
    return (await node.get(path)).status


async def test_a_foreign_waiting_manifest_hides_nothing_local(tmp_path: Path) -> None:
    async with wado_node(tmp_path, slices=2) as node:
        keys = [(r.sop_instance_uid, r.digest) for r in node.records]
        await node.db.run(lambda s: s.add_reconciliation(
            ReconciliationRow(EVIL, node.study, "EVIL", ReconState.WAITING, 1), keys))
        assert await _status(node) == 200
        assert all([await _status(node, r.sop_instance_uid) == 200 for r in node.records])


async def test_received_instances_a_waiting_manifest_lists_are_held(tmp_path: Path) -> None:
    async with wado_node(tmp_path, slices=2) as node:
        held, kept = node.records

        def as_received(_: object) -> None:  # as a received study is stored
            store = node.storage.metadata
            assert isinstance(store, SqliteMetadataStore)
            with store._tx() as db:
                db.execute("UPDATE instances SET source = 'received'")
        await node.db.run(as_received)
        await node.db.run(lambda s: s.add_reconciliation(
            ReconciliationRow(EVIL, node.study, "RXX", ReconState.WAITING, 1), [(held.sop_instance_uid, held.digest)]))
        assert await _status(node, held.sop_instance_uid) == 404
        assert await _status(node, kept.sop_instance_uid) == 200  # listed by no waiting manifest
        assert await _status(node) == 200
        await node.db.run(lambda s: s.update_reconciliation(
            ReconciliationRow(EVIL, node.study, "RXX", ReconState.MATCHED, 1), ReconState.WAITING))
        assert await _status(node, held.sop_instance_uid) == 200
