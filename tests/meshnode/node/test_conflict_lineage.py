"""Finding 1 end to end in one process (tests/meshnode/node/harness.py, real Sender, Fetcher, manifests and
verification): a foreign organisation announces a study that reuses this node's own Study Instance UID,
with one instance under one of its SOP Instance UIDs (other bytes) and one new instance. The fetch
completes; the reused UID is held as a conflict (never a replacement); this node's next revision of its
own study announces its own bytes only."""

from __future__ import annotations

from pathlib import Path

import pydicom
import trio
from trio.testing import MockClock

from meshnode.storage.conflicts import KIND_STORE
from meshnode.study.renaming import fresh_uid, store_renamed
from protocol.conflict import ConflictPolicy, ConflictState, Decision
from tests.meshnode.node.conftest import CHUNK
from tests.meshnode.node.harness import MemoryMesh, ingest_study, wait_done


def forged_copy(source: Path, out: Path) -> tuple[str, str]:
    """Two of the victim's files, rewritten by another organisation: the first with the same UIDs and other
    pixels, the second under a new SOP Instance UID (same Study UID). Returns (reused UID, new UID)."""
    out.mkdir(parents=True)
    first, second = sorted(source.iterdir())[:2]
    ds = pydicom.dcmread(first)
    pixels = bytearray(ds.PixelData)
    pixels[:16] = b"\xff" * 16
    ds.PixelData = bytes(pixels)
    ds.save_as(out / "a.dcm", enforce_file_format=True)
    reused = str(ds.SOPInstanceUID)
    ds2 = pydicom.dcmread(second)
    ds2.SOPInstanceUID = "1.2.3.666.1"
    ds2.file_meta.MediaStorageSOPInstanceUID = "1.2.3.666.1"
    ds2.save_as(out / "b.dcm", enforce_file_format=True)
    return reused, "1.2.3.666.1"


async def test_a_foreign_manifest_reusing_this_nodes_study_uid(autojump_clock: MockClock, tmp_path: Path,
                                                               source: Path) -> None:
    victim_study = ingest_study(tmp_path / "b", source, chunk_size=CHUNK)
    reused, new_uid = forged_copy(source, tmp_path / "forged")
    assert ingest_study(tmp_path / "a", tmp_path / "forged", chunk_size=CHUNK) == victim_study
    mesh = MemoryMesh(tmp_path)
    try:
        attacker, victim = mesh.add("a", "RXX", 50), mesh.add("b", "RJ1", 51)
        own = {i.sop_instance_uid: i.digest for i in victim.store.instances(victim_study)}
        async with trio.open_nursery() as nursery:
            await mesh.run(nursery)
            signed = await mesh.share(attacker, victim_study, ["RJ1"])
            await mesh.announce(attacker, victim, signed)
            await wait_done(victim, signed.cid, 600)
            assert victim.failed == {} and len(victim.completed[signed.cid]) == 2  # the fetch completes
            # the reused UID: held for a human, never a replacement; the victim's instance as it was
            [row] = victim.store.conflicts()
            assert row.state is ConflictState.PENDING and row.kind == KIND_STORE
            assert row.policy is ConflictPolicy.REJECT and "RXX" in row.source and row.manifest_id == str(signed.cid)
            assert row.sop_instance_uid == reused and row.existing_digest == own[reused]
            stored = {i.sop_instance_uid: i.digest for i in victim.store.instances(victim_study)}
            assert stored[reused] == own[reused]
            # this node's next revision of its own study: its own instances and bytes, nothing of RXX's
            mine = await victim.sender.share_study(victim_study, ["RAJ"], signed.document.priority,
                                                   signed.document.purpose)
            announced = {i.sop_instance_uid: i.digest for i in mine.document.instances}
            assert announced == own and new_uid not in announced
            # a person keeps both: the renamed copy stays RXX's (its origin), so it is never announced as ours
            assert row.newcomer is not None
            renamed = store_renamed(victim.ctx.storage, row.newcomer, fresh_uid(), CHUNK, row.source)
            assert renamed.origin == "RXX"
            victim.store.decide_conflict(row.conflict_id, Decision.KEEP_BOTH, "user:alice", [], 0, renamed=renamed)
            again = await victim.sender.share_study(victim_study, ["RAJ"], signed.document.priority,
                                                    signed.document.purpose)
            assert {i.sop_instance_uid: i.digest for i in again.document.instances} == own
            nursery.cancel_scope.cancel()
    finally:
        mesh.close()
