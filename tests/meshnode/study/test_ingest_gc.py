"""File ingest vs a node's gc (review of issue 12, finding 1): staging keeps a block file already stored
under its CID instead of writing its own; if gc deletes it before the group's metadata commits (a node
running gc after a recall while `meshnode ingest` runs beside it), the group must fail, recording nothing.
(Checked just before the commit: it narrows the window to the commit itself, which is not locked against
another process's gc; see the commit message.)"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from meshnode.dicom import synthetic
from meshnode.storage.blockstore import BlockMissingError, StagedBlock
from meshnode.storage.node_storage import NodeStorage
from meshnode.study.ingest import Ingester


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[NodeStorage]:
    home = tmp_path / "node"
    home.mkdir()
    s = NodeStorage.open(home)
    yield s
    s.close()


def test_blocks_gc_removed_before_the_commit_fail_the_group(storage: NodeStorage, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    synthetic.generate_ct_study(src, slices=2, rows=64, columns=64, seed=5)
    first = Ingester(storage, chunk_size=4096, workers=1).ingest([src])
    assert first.added == 2
    (study,) = first.studies
    storage.metadata.forget_study(study, [], int(time.time() * 1000))  # a recall: blocks now unreferenced

    real = storage.blocks.commit_staged

    def commit_then_gc(staged: Sequence[StagedBlock], note: bytes | None = None) -> None:
        real(staged, note)
        storage.gc(orphan_grace_s=3600)  # the node's gc, between the blocks and the metadata

    monkeypatch.setattr(storage.blocks, "commit_staged", commit_then_gc)
    with pytest.raises(BlockMissingError):
        Ingester(storage, chunk_size=4096, workers=1).ingest([src])
    assert storage.metadata.instances(study) == []

    monkeypatch.setattr(storage.blocks, "commit_staged", real)
    again = Ingester(storage, chunk_size=4096, workers=1).ingest([src])
    assert again.added == 2
    for rec in storage.metadata.instances(study):
        assert all(storage.blocks.has(c) for c in rec.blocks)
