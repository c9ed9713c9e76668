"""Patient reconciliation end to end: real node processes, dcmtk storescu, Orthanc as the receiving PACS.

Node a (RGT) takes two studies from storescu and shares them with RJ1. Node b (RJ1) has [reconciliation]
enabled and a lookup table loaded with `meshnode patients import`. The study carrying a valid NHS number
arrives in Orthanc under RJ1's local patient ID, the RGT identifier kept in Other Patient IDs Sequence and
Original Attributes Sequence; the one with RGT's own number only waits in `meshnode reconcile list` (not
in Orthanc, not in b's DICOMweb-backed C-FIND) until `meshnode reconcile match` picks the local record,
then arrives the same way. A third, with a wrong check digit, is rejected with `meshnode reconcile reject`:
never forwarded, and a later match is refused.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pydicom
import pytest

from meshnode.demo.identity import Node
from meshnode.demo.mesh import MeshDemo
from meshnode.demo.workspace import free_tcp_port
from meshnode.dicom import synthetic
from tests.e2e.dimse_tools import dimse_endpoint, find_answers, findscu, storescu
from tests.e2e.orthanc import Orthanc
from tests.e2e.test_gateway import (
    MODALITY,
    ORGS,
    READER,
    enable_gateway,
    inbox,
    receiver_config,
    sender_config,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NHS = "9434765919"
CSV = ("local_id,issuer,nhs_number,name,birth_date,sex\n"
       f"RJ1-000123,RJ1,{NHS},SMITH^JANE,19700101,F\n"
       "RJ1-000999,RJ1,4010232137,JONES^ALAN,19600505,M\n")


def study(folder: Path, seed: int, patient_id: str, issuer: str) -> tuple[Path, str]:
    files = synthetic.generate_ct_study(folder, slices=3, seed=seed, rows=64, columns=64, patient_id=patient_id,
                                       patient_name="Smith^Jane")
    for f in files:
        ds = pydicom.dcmread(f)
        ds.IssuerOfPatientID = issuer
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "F"
        ds.save_as(f)
    return folder, str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def in_orthanc(orthanc: Orthanc, study_uid: str) -> list[pydicom.Dataset]:
    out: list[pydicom.Dataset] = []
    for i in orthanc.instances():
        ds = pydicom.dcmread(io.BytesIO(orthanc.instance_file(i)))
        if ds.StudyInstanceUID == study_uid:
            out.append(ds)
    return out


def received(mesh: MeshDemo, b: Node, study_uid: str) -> dict[str, Any] | None:
    return next((r for r in inbox(mesh, b) if r["study_uid"] == study_uid and r["state"] == "receipted"), None)


def test_matched_by_nhs_number_and_matched_by_a_user(mesh: MeshDemo, orthanc: Orthanc, tmp_path: Path) -> None:
    nodes = mesh.setup(ORGS, start=False)
    a, b = nodes["a"], nodes["b"]
    orthanc.start()
    enable_gateway(mesh, a, sender_config())
    enable_gateway(mesh, b, receiver_config(orthanc, free_tcp_port()))
    mesh.configure(b, {"reconciliation.enabled": True})
    csv = tmp_path / "patients.csv"
    csv.write_text(CSV)
    assert mesh.cli(b, "patients", "import", str(csv)) == {"imported": 2, "new": 2, "replaced": 0}
    mesh.start(a)
    mesh.start(b)
    _, a_port, _ = dimse_endpoint(a.home)

    # 1. an NHS number (issuer "NHS") that the table knows, demographics agreeing: forwarded at once, coerced
    folder, matched_uid = study(tmp_path / "nhs", 71, NHS, "NHS")
    assert storescu(a_port, MODALITY, "MESH_RJ1", folder).code == 0
    got = mesh.wait_for(lambda: len(in_orthanc(orthanc, matched_uid)) == 3 and in_orthanc(orthanc, matched_uid),
                        120, "the NHS-numbered study in Orthanc")
    originals = {str(pydicom.dcmread(f).SOPInstanceUID): pydicom.dcmread(f) for f in folder.iterdir()}
    for ds in got:
        assert (ds.PatientID, ds.IssuerOfPatientID, str(ds.PatientName)) == ("RJ1-000123", "RJ1", "SMITH^JANE")
        assert (NHS, "NHS") in [(o.PatientID, o.IssuerOfPatientID) for o in ds.OtherPatientIDsSequence]
        item = ds.OriginalAttributesSequence[-1]
        assert (item.ReasonForTheAttributeModification, item.SourceOfPreviousValues) == ("COERCE", "RGT")
        assert item.ModifiedAttributesSequence[0].PatientID == NHS
        assert ds.PixelData == originals[str(ds.SOPInstanceUID)].PixelData

    # 2. the sender's own number only: waits, not in Orthanc and not in b's C-FIND, until a user matches it
    folder2, waiting_uid = study(tmp_path / "local", 72, "RGT-55501", "RGT")
    assert storescu(a_port, MODALITY, "MESH_RJ1", folder2).code == 0
    queue = mesh.wait_for(lambda: [r for r in mesh.cli(b, "reconcile", "list") if r["study_uid"] == waiting_uid
                                   and r["state"] == "waiting"], 120, "the second study in the queue")
    assert queue[0]["reason"] == "no-nhs-number" and queue[0]["arriving"]["patient_id"] == "RGT-55501"
    row = received(mesh, b, waiting_uid)
    assert row is not None and row["forward"]["main"]["state"] == "waiting-for-reconciliation"
    assert in_orthanc(orthanc, waiting_uid) == []
    _, b_port, b_ae = dimse_endpoint(b.home)
    result = findscu(b_port, READER, b_ae, ["QueryRetrieveLevel=STUDY", "StudyInstanceUID"])
    assert result.code == 0, result.output
    found = {answer.get("StudyInstanceUID") for answer in find_answers(result.output)}
    assert waiting_uid not in found and matched_uid in found
    # the operator's share of a study held in reconciliation is refused unless said explicitly (finding 12)
    shared = mesh.ws.run("meshnode", "share", waiting_uid, "--to", "RGT", "--home", str(b.home), check=False)
    assert shared.code != 0 and "held by patient reconciliation" in shared.stderr, shared.stderr
    decided = mesh.cli(b, "reconcile", "match", queue[0]["manifest"], "RJ1-000123")
    assert decided["state"] == "matched" and decided["decided_by"].startswith("control:")
    got2 = mesh.wait_for(lambda: len(in_orthanc(orthanc, waiting_uid)) == 3 and in_orthanc(orthanc, waiting_uid),
                         120, "the matched study in Orthanc")
    for ds in got2:
        assert ds.PatientID == "RJ1-000123"
        assert ("RGT-55501", "RGT") in [(o.PatientID, o.IssuerOfPatientID) for o in ds.OtherPatientIDsSequence]

    # 3. a wrong check digit: waits; a rejection is final and the study never reaches Orthanc
    folder3, rejected_uid = study(tmp_path / "bad", 73, "9434765918", "NHS")
    assert storescu(a_port, MODALITY, "MESH_RJ1", folder3).code == 0
    queue = mesh.wait_for(lambda: [r for r in mesh.cli(b, "reconcile", "list") if r["study_uid"] == rejected_uid],
                          120, "the third study in the queue")
    assert queue[0]["reason"] == "invalid-check-digit"
    assert mesh.cli(b, "reconcile", "reject", queue[0]["manifest"], "--reason", "not ours")["state"] == "rejected"
    refused = mesh.ws.run("meshnode", "reconcile", "match", queue[0]["manifest"], "RJ1-000123", "--home",
                          str(b.home), check=False)
    assert refused.code != 0 and "not waiting" in refused.stderr
    row = received(mesh, b, rejected_uid)
    assert row is not None and row["forward"]["main"]["state"] == "rejected-by-reconciliation"
    assert in_orthanc(orthanc, rejected_uid) == []
    actions = [e for e in mesh.audit(b) if str(e.get("action", "")).startswith("reconcile-")]
    assert [e["action"] for e in actions] == ["reconcile-matched", "reconcile-waiting", "reconcile-matched",
                                              "reconcile-waiting", "reconcile-rejected"]
