"""File ingest back-pressure (review of issue 12, finding 3): while a group commit is stalled (a slow
fsync), the files staged meanwhile wait in memory for the next group; they are capped at
PENDING_GROUPS x batch_size (plus one task's files): the ingest waits for the commit instead of staging on."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from meshnode.dicom import synthetic
from meshnode.storage.blockstore import StagedBlock
from meshnode.storage.node_storage import NodeStorage
from meshnode.study.ingest import PENDING_GROUPS, TASK_FILES, Ingester

BATCH = 4
FILES = 120


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[NodeStorage]:
    home = tmp_path / "node"
    home.mkdir()
    s = NodeStorage.open(home)
    yield s
    s.close()


def test_a_stalled_commit_holds_back_staging(storage: NodeStorage, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    synthetic.generate_ct_study(tmp_path / "ct", slices=FILES, rows=16, columns=16, seed=5)
    cap = PENDING_GROUPS * BATCH
    ingester = Ingester(storage, workers=2, batch_size=BATCH)
    overflow = threading.Event()  # set once more than the cap waits behind the stalled commit
    groups: list[int] = []

    real_collect = ingester._collect

    def collect(item, pending, report, progress, total):  # type: ignore[no-untyped-def]
        real_collect(item, pending, report, progress, total)
        if len(pending) >= cap + TASK_FILES:
            overflow.set()

    real_commit = storage.blocks.commit_staged

    def stalled_first(staged: Sequence[StagedBlock], note: bytes | None = None) -> None:
        if not groups:
            groups.append(len(staged))
            overflow.wait(2)  # the disk stalls on the first group (until the ingest overruns the cap, if it does)
        real_commit(staged, note)

    sizes: list[int] = []
    real_group = ingester._commit

    def commit(pending, report):  # type: ignore[no-untyped-def]
        sizes.append(len(pending))
        real_group(pending, report)

    monkeypatch.setattr(ingester, "_collect", collect)
    monkeypatch.setattr(storage.blocks, "commit_staged", stalled_first)
    monkeypatch.setattr(ingester, "_commit", commit)
    report = ingester.ingest([tmp_path / "ct"])
    assert report.added == FILES and sum(sizes) == FILES
    assert not overflow.is_set()
    assert max(sizes) < cap + TASK_FILES, sizes
