"""Instances verified from the bytes as they arrived (meshnode.node.retained), not read back from disk.

The fetcher keeps each durable block's bytes (checked against its CID before they were staged) until its
instance is verified, within a byte limit; past the limit, or for a block it did not keep, it reads the
block from disk as before. A lying instance digest is caught either way, nothing kept outlives its
instance or manifest, and what is kept never passes the limit.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable

import pytest
import trio
from trio.testing import MockClock

from meshnode.node.retained import RetainedBlocks
from meshnode.storage.records import ManifestRow
from protocol.cid import CID
from protocol.document import Signed
from protocol.lifecycle import ManifestState
from protocol.manifest import Manifest
from tests.meshnode.node.harness import HarnessNode, MemoryMesh, wait_done


def count_reads(node: HarnessNode) -> Counter[CID]:
    """Every block the node reads from its block store from now on (the real read still happens)."""
    blocks = node.ctx.storage.blocks
    real: Callable[..., bytes] = blocks.get
    reads: Counter[CID] = Counter()

    def get(cid: CID, *, verify: bool = True) -> bytes:
        reads[cid] += 1
        return real(cid, verify=verify)

    blocks.get = get  # type: ignore[method-assign]
    return reads


Fetched = tuple[HarnessNode, Signed[Manifest], Counter[CID]]


async def fetch(mesh: MemoryMesh, study: str, *, limit: int | None = None,
                lie: Callable[[Manifest], Manifest] | None = None) -> Fetched:
    """A shares the study with B (the manifest changed by `lie` and signed again by A, if given); B fetches it
    with what it keeps limited to `limit` bytes. Returns B, the manifest and B's block reads meanwhile."""
    a, b = mesh.add("a", "RGT", 50), mesh.add("b", "RJ1", 51)
    if limit is not None:
        b.fetcher.retained = RetainedBlocks(limit)
    reads = count_reads(b)
    peak = 0
    keep = b.fetcher.retained.keep

    def keep_and_watch(cid: CID, data: bytes) -> bool:
        nonlocal peak
        kept = keep(cid, data)
        peak = max(peak, b.fetcher.retained.nbytes)
        return kept

    b.fetcher.retained.keep = keep_and_watch  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        await mesh.run(nursery)
        signed = await mesh.share(a, study, ["RJ1"])
        if lie is not None:  # A signs and keeps the lying manifest as its own (it serves blocks under it)
            signed = dataclasses.replace(lie(signed.document), revision=signed.document.revision + 1).sign(a.ctx.key)
            m = signed.document
            a.store.save_manifest(ManifestRow(signed.cid, m.study_uid, "sent", m.sender_org, m.revision,
                                              ManifestState.SENT, int(a.ctx.clock()), m.expires_at, signed.encode(),
                                              m.recipients), m.block_order())
        await mesh.announce(a, b, signed)
        await wait_done(b, signed.cid, 600)
        nursery.cancel_scope.cancel()
    assert peak <= b.fetcher.retained.limit
    assert b.fetcher.retained.nbytes == 0 and len(b.fetcher.retained) == 0  # nothing outlives its manifest
    return b, signed, reads


async def test_instances_are_verified_from_the_bytes_as_they_arrived(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    b, signed, reads = await fetch(mesh, study)
    assert b.failed == {}
    assert len(b.completed[signed.cid]) == len(signed.document.instances)
    assert not reads, f"{len(reads)} block(s) read back from disk to verify their instance"
    assert b.ctx.storage.blocks.scrub().corrupt == ()  # and what is on disk is those very bytes


async def test_past_the_limit_blocks_are_read_back_and_the_study_still_verifies(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    b, signed, reads = await fetch(mesh, study, limit=3000)  # about three of the test study's 1 KiB blocks
    assert b.failed == {}
    assert len(b.completed[signed.cid]) == len(signed.document.instances)
    assert b.fetcher.retained.overflowed > 0
    assert reads and set(reads) <= set(signed.document.block_order())


def _digest_of_instance(index: int, digest: bytes) -> Callable[[Manifest], Manifest]:
    def lie(manifest: Manifest) -> Manifest:
        entries = list(manifest.instances)
        entries[index] = dataclasses.replace(entries[index], digest=digest)
        return dataclasses.replace(manifest, instances=tuple(entries))

    return lie


@pytest.mark.parametrize("limit", [None, 0], ids=["from memory", "from disk"])
async def test_a_sender_lying_about_an_instance_digest_is_caught_and_nothing_is_recorded(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str, limit: int | None) -> None:
    # every block matches its CID, so each is stored; the instance they make up is not what the manifest promises
    b, signed, reads = await fetch(mesh, study, limit=limit, lie=_digest_of_instance(4, bytes(32)))
    assert signed.cid in b.failed and "does not match its manifest digest" in b.failed[signed.cid]
    assert signed.cid not in b.completed
    assert b.store.instances(signed.document.study_uid) == []
    assert bool(reads) == (limit == 0)


def test_what_is_kept_never_passes_the_limit_and_is_released() -> None:
    kept = RetainedBlocks(limit=10)
    a, b, c = (CID.of(bytes([i])) for i in range(3))
    assert kept.keep(a, b"x" * 6)
    assert not kept.keep(b, b"y" * 5)  # 11 > 10: not kept, counted
    assert kept.keep(a, b"x" * 6) and kept.nbytes == 6  # the same block twice counts once
    assert kept.keep(c, b"z" * 4) and kept.nbytes == 10
    assert kept.get(b) is None and kept.get(c) == b"zzzz" and kept.overflowed == 1
    kept.release([a, b])
    assert kept.nbytes == 4 and len(kept) == 1 and kept.get(a) is None
    assert kept.keep(b, b"y" * 5) and kept.nbytes == 9
