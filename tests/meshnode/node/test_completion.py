"""Verifying received instances: the full check, and the shortcut for instances verified before."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meshnode.dicom import synthetic
from meshnode.study.ingest import Ingester
from meshnode.study.manifest_builder import build_manifest
from meshnode.node.completion import (
    ContentMismatchError,
    InstanceMismatchError,
    check_summary,
    same_bytes,
    verify_instance,
    verify_instances,
)
from meshnode.storage.node_storage import NodeStorage
from protocol.errors import MeshError
from protocol.manifest import Manifest, Priority, Purpose
from tests.protocol.factories import NODE_A


@pytest.fixture
def stored(tmp_path: Path) -> Iterator[tuple[NodeStorage, Manifest]]:
    home = tmp_path / "node"
    home.mkdir()
    storage = NodeStorage.open(home)
    made = synthetic.generate_ct_study(tmp_path / "ct", slices=3, rows=64, columns=64, seed=5)
    Ingester(storage, chunk_size=2048).ingest(made)
    [study] = storage.metadata.studies()
    instances = storage.metadata.instances(study.attributes.study_uid)
    manifest = build_manifest(instances, sender_org="RGT", sender_peer=NODE_A.peer_id, recipients=["RJ1"],
                              priority=Priority.URGENT, purpose=Purpose.CARE, created_at=1000, expires_at=2000)
    try:
        yield storage, manifest
    finally:
        storage.close()


def test_an_instance_verified_before_is_not_read_again_but_gives_the_same_record(
        stored: tuple[NodeStorage, Manifest]) -> None:
    storage, manifest = stored
    full = verify_instance(storage.blocks, manifest, 1)
    entry = manifest.instances[1]
    assert len(entry.blocks) > 1 and same_bytes(entry, full)
    storage.blocks.path_of(entry.blocks[-1]).unlink()  # a pixel block: only a full check reads it
    with pytest.raises(MeshError):
        verify_instance(storage.blocks, manifest, 1)
    assert verify_instance(storage.blocks, manifest, 1, known=full) == full


def test_a_record_of_other_bytes_is_no_shortcut(stored: tuple[NodeStorage, Manifest]) -> None:
    storage, manifest = stored
    full = verify_instance(storage.blocks, manifest, 0)
    other = verify_instance(storage.blocks, manifest, 2)
    for differing in (other, dataclasses.replace(full, digest=bytes(32)), dataclasses.replace(full, size=full.size + 1),
                      dataclasses.replace(full, blocks=full.blocks[:-1])):
        assert not same_bytes(manifest.instances[0], differing)
    # the full check runs, and catches an instance whose bytes are not what the manifest promises
    first_block = manifest.instances[0].blocks[0]
    storage.blocks.path_of(first_block).write_bytes(b"not the header")
    with pytest.raises(InstanceMismatchError):
        verify_instance(storage.blocks, manifest, 0, check_blocks=False, known=other)


# -- the manifest against its own DICOM (issue 11, finding 4) ------------------------------------------
OTHER_UID = "1.2.826.0.1.3680043.8.498.99999999"


def _with_entry(manifest: Manifest, index: int, **changes: object) -> Manifest:
    entries = list(manifest.instances)
    entries[index] = dataclasses.replace(entries[index], **changes)  # type: ignore[arg-type]
    return dataclasses.replace(manifest, instances=tuple(entries))


def _with_summary(manifest: Manifest, **changes: object) -> Manifest:
    return dataclasses.replace(manifest, summary=dataclasses.replace(manifest.summary, **changes))  # type: ignore[arg-type]


def _every_series(manifest: Manifest, series_uid: str) -> Manifest:
    return dataclasses.replace(manifest, instances=tuple(dataclasses.replace(e, series_uid=series_uid)
                                                         for e in manifest.instances))


@pytest.mark.parametrize(("field", "change"), [
    ("StudyInstanceUID", lambda m: dataclasses.replace(m, study_uid=OTHER_UID)),
    ("SeriesInstanceUID", lambda m: _every_series(m, OTHER_UID)),
    ("SOPInstanceUID", lambda m: _with_entry(m, 0, sop_instance_uid=OTHER_UID)),
    ("SOPClassUID", lambda m: _with_entry(m, 0, sop_class_uid="1.2.840.10008.5.1.4.1.1.4")),
    ("PatientID", lambda m: _with_summary(m, patient_id="x")),
    ("PatientName", lambda m: _with_summary(m, patient_name="x")),
])
def test_an_instance_whose_header_disagrees_with_its_manifest_fails_naming_the_field_not_the_value(
        stored: tuple[NodeStorage, Manifest], field: str, change: Callable[[Manifest], Manifest]) -> None:
    storage, manifest = stored
    honest = verify_instance(storage.blocks, manifest, 0)
    hostile = change(manifest)
    for known in (None, honest):  # the shortcut for instances verified before checks the header too
        with pytest.raises(ContentMismatchError, match=field) as raised:
            verify_instance(storage.blocks, hostile, 0, known=known)
        for value in (honest.study.patient_name, honest.study.patient_id, "'x'"):
            assert value not in str(raised.value)
    with pytest.raises(ContentMismatchError):
        verify_instances(storage.blocks, hostile)


def test_the_summary_must_be_what_the_instances_make_up(stored: tuple[NodeStorage, Manifest]) -> None:
    storage, manifest = stored
    records = verify_instances(storage.blocks, manifest)
    check_summary(manifest, records)
    with pytest.raises(ContentMismatchError, match="Modality"):
        verify_instances(storage.blocks, _with_summary(manifest, modality="MR"))
    with pytest.raises(ContentMismatchError, match="instance count"):
        check_summary(manifest, records[:-1])
    two_series = _every_series(manifest, OTHER_UID)
    with pytest.raises(ContentMismatchError, match="series count"):
        check_summary(two_series, [*records[:1], *(dataclasses.replace(
            r, series=dataclasses.replace(r.series, series_uid=OTHER_UID)) for r in records[1:])])
    check_summary(_with_summary(manifest, modality=""), records)  # stating no modality is no claim
    with pytest.raises(ContentMismatchError, match="Modality"):
        check_summary(_with_summary(manifest, modality="CT\\MR"), records)  # one not in any header
    # a series whose instances disagree among themselves: the sender states the one it stored last
    mixed = [records[0], *(dataclasses.replace(r, series=dataclasses.replace(r.series, modality="OT"))
                           for r in records[1:])]
    check_summary(_with_summary(manifest, modality="OT"), mixed)
    check_summary(_with_summary(manifest, modality="CT"), mixed)
    with pytest.raises(ContentMismatchError, match="Modality"):
        check_summary(_with_summary(manifest, modality="MR"), mixed)


def test_records_take_their_attributes_from_the_headers(stored: tuple[NodeStorage, Manifest]) -> None:
    storage, manifest = stored
    local = {r.sop_instance_uid: r for r in storage.metadata.instances(manifest.study_uid)}
    for record in verify_instances(storage.blocks, manifest):
        ingested = local[record.sop_instance_uid]
        assert record.study == ingested.study and record.series == ingested.series
        assert (record.instance_number, record.rows, record.columns) == (
            ingested.instance_number, ingested.rows, ingested.columns)


def test_blocks_that_are_not_dicom_fail_the_content_check(stored: tuple[NodeStorage, Manifest]) -> None:
    storage, manifest = stored
    junk = bytes(range(256)) * 40
    cid = storage.blocks.put(junk)
    hostile = _with_entry(manifest, 0, blocks=(cid,), size=len(junk), digest=hashlib.sha256(junk).digest())
    with pytest.raises(ContentMismatchError, match="header cannot be read"):
        verify_instance(storage.blocks, hostile, 0)


def test_honest_manifests_of_every_kind_of_study_pass_the_content_check(tmp_path: Path) -> None:
    """No false alarms: compressed, multi-frame and projection studies, headers longer than a block."""
    home = tmp_path / "node"
    home.mkdir()
    storage = NodeStorage.open(home)
    try:
        src = tmp_path / "src"
        synthetic.generate_compressed(src / "rle", images=2, rows=64, columns=64, seed=2)
        synthetic.generate_multiframe(src / "mf", frames=4, rows=64, columns=64, seed=3)
        synthetic.generate_dx_study(src / "dx", images=2, rows=128, columns=128, seed=4)
        Ingester(storage, chunk_size=512).ingest([src])  # every header spans several blocks
        studies = storage.metadata.studies()
        assert len(studies) == 3
        for study in studies:
            instances = storage.metadata.instances(study.attributes.study_uid)
            assert len(instances[0].blocks) > 2
            manifest = build_manifest(instances, sender_org="RGT", sender_peer=NODE_A.peer_id, recipients=["RJ1"],
                                      priority=Priority.URGENT, purpose=Purpose.CARE, created_at=1000,
                                      expires_at=2000)
            records = verify_instances(storage.blocks, manifest)
            assert [r.study for r in records] == [i.study for i in instances]
            known = {r.sop_instance_uid: r for r in records}
            for index, entry in enumerate(manifest.instances):
                assert verify_instance(storage.blocks, manifest, index, check_blocks=False,
                                       known=known[entry.sop_instance_uid]) == known[entry.sop_instance_uid]
    finally:
        storage.close()
