"""WADO-RS over a block that rotted on disk: an error status before the first body byte where the node can
know (issue 11, finding 10), and for a corruption found mid-stream a body the client can tell is incomplete.

The real ASGI app, driven in-process, over a real node store with a real study ingested; a byte of a stored
block file is flipped. The node's corruption service (meshnode.node.corruption) runs as in the node, so the
block is quarantined, forgotten and alerted once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from meshnode.dicom import synthetic
from meshnode.study.ingest import Ingester
from meshnode.node.corruption import CorruptBlocks
from meshnode.storage.audit import AuditEvent, EventCode
from meshnode.storage.dbthread import DatabaseThread
from meshnode.storage.node_storage import NodeStorage
from meshnode.storage.records import InstanceRecord
from meshnode.storage.users import MemoryUserStore
from meshnode.web.app import WebApp
from meshnode.web.auth import Authenticator, add_user, issue_token
from meshnode.web.config import HttpConfig
from meshnode.web.services import WebServices
from meshnode.web.wado import Wado
from protocol.cid import CID
from tests.meshnode.web.asgi import Reply, call


@dataclass
class Node:
    app: WebApp
    storage: NodeStorage
    db: DatabaseThread
    corrupt: CorruptBlocks
    token: str
    study: str
    records: list[InstanceRecord]

    async def get(self, path: str, accept: str = 'multipart/related; type="application/dicom"') -> Reply:
        return await call(self.app, "GET", path, headers={"Authorization": f"Bearer {self.token}", "Accept": accept})

    def rot(self, cid: CID) -> None:
        path = self.storage.blocks.path_of(cid)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))

    async def alerts(self) -> list[str]:
        entries = await self.db.run(lambda m: m.audit_entries())
        return [e.event.detail for e in entries if e.event.code == EventCode.SECURITY_ALERT]

    async def settled(self, handled: int) -> None:
        with trio.fail_after(10):
            while self.corrupt.handled < handled:
                await trio.sleep(0.01)  # the service runs on this loop: yield to it


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    home = tmp_path / "node"
    home.mkdir()
    storage = NodeStorage.open(home)
    db = DatabaseThread(storage.metadata)
    Ingester(storage, chunk_size=4096).ingest(
        synthetic.generate_ct_study(tmp_path / "ct", slices=3, rows=64, columns=64, seed=9))
    [study] = storage.metadata.studies()
    records = storage.metadata.instances(study.attributes.study_uid)

    async def audit(event: AuditEvent) -> None:
        await db.run(lambda _: storage.audit(event))

    users = MemoryUserStore()
    add_user(users, "viewer", ("read",), 0)
    token, _ = issue_token(users, "viewer", "", 0)
    config = HttpConfig(listen="127.0.0.1:0")
    app = WebApp(Wado(WebServices(config, "RGT", storage, db, audit)).routes(), Authenticator(users), config, audit)
    corrupt = CorruptBlocks(storage, db, audit, "node")
    async with trio.open_nursery() as nursery:
        await nursery.start(corrupt.run)
        yield Node(app, storage, db, corrupt, token, study.attributes.study_uid, records)
        nursery.cancel_scope.cancel()
    storage.close()


async def test_single_instance_with_a_corrupt_block_is_an_error_before_any_body(node: Node) -> None:
    record = node.records[0]
    bad = record.blocks[-1]  # the last block: only a full read before the status line finds it
    node.rot(bad)
    path = f"/dicomweb/studies/{node.study}/series/{record.series_uid}/instances/{record.sop_instance_uid}"
    reply = await node.get(path)
    assert reply.status == 503 and reply.json()["error"] == "block-corrupt"
    await node.settled(1)
    alerts = await node.alerts()
    assert len(alerts) == 1 and str(bad) in alerts[0] and "quarantined" in alerts[0]
    assert not node.storage.blocks.has(bad) and len(list(node.storage.blocks.quarantine_dir.iterdir())) == 1
    assert await node.db.run(lambda m: m.present_blocks([bad])) == set()  # marked absent
    again = await node.get(path)  # now known to be missing: still an error, and no second alert
    assert again.status == 503
    assert len(await node.alerts()) == 1


async def test_study_retrieve_checks_the_first_instance_before_the_status_line(node: Node) -> None:
    node.rot(node.records[0].blocks[-1])
    reply = await node.get(f"/dicomweb/studies/{node.study}")
    assert reply.status == 503 and reply.json()["error"] == "block-corrupt"


async def test_a_corruption_found_mid_stream_ends_the_body_short_of_its_length_and_boundary(node: Node) -> None:
    node.rot(node.records[-1].blocks[-1])
    reply = await node.get(f"/dicomweb/studies/{node.study}")  # the app returns: no exception escapes it
    assert reply.status == 200
    boundary = reply.headers["content-type"].split("boundary=")[1]
    assert len(reply.body) < int(reply.headers["content-length"])
    assert not reply.body.rstrip().endswith(f"--{boundary}--".encode())
    assert reply.body.count(f"--{boundary}\r\n".encode()) == len(node.records) - 1  # the good ones, whole
    await node.settled(1)
    assert len(await node.alerts()) == 1
