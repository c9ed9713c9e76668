"""Blocks found corrupt while the node serves them: forgotten, audited once, fetched again where possible.

Whoever reads a stored block with verification (the block server, WADO-RS,
the DIMSE retrieve SCP, the PACS forwarder, instance verification) gets
BlockCorruptError, and the block store has already moved the file to its
quarantine folder, so no later reader is handed it and `has` says no. The
store tells `CorruptBlocks` (from the reader's thread, through the trio
token), which then, on the node's own loop:

- marks the block absent in metadata: `have` stops advertising it, and a
  fetch of any manifest listing it wants it again;
- audits one 110113 Security Alert per block quarantined;
- hands the CID to the repair hook: the runtime fetches it again from
  another holder when it holds it under a received manifest still live.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

from meshnode.storage.audit import AuditEvent
from meshnode.storage.dbthread import DatabaseThread
from meshnode.storage.node_storage import NodeStorage, corrupt_block_event
from protocol.cid import CID
from protocol.errors import MeshError

if TYPE_CHECKING:
    from trio_typing import TaskStatus

log = logging.getLogger(__name__)

AuditFn = Callable[[AuditEvent], Awaitable[None]]
#: Fetch a quarantined block again; returns what it did, for the audit entry ("" when nothing).
RepairFn = Callable[[CID], Awaitable[str]]


class CorruptBlocks:
    def __init__(self, storage: NodeStorage, db: DatabaseThread, audit: AuditFn, actor: str,
                 repair: RepairFn | None = None) -> None:
        self.storage = storage
        self.db = db
        self.audit = audit
        self.actor = actor
        self.repair = repair
        self._send, self._receive = trio.open_memory_channel[CID](math.inf)
        self.handled = 0

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        token = trio.lowlevel.current_trio_token()

        def quarantined(cid: CID) -> None:  # any thread: the block store's reader
            try:
                token.run_sync_soon(self._send.send_nowait, cid)
            except trio.RunFinishedError:
                log.warning("block %s quarantined while the node stops; it stays marked present until "
                            "`meshnode scrub`", cid)

        blocks = self.storage.blocks
        blocks.on_quarantined = quarantined
        try:
            task_status.started()
            async for cid in self._receive:
                try:
                    await self._handle(cid)
                except MeshError as exc:  # the database or the audit log failing: the node's other work goes on
                    log.error("quarantined block %s not recorded: %s", cid, exc)
        finally:
            blocks.on_quarantined = None

    async def _handle(self, cid: CID) -> None:
        await self.db.run(lambda store: store.forget_blocks([cid]))
        action = ""
        if self.repair is not None:
            try:
                action = await self.repair(cid)
            except MeshError as exc:
                log.warning("cannot fetch quarantined block %s again: %s", cid, exc)
                action = f"; not fetched again: {exc.name}"
        await self.audit(corrupt_block_event(cid, "", actor=self.actor, detail=action))
        self.handled += 1
        log.warning("block %s quarantined and marked absent%s", cid, action)
