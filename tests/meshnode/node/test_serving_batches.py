"""Serving a block request reads several blocks per worker-thread call (Wire._read_ahead, READ_BATCH_BYTES).

Whatever the batch size: one frame per requested block in request order, a block gone from disk or corrupt
on disk (then quarantined) answered absent in its place with the rest of the batch still served, every
block sent verified against its CID; and fewer worker-thread calls than blocks.
"""

from __future__ import annotations

import pytest
import trio
from trio.testing import MockClock

from meshnode.node import wire as wire_module
from protocol.exchange_messages import BlockAbsent, BlockData, BlockFrame, BlockRequest, encode_request
from tests.meshnode.node.harness import HarnessNode, MemoryMesh


async def served(asker: HarnessNode, holder: HarnessNode, request: BlockRequest) -> list[BlockFrame]:
    frames: list[BlockFrame] = []

    async def write(frame: BlockFrame) -> None:
        frames.append(frame)

    await holder.wire.answer_blocks(asker.peer_id, encode_request(request), write)
    return frames


@pytest.mark.parametrize("batch", [1, 2500, wire_module.READ_BATCH_BYTES], ids=["one", "a few", "default"])
async def test_frames_come_in_request_order_whatever_the_batch(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str, batch: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wire_module, "READ_BATCH_BYTES", batch)
    a, b = mesh.add("a", "RGT", 50), mesh.add("b", "RJ1", 51)
    await mesh.hello(b, a)
    signed = await mesh.share(a, study, ["RJ1"])
    cids = signed.document.block_order()[:12]
    corrupt, missing = cids[4], cids[7]
    path = a.ctx.storage.blocks.path_of(corrupt)
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    a.ctx.storage.blocks.path_of(missing).unlink()
    calls = 0
    run = a.ctx.worker.run

    async def counted(fn, limiter=None):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        return await run(fn, limiter)

    a.ctx.worker.run = counted  # type: ignore[method-assign]
    with trio.fail_after(60):
        frames = await served(b, a, BlockRequest(signed.cid, cids))
    assert [f.cid for f in frames] == list(cids)  # type: ignore[union-attr]
    for cid, frame in zip(cids, frames):
        if cid in (corrupt, missing):
            assert frame == BlockAbsent(cid)
        else:
            assert isinstance(frame, BlockData) and cid.matches(frame.data)
    assert not a.ctx.storage.blocks.has(corrupt)  # quarantined when read, never sent
    sent = sum(isinstance(f, BlockData) for f in frames)
    assert calls >= sent if batch == 1 else calls < sent  # at most one block sent per call, or several
