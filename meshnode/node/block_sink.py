"""Received blocks made durable in groups, so that reading the network never waits for the disk.

The fetcher hands every block of every in-flight response to `BlockSink.put`
and goes straight back to reading. Two stages run behind it, each on its own
worker thread:

* the stager checks each block against its CID (a block that does not match
  is never written) and writes the good ones to temp files, without syncing;
* the committer takes everything staged since its last round and makes it
  durable together (`BlockStore.commit_staged`: sync, rename into place,
  sync), records it in one database transaction, and only then reports the
  round (`Settled`) to the fetcher, which tells the scheduler.

While one group is being synced the next is being staged, and a group grows
with the load (group commit): a fast link costs two filesystem syncs per
group, not per response. Bytes received but not yet staged are capped at
`max_pending`; beyond it `put` waits, so a slow disk slows the network
instead of filling memory. A local storage failure (disk full) is reported
as NOT_STORED, never as the peer's fault.

Each group is committed with a note of what it holds (manifest, block,
peer), durable before any of its blocks is renamed into place. A crash
between the rename and the database transaction leaves blocks verified on
disk but not recorded: only the last group's, since groups commit one after
another. `adopt_interrupted` reads that note after a restart and records
those blocks with the provenance the note gives (this node fetched them
under that manifest from that peer: protocol.access), after checking each
against its CID again; a file that does not match is deleted, never
adopted. Nothing else on disk is adopted: an unrecorded block the note
does not name may be an interrupted ingest or another sender's, and
counting it as fetched under a manifest would tell that manifest's sender
(by not asking for it) that this node holds it, and let its recipients
read it.
"""

from __future__ import annotations

import enum
import logging
from functools import partial
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from meshnode.node.worker import ThreadWorker, Worker
from meshnode.storage.blockstore import BlockMissingError, BlockStore, StagedBlock
from meshnode.storage.dbthread import DatabaseThread
from meshnode.storage.metadata import MetadataStore
from protocol.cid import CID
from protocol.errors import MeshError
from protocol.exchange_messages import verify_block

if TYPE_CHECKING:
    from trio_typing import TaskStatus

log = logging.getLogger(__name__)

MAX_PENDING = 48 * 1024 * 1024


class Outcome(enum.Enum):
    DURABLE = "durable"  # verified, on disk and recorded
    CORRUPT = "corrupt"  # did not match its CID; not stored
    NOT_STORED = "not-stored"  # verified, but this node could not store it (its own fault)


@dataclass(frozen=True)
class Arrival:
    peer: str
    manifest_id: CID
    cid: CID
    data: bytes


@dataclass(frozen=True)
class Settled:
    peer: str
    manifest_id: CID
    cid: CID
    size: int
    outcome: Outcome
    #: a DURABLE block's bytes, checked against its CID (the fetcher may keep them to verify its instance)
    data: bytes | None = field(default=None, repr=False, compare=False)


@dataclass
class _Staged:
    settled: list[Settled]
    files: list[StagedBlock]


SettledHook = Callable[[list[Settled]], Awaitable[None]]


