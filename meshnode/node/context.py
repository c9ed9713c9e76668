"""Everything a running node's services share."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import trio

from meshnode.config import NodeConfig
from meshnode.directory.client import DirectoryClient
from meshnode.home import NodeHome
from meshnode.node.manifest_cache import ManifestCache
from meshnode.node.events import StudyEvents
from meshnode.node.peers import PeerRegistry
from common.p2p.streams import describe_ending, is_network_ending
from meshnode.node.worker import ThreadWorker, Worker
from meshnode.storage.audit import AuditEvent
from meshnode.storage.dbthread import DatabaseThread
from meshnode.storage.node_storage import NodeStorage, now_ms
from protocol.backoff import Backoff
from protocol.certificate import Certificate
from protocol.document import Signed
from protocol.keys import SigningKey
from protocol.roster import Roster

log = logging.getLogger(__name__)

#: Between restarts of a failed background loop: 1 s doubling to 30 s.
RESTART_BACKOFF = Backoff(base=1.0, factor=2.0, cap=30.0)


@dataclass
class NodeContext:
    home: NodeHome
    config: NodeConfig
    key: SigningKey
    certificate: Signed[Certificate]
    storage: NodeStorage
    db: DatabaseThread
    peers: PeerRegistry
    directory: DirectoryClient
    clock: Callable[[], float] = time.time
    changed: trio.Event = field(default_factory=trio.Event)
    #: blocks and bytes served per requesting org, since start (for status and metrics)
    served: dict[str, list[int]] = field(default_factory=dict)
    #: stored manifests, decoded once
    manifests: ManifestCache = field(default_factory=ManifestCache)
    #: blocks and bytes received per serving org, since start (for metrics)
    received: dict[str, list[int]] = field(default_factory=dict)
    #: arrivals, deliveries and failures, for webhooks and metrics
    events: StudyEvents = field(default_factory=StudyEvents)
    #: where blocking work (disk, hashing) runs: worker threads (inline in the in-process tests)
    worker: Worker = field(default_factory=ThreadWorker)

    @property
    def org(self) -> str:
        return self.certificate.document.org_code

    @property
    def peer_id(self) -> str:
        return self.key.peer_id

    def roster(self) -> Roster:
        return self.peers.guard.roster(self.clock())

    def count_received(self, peer_id: str, blocks: Sequence[tuple[object, int]]) -> None:
        """Blocks (cid, size) a peer served us, counted per its org."""
        known = self.peers.certificate_of(peer_id)
        counts = self.received.setdefault(known.document.org_code if known else "unknown", [0, 0])
        counts[0] += len(blocks)
        counts[1] += sum(size for _, size in blocks)

    def wake(self) -> None:
        """Tell the background loops that there is new work."""
        self.changed.set()
        self.changed = trio.Event()

    async def audit(self, *events: AuditEvent) -> None:
        def write(_: object) -> None:
            self.storage.metadata.append_audit(list(events), now_ms())
            self.storage.write_head()

        await self.db.run(write)


async def keep_running(name: str, loop: Callable[[], Awaitable[None]]) -> None:
    """Task boundary of a background loop: an unexpected error is logged and the loop restarted,
    never allowed to take the whole node down. Cancellation passes through."""
    failures = 0
    while True:
        try:
            await loop()
            return
        except Exception as exc:
            failures += 1
            if is_network_ending(exc):  # a peer went away under a loop that did not expect it: a line
                log.warning("background task %s ended by the network (%d): %s; restarting", name, failures,
                            describe_ending(exc))
            else:
                log.exception("background task %s failed (%d); restarting", name, failures)
            await trio.sleep(RESTART_BACKOFF.delay(failures))
