"""FileStager (one read per byte, hashing in place, overlapped writes) against the reference split.

The reference is what ingest did before the stager: plan_instance(path), then iter_instance_blocks
and HashingBlocks. Every file must give the same outcome both ways: the same refusal (error class and
reason), or the same record, blocks and CIDs, staged as temp files holding exactly those bytes.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from meshnode.dicom import synthetic
from meshnode.dicom.blocks import HashingBlocks, iter_instance_blocks
from meshnode.dicom.errors import InstanceChangedError
from meshnode.dicom.layout import InstancePlan, plan_instance, plan_layout
from meshnode.storage.blockstore import BlockStore
from meshnode.storage.node_storage import NodeStorage
from meshnode.storage.records import InstanceRecord, Source
from meshnode.study import staging
from meshnode.study.ingest import Ingester
from meshnode.study.staging import FileStager, instance_record
from protocol.cid import CID
from protocol.errors import MeshError
from tests.meshnode.dicom.test_pydicom_corpus import CORPUS, DATA_ROOT

FUZZ_CORPUS = Path(__file__).parents[2] / "fuzz" / "corpus" / "dicom_ingest_scan"


def reference(path: Path, chunk_size: int) -> tuple[InstanceRecord, list[bytes]] | MeshError:
    try:
        plan = plan_instance(path)
    except MeshError as exc:
        return exc
    hashed = HashingBlocks(iter_instance_blocks(path, plan, chunk_size))
    blocks = list(hashed)
    record = instance_record(plan, [CID.of(b) for b in blocks], [len(b) for b in blocks], hashed.size,
                             hashed.digest(), Source.LOCAL)
    return record, blocks


def staged(store: BlockStore, path: Path, chunk_size: int) -> tuple[InstanceRecord, dict[CID, bytes]] | MeshError:
    stager = FileStager(store, chunk_size, depth=2)
    try:
        try:
            pending = stager.stage(path)
        except MeshError as exc:
            return exc
        stager.drain()
        result = pending.result()
    finally:
        stager.close()
    return result.record, {b.cid: b.tmp.read_bytes() for b in result.staged}


def assert_same_outcome(store: BlockStore, path: Path, chunk_size: int) -> None:
    expected = reference(path, chunk_size)
    actual = staged(store, path, chunk_size)
    if isinstance(expected, MeshError):
        assert isinstance(actual, MeshError), f"{path.name}: the stager accepted what ingest refused"
        assert (type(actual), str(actual)) == (type(expected), str(expected))
    else:
        assert not isinstance(actual, MeshError), f"{path.name}: the stager refused what ingest accepted: {actual}"
        record, written = actual
        assert record == expected[0]
        assert written == {CID.of(b): b for b in expected[1]}  # every block staged, byte for byte
    for tmp in store.tmp_dir.iterdir():
        tmp.unlink()


@pytest.mark.parametrize("name", CORPUS)
def test_every_bundled_file_stages_as_the_reference_splits_it(name: str, tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "store")
    for chunk_size in (512, 1 << 20):
        assert_same_outcome(store, DATA_ROOT / name, chunk_size)


def test_damaged_files_are_refused_alike(tmp_path: Path) -> None:
    """Cuts and flipped bytes of a real slice, and the fuzzer's corpus: the same refusal or the same blocks."""
    [ct] = synthetic.generate_ct_study(tmp_path / "ct", slices=1, rows=32, columns=32, seed=5)
    data = ct.read_bytes()
    rng = random.Random(1205)
    variants = [data[:cut] for cut in range(0, len(data), 37)]
    for _ in range(300):
        flipped = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            flipped[rng.randrange(1800)] ^= 1 << rng.randrange(8)  # in the header (the pixel value ends later)
        variants.append(bytes(flipped))
    variants += [p.read_bytes() for p in sorted(FUZZ_CORPUS.iterdir())]
    store = BlockStore(tmp_path / "store")
    refused = 0
    for i, variant in enumerate(variants):
        path = tmp_path / f"variant-{i}.dcm"
        path.write_bytes(variant)
        refused += isinstance(reference(path, 512), MeshError)
        assert_same_outcome(store, path, 512)
    assert 0 < refused < len(variants)  # both outcomes were compared


def test_a_file_that_shrinks_while_staged_is_refused_and_leaves_nothing(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    [ct] = synthetic.generate_ct_study(tmp_path / "ct", slices=1, rows=64, columns=64, seed=6)
    def plan_then_truncate(source: Path | bytes, layout: object) -> InstancePlan:
        plan = plan_layout(source, layout)  # type: ignore[arg-type]
        with ct.open("r+b") as fh:  # a real change to the file, between its scan and its pixel data read
            fh.truncate(plan.header_end + 100)
        return plan

    monkeypatch.setattr(staging, "plan_layout", plan_then_truncate)
    store = BlockStore(tmp_path / "store")
    outcome = staged(store, ct, 512)
    assert isinstance(outcome, InstanceChangedError) and "shrank" in str(outcome)
    assert list(store.tmp_dir.iterdir()) == []  # the blocks already written are gone


def test_one_worker_and_two_give_the_same_records(tmp_path: Path) -> None:
    src = tmp_path / "src"
    synthetic.generate_ct_study(src / "ct", slices=12, rows=64, columns=64, seed=1)
    synthetic.generate_compressed(src / "rle", images=2, rows=64, columns=64, seed=2)
    synthetic.generate_multiframe(src / "mf", frames=4, rows=64, columns=64, seed=3)
    (src / "junk.dcm").write_bytes(b"not dicom")
    records = []
    for workers in (1, 2):
        home = tmp_path / f"node-{workers}"
        home.mkdir()
        storage = NodeStorage.open(home)
        try:
            report = Ingester(storage, chunk_size=4096, workers=workers, batch_size=5).ingest([src])
            assert report.added == 15 and len(report.skipped) == 1
            records.append(sorted((i for s in storage.metadata.studies()
                                   for i in storage.metadata.instances(s.attributes.study_uid)),
                                  key=lambda i: i.sop_instance_uid))
            assert list(storage.blocks.tmp_dir.iterdir()) == []
        finally:
            storage.close()
    one, two = records
    assert [(i.sop_instance_uid, i.blocks, i.block_sizes, i.digest, i.size) for i in one] == \
        [(i.sop_instance_uid, i.blocks, i.block_sizes, i.digest, i.size) for i in two]
