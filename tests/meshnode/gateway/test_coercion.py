"""meshnode.gateway.coercion: the forwarded copy of a reconciled instance, read back."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from meshnode.dicom.synthetic import generate_compressed, generate_ct_study
from meshnode.gateway.coercion import Coercion, coerced_copy
from protocol.errors import StorageError

C = Coercion("RGT0001", "RGT", "SMITH^JANE", "19700101", "F", "RXX", "RGT meshnode MESHNODE", "20261205120000+0000")


def _original(data: bytes) -> dict[str, str]:
    ds = dcmread(io.BytesIO(data))
    return {k: str(ds.get(k, "")) for k in ("PatientID", "IssuerOfPatientID", "PatientName", "PatientBirthDate")}


@pytest.mark.parametrize("kind", ["ct", "rle"])
def test_coerced_copy_carries_local_identity_and_keeps_original(tmp_path: Path, kind: str) -> None:
    if kind == "ct":
        path = generate_ct_study(tmp_path, slices=1, rows=64, columns=64, patient_id="RXX-778899",
                                 patient_name="SMYTHE^JANE")[0]
    else:
        path = generate_compressed(tmp_path, patient_id="RXX-778899", patient_name="SMYTHE^JANE")[0]
    data = path.read_bytes()
    before = dcmread(io.BytesIO(data))
    out = dcmread(io.BytesIO(coerced_copy(data, C)))
    assert (out.PatientID, out.IssuerOfPatientID, str(out.PatientName), out.PatientBirthDate, out.PatientSex) == \
        ("RGT0001", "RGT", "SMITH^JANE", "19700101", "F")
    others = [(i.PatientID, i.IssuerOfPatientID) for i in out.OtherPatientIDsSequence]
    assert ("RXX-778899", "RXX") in others  # no issuer arrived: the sending org stands for it
    [item] = out.OriginalAttributesSequence
    assert item.ReasonForTheAttributeModification == "COERCE"
    assert item.SourceOfPreviousValues == "RXX"
    assert item.ModifyingSystem == "RGT meshnode MESHNODE"
    assert item.AttributeModificationDateTime == "20261205120000+0000"
    [mod] = item.ModifiedAttributesSequence
    assert mod.PatientID == "RXX-778899" and str(mod.PatientName) == "SMYTHE^JANE"
    assert "IssuerOfPatientID" not in mod  # it was absent: nothing to keep
    assert out.file_meta.TransferSyntaxUID == before.file_meta.TransferSyntaxUID
    assert out.SOPInstanceUID == before.SOPInstanceUID and out.StudyInstanceUID == before.StudyInstanceUID
    assert out.PixelData == before.PixelData  # byte-exact (encapsulated fragments too)


def test_existing_other_ids_and_history_are_kept() -> None:
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()  # type: ignore[arg-type]
    once = coerced_copy(data, C)
    ds = dcmread(io.BytesIO(once))
    first_others = len(ds.OtherPatientIDsSequence)
    twice = dcmread(io.BytesIO(coerced_copy(once, Coercion("RGT0002", "RGT", "", "", "", "RGT", "X", "20261205"))))
    assert len(twice.OriginalAttributesSequence) == 2  # the history grows, nothing is lost
    assert twice.OriginalAttributesSequence[1].ModifiedAttributesSequence[0].PatientID == "RGT0001"
    assert len(twice.OtherPatientIDsSequence) == first_others + 1
    assert str(twice.PatientName) == str(ds.PatientName)  # "" in the coercion: left as it was
    assert twice.PixelData == dcmread(io.BytesIO(data)).PixelData


def test_unparsable_bytes_are_a_storage_error() -> None:
    with pytest.raises(StorageError):
        coerced_copy(b"\x00" * 200 + b"not dicom", C)
