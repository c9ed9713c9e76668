"""`meshnode ingest` and SOP Instance UID conflicts: the node default (reject), replace, keep-both."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest

from meshnode.cli.main import main
from meshnode.dicom import synthetic
from meshnode.storage.node_storage import NodeStorage
from meshnode.study.ingest import Ingester
from protocol.conflict import ConflictPolicy, ConflictState
from tests.adversary.test_conflicts import modified


@pytest.fixture
def study(tmp_path: Path) -> list[Path]:
    return synthetic.generate_ct_study(tmp_path / "ct", slices=2, rows=32, columns=32, seed=6)


def pydicom_digest(path: Path) -> bytes:
    import hashlib
    return hashlib.sha256(path.read_bytes()).digest()


def ingest(storage: NodeStorage, files: list[Path], policy: ConflictPolicy) -> tuple[int, int]:
    report = Ingester(storage, workers=1, chunk_size=4096, conflict_policy=policy).ingest(files)
    return report.conflicts, report.replaced


def test_policies(tmp_path: Path, study: list[Path]) -> None:
    (tmp_path / "node").mkdir()
    storage = NodeStorage.open(tmp_path / "node")
    try:
        Ingester(storage, workers=1).ingest(study)
        [summary] = storage.metadata.studies()
        uid = summary.attributes.study_uid
        first = modified(study[0], tmp_path / "a" / "x.dcm")
        assert ingest(storage, [first], ConflictPolicy.REJECT) == (1, 0)
        assert storage.metadata.study(uid).instance_count == 2  # type: ignore[union-attr]

        ds = pydicom.dcmread(study[0])
        ds.SeriesDescription = "SECOND"
        second = tmp_path / "b" / "y.dcm"
        second.parent.mkdir()
        ds.save_as(second, enforce_file_format=True)
        assert ingest(storage, [second], ConflictPolicy.REPLACE) == (0, 1)
        stored = {i.sop_instance_uid: i for i in storage.metadata.instances(uid)}
        assert stored[ds.SOPInstanceUID].digest == pydicom_digest(second)
        assert len(stored) == 2

        ds.SeriesDescription = "THIRD"
        third = tmp_path / "c" / "z.dcm"
        third.parent.mkdir()
        ds.save_as(third, enforce_file_format=True)
        assert ingest(storage, [third], ConflictPolicy.KEEP_BOTH) == (1, 0)
        kept = [r for r in storage.metadata.conflicts() if r.state is ConflictState.KEPT_BOTH]
        assert len(kept) == 1 and kept[0].new_uid.startswith("2.25.")
        assert {i.sop_instance_uid for i in storage.metadata.instances(uid)} >= {kept[0].new_uid, ds.SOPInstanceUID}
        # the first newcomer still waits for a human
        assert len(storage.metadata.conflicts(ConflictState.PENDING)) == 1
    finally:
        storage.close()


def test_cli_reports_held_conflicts(tmp_path: Path, study: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "node"
    home.mkdir()
    NodeStorage.open(home).close()
    assert main(["ingest", "--home", str(home), "--no-progress", *map(str, study)]) == 0
    capsys.readouterr()
    assert main(["ingest", "--home", str(home), "--no-progress", str(modified(study[0], tmp_path / "m" / "a.dcm"))]) == 0
    out = capsys.readouterr().out
    assert "1 UID conflict(s) held (policy reject: `meshnode conflicts`)" in out


def test_keep_both_resend_is_a_duplicate_not_another_copy(tmp_path: Path, study: list[Path]) -> None:
    """Review finding 8: the same newcomer sent again after keep-both renamed it adds nothing."""
    (tmp_path / "node").mkdir()
    storage = NodeStorage.open(tmp_path / "node")
    try:
        Ingester(storage, workers=1).ingest(study)
        uid = storage.metadata.studies()[0].attributes.study_uid
        newcomer = modified(study[0], tmp_path / "a" / "x.dcm")
        counts = []
        for _ in range(3):
            ingest(storage, [newcomer], ConflictPolicy.KEEP_BOTH)
            counts.append(storage.metadata.study(uid).instance_count)  # type: ignore[union-attr]
        assert counts == [3, 3, 3]
        assert len([r for r in storage.metadata.conflicts() if r.state is ConflictState.KEPT_BOTH]) == 1
    finally:
        storage.close()


def test_the_renamed_instance_records_its_original_uid(tmp_path: Path, study: list[Path]) -> None:
    """Review finding 16: the keep-both copy carries an Original Attributes Sequence item (PS3.3 C.12.1.1.9)
    with the original SOP Instance UID, reason CORRECT, the modifying system, when, and who sent it."""
    (tmp_path / "node").mkdir()
    storage = NodeStorage.open(tmp_path / "node")
    try:
        Ingester(storage, workers=1).ingest(study)
        uid = storage.metadata.studies()[0].attributes.study_uid
        newcomer = modified(study[0], tmp_path / "a" / "x.dcm")
        ingest(storage, [newcomer], ConflictPolicy.KEEP_BOTH)
        [kept] = [r for r in storage.metadata.conflicts() if r.state is ConflictState.KEPT_BOTH]
        [record] = [i for i in storage.metadata.instances(uid) if i.sop_instance_uid == kept.new_uid]
        data = b"".join(storage.blocks.get(c, verify=True) for c in record.blocks)
    finally:
        storage.close()
    ds = pydicom.dcmread(io.BytesIO(data))
    original = pydicom.dcmread(newcomer)
    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID == kept.new_uid
    item = ds.OriginalAttributesSequence[-1]
    assert [str(m.SOPInstanceUID) for m in item.ModifiedAttributesSequence] == [str(original.SOPInstanceUID)]
    assert item.ReasonForTheAttributeModification == "CORRECT"
    assert item.ModifyingSystem.startswith("dicom-mesh") and item.SourceOfPreviousValues == kept.source[:64]
    assert len(str(item.AttributeModificationDateTime)) >= 14
    assert ds.PixelData == original.PixelData  # the pixels as they came
