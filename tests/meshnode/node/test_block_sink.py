"""BlockSink: received blocks verified, staged and made durable in groups, on a real block store and SQLite."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from meshnode.node.block_sink import Arrival, BlockSink, Outcome, Settled
from meshnode.storage.blockstore import BlockStore, StagedBlock
from meshnode.storage.dbthread import DatabaseThread
from meshnode.storage.sqlite_metadata import SqliteMetadataStore
from protocol.cid import CID
from protocol.errors import StorageError

MANIFEST = CID.of(b"manifest")
TIMEOUT = 10.0


def block(n: int, size: int = 70_000) -> bytes:
    return (f"block {n} ".encode() * (size // 8 + 1))[:size]


class Harness:
    def __init__(self, store: BlockStore, db: DatabaseThread, metadata: SqliteMetadataStore) -> None:
        self.store = store
        self.db = db
        self.metadata = metadata
        self.rounds: list[list[Settled]] = []
        self.sink = BlockSink(store, db, self.settled, clock=lambda: 1000.0, max_pending=3 * 70_000)

    async def settled(self, settled: list[Settled]) -> None:
        self.rounds.append(settled)

    def outcomes(self) -> dict[CID, Outcome]:
        return {s.cid: s.outcome for r in self.rounds for s in r}

    async def wait_for(self, n: int) -> None:
        with trio.fail_after(TIMEOUT):
            while len(self.outcomes()) < n:
                await trio.sleep(0.005)


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    metadata = SqliteMetadataStore(tmp_path / "node.db")
    h = Harness(BlockStore(tmp_path / "store"), DatabaseThread(metadata), metadata)
    async with trio.open_nursery() as nursery:
        await nursery.start(h.sink.run)
        yield h
        nursery.cancel_scope.cancel()
    metadata.close()


async def test_good_blocks_become_durable_and_recorded_and_a_corrupt_one_is_never_stored(harness: Harness) -> None:
    good = [block(i) for i in range(5)]
    for data in good:
        await harness.sink.put(Arrival("peer-a", MANIFEST, CID.of(data), data))
    forged = CID.of(b"what was promised")
    await harness.sink.put(Arrival("liar", MANIFEST, forged, b"something else"))
    await harness.wait_for(6)
    outcomes = harness.outcomes()
    assert outcomes[forged] is Outcome.CORRUPT
    assert all(outcomes[CID.of(d)] is Outcome.DURABLE for d in good)
    assert not harness.store.has(forged)
    for data in good:
        assert harness.store.get(CID.of(data)) == data
    assert harness.metadata.present_blocks([CID.of(d) for d in good] + [forged]) == {CID.of(d) for d in good}
    assert list((harness.store.tmp_dir).iterdir()) == []  # every temp file renamed into place
    settled = [s for r in harness.rounds for s in r]
    assert {(s.peer, s.manifest_id) for s in settled} == {("peer-a", MANIFEST), ("liar", MANIFEST)}


async def test_a_block_already_stored_is_reported_durable_without_a_second_copy(harness: Harness) -> None:
    data = block(1)
    harness.store.put(data)
    await harness.sink.put(Arrival("peer-a", MANIFEST, CID.of(data), data))
    await harness.wait_for(1)
    assert harness.outcomes() == {CID.of(data): Outcome.DURABLE}
    assert harness.metadata.present_blocks([CID.of(data)]) == {CID.of(data)}


async def test_put_waits_while_too_many_received_bytes_are_not_staged(tmp_path: Path) -> None:
    gate = threading.Event()

    class SlowDisk(BlockStore):
        def stage(self, data: bytes, cid: CID | None = None) -> StagedBlock | None:
            gate.wait(TIMEOUT)
            return super().stage(data, cid)

    metadata = SqliteMetadataStore(tmp_path / "node.db")
    h = Harness(SlowDisk(tmp_path / "store"), DatabaseThread(metadata), metadata)
    async with trio.open_nursery() as nursery:
        await nursery.start(h.sink.run)
        blocks = [block(i) for i in range(8)]
        put_done = 0

        async def producer() -> None:
            nonlocal put_done
            for data in blocks:
                await h.sink.put(Arrival("peer-a", MANIFEST, CID.of(data), data))
                put_done += 1

        nursery.start_soon(producer)
        await trio.testing.wait_all_tasks_blocked(0.05)
        assert h.sink.pending_bytes <= h.sink.max_pending
        assert put_done < len(blocks)  # the producer is held back, not buffering everything
        gate.set()
        await h.wait_for(len(blocks))
        assert put_done == len(blocks)
        assert all(o is Outcome.DURABLE for o in h.outcomes().values())
        nursery.cancel_scope.cancel()
    metadata.close()


async def test_a_local_storage_failure_is_not_the_peers_fault_and_leaves_nothing_behind(tmp_path: Path) -> None:
    class FullDisk(BlockStore):
        def commit_staged(self, staged: list[StagedBlock], note: bytes | None = None) -> None:  # type: ignore[override]
            self.discard_staged(staged)
            raise StorageError("no space left on device")

    metadata = SqliteMetadataStore(tmp_path / "node.db")
    h = Harness(FullDisk(tmp_path / "store"), DatabaseThread(metadata), metadata)
    async with trio.open_nursery() as nursery:
        await nursery.start(h.sink.run)
        data = block(3)
        await h.sink.put(Arrival("peer-a", MANIFEST, CID.of(data), data))
        await h.wait_for(1)
        nursery.cancel_scope.cancel()
    assert h.outcomes() == {CID.of(data): Outcome.NOT_STORED}
    assert not h.store.has(CID.of(data))
    assert metadata.present_blocks([CID.of(data)]) == set()
    assert list(h.store.tmp_dir.iterdir()) == []
    metadata.close()
