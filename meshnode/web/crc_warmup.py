"""Computes the CRC-32s of a new patient share's instances in the background, so the patient's first download
and any resumed one serve the ZIP's data descriptors and central directory without a pass over the study.

A share made by a staff user queues its studies (`wanted`, never blocking the staff request); one task reads
the instances the patient pages show (wado.shown_instances, on the database thread) and runs
media_set.warm_crcs on a worker thread, which stores each CRC-32 as soon as it is known. A full queue drops
the request (the download then computes the CRC-32s as it streams, as it would without warm-up); a corrupt
block is logged, quarantined and alerted by the block store as for any read, and the next share goes on.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from meshnode.storage.dbthread import DatabaseThread
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.node_storage import NodeStorage
from meshnode.storage.records import InstanceRecord
from meshnode.study.media_set import warm_crcs
from meshnode.web.wado import shown_instances
from protocol.errors import StorageError

if TYPE_CHECKING:
    from trio_typing import TaskStatus

log = logging.getLogger(__name__)

#: shares waiting for their warm-up; beyond this a share is not warmed (its download computes as it streams)
QUEUE = 256


class CrcWarmup:
    def __init__(self, db: DatabaseThread, storage: NodeStorage, *, queue: int = QUEUE) -> None:
        self.db = db
        self.storage = storage
        self._send, self._receive = trio.open_memory_channel[tuple[str, ...]](queue)
        self.warmed = 0
        self.dropped = 0

    def wanted(self, studies: tuple[str, ...]) -> None:
        """A share of `studies` was made: warm them when the task gets to it."""
        try:
            self._send.send_nowait(tuple(studies))
        except trio.WouldBlock:
            self.dropped += 1
            log.info("CRC-32 warm-up queue full (%d shares): a share's first download computes them instead", QUEUE)

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async for studies in self._receive:
            def read(store: MetadataStore, uids: tuple[str, ...] = studies) -> list[InstanceRecord]:
                return [r for uid in sorted(set(uids)) for r in shown_instances(store, uid)]
            records = await self.db.run(read)
            try:
                computed = await trio.to_thread.run_sync(warm_crcs, self.storage, records,
                                                         abandon_on_cancel=True)  # type: ignore[call-arg]
            except StorageError as exc:
                log.warning("CRC-32 warm-up of a share stopped: %s", exc.name)
                continue
            self.warmed += computed
            log.debug("CRC-32 warm-up: %d instance(s) computed", computed)