class BlockSink:
    def __init__(self, blocks: BlockStore, db: DatabaseThread, on_settled: SettledHook, *,
                 clock: Callable[[], float], max_pending: int = MAX_PENDING, worker: Worker | None = None) -> None:
        self.blocks = blocks
        self.worker: Worker = worker or ThreadWorker()
        self.db = db
        self.on_settled = on_settled
        self.clock = clock
        self.max_pending = max_pending
        self._arrivals: list[Arrival] = []
        self._pending_bytes = 0
        self._staged: list[_Staged] = []
        self._arrived = trio.Event()
        self._has_staged = trio.Event()
        self._space = trio.Event()
        self.rounds = 0  # commit rounds so far (for tests and status)

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    async def put(self, arrival: Arrival) -> None:
        """Queue a received block; waits while too many received bytes are not staged yet."""
        while self._pending_bytes and self._pending_bytes + len(arrival.data) > self.max_pending:
            await self._space.wait()
        self._pending_bytes += len(arrival.data)
        self._arrivals.append(arrival)
        self._arrived.set()

    async def adopt_interrupted(self) -> int:
        """Record the blocks of the last group committed before a crash that are on disk but not recorded,
        each checked against its CID again, with the provenance its note gives; returns how many.
        Call before the sink runs (no group may be committing meanwhile)."""
        raw = await self.worker.run(self.blocks.commit_note)
        entries = decode_note(raw) if raw else []
        if not entries:
            return 0

        def unrecorded(store: MetadataStore) -> list[tuple[CID, CID, str]]:
            present = store.present_blocks([cid for _, cid, _ in entries])
            received = {m for m in {m for m, _, _ in entries}
                        if (row := store.manifest(m)) is not None and row.direction == "received"}
            return [e for e in entries if e[1] not in present and e[0] in received]

        candidates = await self.db.run(unrecorded)
        adopted = await self.worker.run(partial(self._check_on_disk, candidates))
        if adopted:
            ms = int(self.clock() * 1000)
            await self.db.run(lambda s: s.record_blocks(list({c: n for _, c, n, _ in adopted}.items()), ms,
                                                        [(m, c, p) for m, c, _, p in adopted]))
            log.info("adopted %d block(s) made durable before an interruption but not recorded", len(adopted))
        return len(adopted)

    def _check_on_disk(self, candidates: Sequence[tuple[CID, CID, str]]) -> list[tuple[CID, CID, int, str]]:
        """Worker thread: of (manifest, cid, peer), those whose file holds exactly the block; a file that does
        not match its CID is deleted."""
        out: list[tuple[CID, CID, int, str]] = []
        for manifest_id, cid, peer in candidates:
            try:
                data = self.blocks.get(cid, verify=False)
            except BlockMissingError:
                continue
            except MeshError as exc:
                log.warning("cannot read interrupted block %s: %s", cid, exc)
                continue
            if not cid.matches(data):
                log.warning("block %s left by an interruption does not match its CID: deleted", cid)
                try:
                    self.blocks.delete(cid)
                except MeshError as exc:
                    log.error("cannot delete block %s: %s", cid, exc)
                continue
            out.append((manifest_id, cid, len(data), peer))
        return out

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._stage_loop)
            nursery.start_soon(self._commit_loop)
            task_status.started()

    # -- stage 1: verify and write temp files -------------------------------------------
    async def _stage_loop(self) -> None:
        limiter = trio.CapacityLimiter(1)
        while True:
            if not self._arrivals:
                self._arrived = trio.Event()
                await self._arrived.wait()
            batch, self._arrivals = self._arrivals, []
            try:
                staged = await self.worker.run(partial(self._stage, batch), limiter)
            finally:
                self._pending_bytes -= sum(len(a.data) for a in batch)
                self._space.set()
                self._space = trio.Event()
            self._staged.append(staged)
            self._has_staged.set()

    def _stage(self, batch: Sequence[Arrival]) -> _Staged:
        """Worker thread: hash each block, write the good ones to temp files."""
        out = _Staged([], [])
        for a in batch:
            if not verify_block(a.cid, a.data):
                out.settled.append(Settled(a.peer, a.manifest_id, a.cid, len(a.data), Outcome.CORRUPT))
                continue
            try:
                item = self.blocks.stage(a.data, a.cid)
            except MeshError as exc:
                log.error("cannot stage block %s: %s", a.cid, exc)
                out.settled.append(Settled(a.peer, a.manifest_id, a.cid, len(a.data), Outcome.NOT_STORED))
                continue
            if item is not None:
                out.files.append(item)
            out.settled.append(Settled(a.peer, a.manifest_id, a.cid, len(a.data), Outcome.DURABLE, a.data))
        return out

    # -- stage 2: make durable, record, report --------------------------------------------
    async def _commit_loop(self) -> None:
        limiter = trio.CapacityLimiter(1)
        while True:
            if not self._staged:
                self._has_staged = trio.Event()
                await self._has_staged.wait()
            groups, self._staged = self._staged, []
            settled = [s for g in groups for s in g.settled]
            files = [f for g in groups for f in g.files]
            durable = [(s.cid, s.size) for s in settled if s.outcome is Outcome.DURABLE]
            # provenance: each block was fetched under its request's manifest (protocol.access)
            obtained = [(s.manifest_id, s.cid, s.peer) for s in settled if s.outcome is Outcome.DURABLE]
            if durable:
                try:
                    with trio.CancelScope(shield=True):  # never leave a group half-committed
                        note = encode_note(obtained)
                        await self.worker.run(partial(self.blocks.commit_staged, files, note), limiter)
                        ms = int(self.clock() * 1000)
                        await self.db.run(lambda s: s.record_blocks(durable, ms, obtained))
                except MeshError as exc:
                    log.error("cannot make %d received block(s) durable: %s", len(durable), exc)
                    self.blocks.discard_staged(files)
                    settled = [s if s.outcome is not Outcome.DURABLE else
                               Settled(s.peer, s.manifest_id, s.cid, s.size, Outcome.NOT_STORED) for s in settled]
            self.rounds += 1
            await self.on_settled(settled)


def encode_note(obtained: Sequence[tuple[CID, CID, str]]) -> bytes:
    """A commit group's note: one line per block, "<manifest> <cid> <peer>"."""
    return "".join(f"{m} {c} {p}\n" for m, c, p in obtained).encode()


def decode_note(raw: bytes) -> list[tuple[CID, CID, str]]:
    """The entries of a note; a line that does not parse (a torn or foreign file) is skipped."""
    out: list[tuple[CID, CID, str]] = []
    for line in raw.decode("ascii", errors="replace").splitlines():
        parts = line.split(" ")
        if len(parts) != 3 or not parts[2]:
            continue
        try:
            out.append((CID.parse(parts[0]), CID.parse(parts[1]), parts[2]))
        except MeshError:
            continue
    return out
