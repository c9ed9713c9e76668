"""A research share between real node processes: the recipient receives a de-identified copy (its bytes
scanned for the original identifiers), and the original study's blocks are never served to it."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest

from meshnode.demo.mesh import MeshDemo
from meshnode.dicom import synthetic
from meshnode.storage.node_storage import NodeStorage
from meshnode.storage.records import hash_uid

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ORGS = [("a", "RGT", "Org A"), ("b", "RES", "Research Org")]


def test_a_research_share_arrives_de_identified_and_the_original_is_never_served(mesh: MeshDemo,
                                                                                  tmp_path: Path) -> None:
    nodes = mesh.setup(ORGS)
    a, b = nodes["a"], nodes["b"]
    study, files = mesh.generate_and_ingest(a, 6, rows=64, columns=64)
    original = [pydicom.dcmread(f) for f in files]
    result = mesh.cli(a, "share", study, "--to", "RES", "--purpose", "research", "--deid-project", "lung-ai",
                      "--deid-option", "retain_longitudinal_temporal")
    assert result["state"] == "shared", result
    manifest = result["manifest_id"]
    mesh.wait_for(lambda: mesh.delivered(a, manifest, ["RES"]), 90, "the research copy's receipt")
    entry = mesh.inbox_entry(b, manifest)
    assert entry is not None and entry["purpose"] == "research"
    copy_uid = entry["study_uid"]
    assert copy_uid != study
    # the bytes the recipient holds: no original identifier, pixel data byte-exact, pseudonyms consistent
    out = tmp_path / "out-b"
    mesh.cli(b, "export", copy_uid, str(out))
    received = sorted(out.rglob("*.dcm"))
    assert len(received) == len(files)
    forbidden = [study.encode(), synthetic.DEFAULT_PATIENT_ID.encode(), b"19700101",
                 *(str(ds.SOPInstanceUID).encode() for ds in original),
                 *(part.encode() for part in str(synthetic.DEFAULT_PATIENT_NAME).split("^") if len(part) > 2)]
    pixels = {bytes(ds.PixelData) for ds in original}
    patients = set()
    for path in received:
        data = path.read_bytes()
        for value in forbidden:
            assert value not in data, (path.name, value)
        ds = pydicom.dcmread(io.BytesIO(data))
        assert ds.PatientIdentityRemoved == "YES" and ds.StudyInstanceUID == copy_uid
        assert bytes(ds.PixelData) in pixels
        patients.add(str(ds.PatientID))
    assert len(patients) == 1 and synthetic.DEFAULT_PATIENT_ID not in patients
    # the original study was never announced, and every block served went under the research manifest
    outbox = mesh.cli(a, "outbox")
    assert [r["manifest_id"] for r in outbox] == [manifest] and outbox[0]["study_uid"] == copy_uid
    assert [r["manifest_id"] for r in mesh.cli(b, "inbox")] == [manifest]
    log = mesh.audit(a)
    served = [e for e in log if e["action"] == "blocks-served"]
    assert served and {e["manifest_id"] for e in served} == {manifest}
    assert hash_uid(study) not in {e["study"] for e in served}
    [research] = [e for e in log if e["action"] == "research-share"]
    assert research["study"] == hash_uid(study) and research["manifest_id"] == manifest
    assert hash_uid(copy_uid) in research["detail"]
    # re-identification at the sender, through its CLI and control API: audited with the requester
    relink = mesh.cli(a, "deid", "export-relink", "--project", "lung-ai", "--user", "dpo.smith")
    assert {"kind": "patient", "pseudonym": next(iter(patients)), "original": synthetic.DEFAULT_PATIENT_ID} in relink
    assert {"kind": "study", "pseudonym": copy_uid, "original": study} in relink
    assert mesh.cli(a, "deid", "held") == []
    exports = [e for e in mesh.audit(a) if e["action"] == "deid-relink-export"]
    assert [e["actor"] for e in exports] == ["local:dpo.smith"]
    # none of the original's own blocks is on the recipient's disk: the header blocks (identifiers) differ;
    # pixel data blocks, byte-identical in the copy (blocks are cut at the pixel data), are the copy's too
    mesh.stop(b)
    mesh.stop(a)
    storage = NodeStorage.open(b.home)
    try:
        a_storage = NodeStorage.open(a.home)
        try:
            original_cids = {c for r in a_storage.metadata.instances(study) for c in r.blocks}
        finally:
            a_storage.close()
        copy_cids = {c for r in storage.metadata.instances(copy_uid) for c in r.blocks}
        only_original = original_cids - copy_cids
        assert len(only_original) >= len(files)  # at least each instance's header block
        assert not any(storage.blocks.has(c) for c in only_original)
    finally:
        storage.close()


def test_a_held_research_share_is_released_by_a_person_without_the_risky_instance(mesh: MeshDemo,
                                                                                   tmp_path: Path) -> None:
    nodes = mesh.setup(ORGS)
    a, b = nodes["a"], nodes["b"]
    folder = tmp_path / "study"
    files = synthetic.generate_ct_study(folder, slices=3, rows=32, columns=32, seed=8)
    us = pydicom.dcmread(files[0])
    us.Modality = "US"  # an ultrasound image without Burned In Annotation
    us.SOPInstanceUID = us.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.UID(str(us.SOPInstanceUID) + ".5")
    us.save_as(folder / "us.dcm")
    mesh.cli(a, "ingest", str(folder), "--no-progress")
    study = str(us.StudyInstanceUID)
    held = mesh.cli(a, "share", study, "--to", "RES", "--purpose", "research", "--deid-project", "p1")
    assert held["state"] == "held" and len(held["held"]) == 1
    assert mesh.cli(a, "outbox") == []  # nothing sent
    [queued] = mesh.cli(a, "deid", "held")
    assert queued["research_share"] == held["research_share"] and queued["study_uid"] == study
    released = mesh.cli(a, "deid", "release", held["research_share"], "--user", "dr.jones")
    assert released["state"] == "shared" and released["instances"] == 3
    mesh.wait_for(lambda: mesh.delivered(a, released["manifest_id"], ["RES"]), 90, "the released copy's receipt")
    assert mesh.cli(a, "deid", "held") == []
    decisions = [e for e in mesh.audit(a) if e["action"] == "research-share"]
    assert [e["actor"] for e in decisions] == ["local:dr.jones"]
    entry = mesh.inbox_entry(b, released["manifest_id"])
    assert entry is not None and entry["instances"] == 3
