"""The gateway's services on a real node store (SQLite, block files) in one trio process, for tests.

The DIMSE server listens on 127.0.0.1, port 0; dcmtk tools are run against it
as real child processes.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import trio

from common.sqlite_db import SqliteConnection
from meshnode.gateway.announcer import StudyAnnouncer
from meshnode.gateway.config import Caller, DicomPeer, DimseSettings, GatewayConfig
from meshnode.gateway.dimse.server import DimseServer
from meshnode.gateway.intake import StudyIntake
from meshnode.gateway.routes import Route, RouteTable
from meshnode.storage.audit import AuditEvent
from meshnode.storage.dbthread import DatabaseThread
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.node_storage import NodeStorage
from meshnode.storage.records import InstanceRecord, ManifestRow
from meshnode.storage.sqlite_gateway import SqliteGatewayStore
from meshnode.study.manifest_builder import build_manifest
from protocol.document import Signed
from protocol.errors import UnavailableError
from protocol.keys import SigningKey
from protocol.lifecycle import ManifestState
from protocol.manifest import Manifest, Priority, Purpose

KEY = SigningKey(bytes([7]) * 32)
AE_TITLE = "MESHTEST"
CALLER = "TESTSCU"


@dataclass
class Shared:
    """The harness's share: signs a real manifest of what the store holds, as Sender.share does
    (without the deliveries: these tests are about when and what is announced)."""

    calls: list[tuple[str, tuple[str, ...], Priority, Purpose]] = field(default_factory=list)
    manifests: list[Signed[Manifest]] = field(default_factory=list)
    failures: int = 0  # the next this many shares fail (UnavailableError)


def config(routes: Sequence[Route] = (), callers: Sequence[Caller] = (Caller(CALLER),),
           move_destinations: Sequence[DicomPeer] = (), **dimse: object) -> GatewayConfig:
    settings = DimseSettings(enabled=True, ae_title=AE_TITLE, host="127.0.0.1", port=0,
                             **dimse)  # type: ignore[arg-type]
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
    share: Callable[[str, Sequence[str], Priority, Purpose], Awaitable[Signed[Manifest]]]

    @property
    def port(self) -> int:
        assert self.server.address is not None
        return self.server.address[1]

    async def audit_actions(self) -> list[tuple[int, str, str]]:
        entries = await self.db.run(lambda s: s.audit_entries())
        return [(int(e.event.code), e.event.action, e.event.detail) for e in entries]


async def start_gateway(nursery: trio.Nursery, home: Path, gateway_config: GatewayConfig, *,
                        dimse: bool = True, announce: bool = True) -> Gateway:
    home.mkdir(parents=True, exist_ok=True)
    storage = NodeStorage.open(home)
    db = DatabaseThread(storage.metadata)
    # as the node does (meshnode.gateway.service): on the metadata store's connection, one transaction per commit
    state = SqliteGatewayStore(home / "node.db",
                               share=storage.metadata if isinstance(storage.metadata, SqliteConnection) else None)
    shared = Shared()

    async def share(study: str, to: Sequence[str], priority: Priority, purpose: Purpose) -> Signed[Manifest]:
        shared.calls.append((study, tuple(to), priority, purpose))
        if shared.failures:
            shared.failures -= 1
            raise UnavailableError("no node of the recipient org is reachable (harness)")

        def load(store: MetadataStore) -> tuple[list[InstanceRecord], int]:
            sent = [m.revision for m in store.manifests("sent") if m.study_uid == study]
            return store.instances(study), max(sent, default=0)

        records, last = await db.run(load)
        now = int(time.time())
        manifest = build_manifest(records, sender_org="RGT", sender_peer=KEY.peer_id, recipients=to,
                                  priority=priority, purpose=purpose, created_at=now, expires_at=now + 86400,
                                  revision=last + 1)
        signed = manifest.sign(KEY)
        row = ManifestRow(signed.cid, study, "sent", "RGT", manifest.revision, ManifestState.SENT, now, manifest.expires_at,
                          signed.encode(), manifest.recipients)
        await db.run(lambda s: s.save_manifest(row, []))
        shared.manifests.append(signed)
        return signed

    async def audit(*events: AuditEvent) -> None:
        await db.run(lambda _: storage.audit(*events))

    announcer = StudyAnnouncer(db, state, gateway_config.routes, share)
    if announce:
        nursery.start_soon(announcer.run)
    intake = StudyIntake(storage, db, state, announcer, max_instance_bytes=gateway_config.dimse.max_instance_bytes)
    server = DimseServer(gateway_config, intake, audit, home)
    await nursery.start(intake.run)
    if dimse:
        await nursery.start(server.run)
    return Gateway(home, storage, db, state, intake, announcer, server, shared, share)


T = TypeVar("T")


async def eventually(check: Callable[[], T], what: str, timeout: float = 30.0) -> T:
    """Poll `check` until it returns something true, for at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await trio.sleep(0.05)
