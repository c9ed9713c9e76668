"""A share's CRC-32s are computed in the background after it is made: the table holds every shown instance's
CRC-32 (as zlib computes it over the stored bytes), a full queue drops a share without blocking the staff
request, and a corrupt block stops only that share's warm-up."""

from __future__ import annotations

import zlib
from pathlib import Path

import trio
import trio.testing

from meshnode.dicom import synthetic
from meshnode.storage.dbthread import DatabaseThread
from meshnode.storage.node_storage import NodeStorage
from meshnode.study.ingest import Ingester
from meshnode.study import media_set
from meshnode.web.crc_warmup import CrcWarmup


def _stored(tmp_path: Path, seed: int = 3) -> tuple[NodeStorage, DatabaseThread, str, list[Path]]:
    home = tmp_path / "node"
    home.mkdir(exist_ok=True)
    storage = NodeStorage.open(home)
    files = synthetic.generate_ct_study(tmp_path / f"ct{seed}", slices=3, rows=32, columns=32, seed=seed)
    Ingester(storage, chunk_size=4096).ingest(files)
    [study] = [s.attributes.study_uid for s in storage.metadata.studies()]
    return storage, DatabaseThread(storage.metadata), study, files


async def test_a_share_is_warmed_in_the_background(tmp_path: Path) -> None:
    storage, db, study, files = _stored(tmp_path)
    media_set._crc_cache.clear()
    warmup = CrcWarmup(db, storage)
    async with trio.open_nursery() as nursery:
        await nursery.start(warmup.run)
        warmup.wanted((study,))
        with trio.fail_after(60):
            while warmup.warmed < len(files):
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    records = storage.metadata.instances(study)
    known = storage.metadata.instance_crcs([r.digest for r in records])
    expected = {f.read_bytes() for f in files}
    assert len(known) == len(files)
    assert {crc for _, crc in known.values()} == {zlib.crc32(data) for data in expected}
    storage.close()


async def test_a_full_queue_drops_without_blocking(tmp_path: Path) -> None:
    storage, db, study, _ = _stored(tmp_path)
    warmup = CrcWarmup(db, storage, queue=1)
    warmup.wanted((study,))
    warmup.wanted((study,))  # nobody is reading: the second is dropped at once, not awaited
    assert warmup.dropped == 1
    storage.close()


async def test_a_corrupt_block_stops_only_that_share(tmp_path: Path) -> None:
    storage, db, study, files = _stored(tmp_path)
    other_files = synthetic.generate_ct_study(tmp_path / "other", slices=2, rows=32, columns=32, seed=4)
    Ingester(storage, chunk_size=4096).ingest(other_files)
    [other] = [s.attributes.study_uid for s in storage.metadata.studies() if s.attributes.study_uid != study]
    media_set._crc_cache.clear()
    [first, *_] = storage.metadata.instances(study)
    path = storage.blocks.path_of(first.blocks[0])
    path.write_bytes(b"corrupt" + path.read_bytes()[7:])
    warmup = CrcWarmup(db, storage)
    async with trio.open_nursery() as nursery:
        await nursery.start(warmup.run)
        warmup.wanted((study,))
        warmup.wanted((other,))  # the next share is still warmed
        with trio.fail_after(60):
            while warmup.warmed < len(other_files):
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    known = storage.metadata.instance_crcs([r.digest for r in storage.metadata.instances(other)])
    assert len(known) == len(other_files)
    assert first.digest not in storage.metadata.instance_crcs([first.digest])  # nothing stored for the bad one
    storage.close()
