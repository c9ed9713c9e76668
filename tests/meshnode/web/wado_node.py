"""A node's WADO-RS routes over a real store with a real study ingested, driven in-process (tests/meshnode/web).

The node's corruption service (meshnode.node.corruption) runs as in the node, so a block found rotten is
quarantined, forgotten and alerted once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from meshnode.dicom import synthetic
from meshnode.node.corruption import CorruptBlocks
from meshnode.storage.audit import AuditEvent, EventCode
from meshnode.storage.dbthread import DatabaseThread
from meshnode.storage.node_storage import NodeStorage
from meshnode.storage.records import InstanceRecord
from meshnode.storage.users import MemoryUserStore
from meshnode.study.ingest import Ingester
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
    files: list[Path]  # the ingested files

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


@asynccontextmanager
async def wado_node(tmp_path: Path, *, slices: int = 3, rows: int = 64, columns: int = 64,
                    chunk_size: int = 4096) -> AsyncIterator[Node]:
    home = tmp_path / "node"
    home.mkdir()
    storage = NodeStorage.open(home)
    db = DatabaseThread(storage.metadata)
    files = synthetic.generate_ct_study(tmp_path / "ct", slices=slices, rows=rows, columns=columns, seed=9)
    Ingester(storage, chunk_size=chunk_size).ingest(files)
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
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(corrupt.run)
            yield Node(app, storage, db, corrupt, token, study.attributes.study_uid, records, list(files))
            nursery.cancel_scope.cancel()
    finally:
        storage.close()
