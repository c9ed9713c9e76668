"""The gateway's services on a real node store (SQLite, block files) in one trio process, for tests.

The DIMSE server listens on 127.0.0.1, port 0; dcmtk tools are run against it
as real child processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

from meshnode.gateway.announcer import StudyAnnouncer
from meshnode.gateway.config import Caller, DicomPeer, DimseSettings, GatewayConfig
from meshnode.gateway.dimse.server import DimseServer
from meshnode.gateway.intake import StudyIntake
from meshnode.gateway.routes import Route, RouteTable
from meshnode.storage.audit import AuditEvent
from meshnode.storage.dbthread import DatabaseThread
from meshnode.storage.node_storage import NodeStorage
from meshnode.storage.sqlite_gateway import SqliteGatewayStore
from protocol.cid import CID
from protocol.document import Signed
from protocol.manifest import Manifest, Priority, Purpose

AE_TITLE = "MESHTEST"
CALLER = "TESTSCU"


@dataclass
class Shared:
    """What the harness's share function was asked to share (the announcer's output)."""

    calls: list[tuple[str, tuple[str, ...], Priority, Purpose]] = field(default_factory=list)


def config(routes: Sequence[Route] = (), callers: Sequence[Caller] = (Caller(CALLER),),
           move_destinations: Sequence[DicomPeer] = (), **dimse: object) -> GatewayConfig:
    settings = DimseSettings(enabled=True, ae_title=AE_TITLE, host="127.0.0.1", port=0, **dimse)  # type: ignore[arg-type]
    return GatewayConfig(dimse=settings, callers=tuple(callers), routes=RouteTable(routes),
                         move_destinations=tuple(move_destinations))


@dataclass
class Gateway:
    home: Path
    storage: NodeStorage
    db: DatabaseThread
    state: SqliteGatewayStore
    intake: StudyIntake
    announcer: StudyAnnouncer
    server: DimseServer
    shared: Shared

    @property
    def port(self) -> int:
        assert self.server.address is not None
        return self.server.address[1]

    async def audit_actions(self) -> list[tuple[int, str, str]]:
        entries = await self.db.run(lambda s: s.audit_entries())
        return [(int(e.event.code), e.event.action, e.event.detail) for e in entries]


async def start_gateway(nursery: trio.Nursery, home: Path, gateway_config: GatewayConfig) -> Gateway:
    home.mkdir(parents=True, exist_ok=True)
    storage = NodeStorage.open(home)
    db = DatabaseThread(storage.metadata)
    state = SqliteGatewayStore(home / "node.db")
    shared = Shared()

    async def share(study: str, to: Sequence[str], priority: Priority, purpose: Purpose) -> Signed[Manifest]:
        shared.calls.append((study, tuple(to), priority, purpose))
        raise _NotSharing("the harness records shares; the e2e tests share for real")

    async def audit(*events: AuditEvent) -> None:
        await db.run(lambda _: storage.audit(*events))

    announcer = StudyAnnouncer(db, state, gateway_config.routes, share)
    intake = StudyIntake(storage, db, state, announcer, max_instance_bytes=gateway_config.dimse.max_instance_bytes)
    server = DimseServer(gateway_config, intake, audit, home)
    await nursery.start(intake.run)
    await nursery.start(server.run)
    return Gateway(home, storage, db, state, intake, announcer, server, shared)


class _NotSharing(Exception):
    pass


def cid_hex(cid: CID) -> str:
    return str(cid)
