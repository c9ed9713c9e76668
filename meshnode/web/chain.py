"""The audit chain's verification status for the web UI: incremental, with a periodic full pass.

Each check verifies only the entries added since the last one (continuing
from the last verified entry's hash), in chunks on the database thread; every
FULL_EVERY_S the whole chain is verified again from the first entry, so an
edit to an old entry shows up too. The recorded chain head (state/audit-head)
catches a truncated log.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from meshnode.storage.audit import GENESIS, ChainProblem, entry_hash
from meshnode.storage.dbthread import DatabaseThread
from meshnode.storage.node_storage import NodeStorage

CHUNK = 5000
FULL_EVERY_S = 600.0
MAX_PROBLEMS = 20


@dataclass
class ChainStatus:
    verified_through: int = 0
    last_hash: bytes = GENESIS
    problems: list[ChainProblem] = field(default_factory=list)
    last_full_at: float = 0.0
    checked_at: float = 0.0

    @property
    def intact(self) -> bool:
        return not self.problems


class ChainVerifier:
    def __init__(self, db: DatabaseThread, storage: NodeStorage, clock: Callable[[], float] = time.time,
                 full_every_s: float = FULL_EVERY_S) -> None:
        self.db = db
        self.storage = storage
        self.clock = clock
        self.full_every_s = full_every_s
        self.status = ChainStatus()
        self._lock = trio.Lock()
        self._alerts: list[ChainProblem] = []

    async def check(self) -> ChainStatus:
        async with self._lock:
            now = self.clock()
            if now - self.status.last_full_at >= self.full_every_s:
                fresh = ChainStatus(last_full_at=now)
            else:
                fresh = ChainStatus(self.status.verified_through, self.status.last_hash, list(self.status.problems),
                                    self.status.last_full_at)
            while True:
                seq, prev = fresh.verified_through, fresh.last_hash
                entries = await self.db.run(lambda s: s.audit_range(seq, CHUNK))
                for e in entries:
                    if e.seq != seq + 1:
                        fresh.problems.append(ChainProblem(e.seq, f"entry {seq + 1} missing (deleted): found {e.seq}"))
                    if e.prev_hash != prev:
                        fresh.problems.append(ChainProblem(e.seq, "does not follow the entry before it"))
                    if entry_hash(e.seq, e.at_ms, e.event, e.prev_hash) != e.hash:
                        fresh.problems.append(ChainProblem(e.seq, "content does not match its hash (edited)"))
                    seq, prev = e.seq, e.hash
                fresh.verified_through, fresh.last_hash = seq, prev
                del fresh.problems[MAX_PROBLEMS:]
                if len(entries) < CHUNK:
                    break
            head = await self.db.run(lambda _: self.storage.recorded_head())
            fresh.problems = [p for p in fresh.problems
                              if not p.problem.endswith("(log truncated)") and p not in self._alerts]
            if head is not None and head[0] > fresh.verified_through:
                fresh.problems.append(ChainProblem(fresh.verified_through + 1,
                                                   f"entries up to {head[0]} are missing (log truncated)"))
            # an unacknowledged truncation alarm; the node's signature on the newest entry (checked every time)
            self._alerts = await self.db.run(lambda _: self.storage.audit_alerts())
            fresh.problems += self._alerts
            fresh.checked_at = now
            self.status = fresh
            return fresh
