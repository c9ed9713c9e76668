"""meshnode.gateway.coercion: the forwarded copy of a reconciled instance, read back."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from meshnode.dicom.synthetic import generate_compressed, generate_ct_study
from dataclasses import replace

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
    # absent before, added now: zero length (PS3.3 C.12.1.1.9.2 "may be present ... with a zero length value")
    assert "IssuerOfPatientID" in mod and mod["IssuerOfPatientID"].is_empty
    assert "OtherPatientIDsSequence" in mod and len(mod.OtherPatientIDsSequence) == 0
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


def _qualified(tmp_path: Path) -> bytes:
    path = generate_ct_study(tmp_path, slices=1, rows=16, columns=16, patient_id="RXX-1", patient_name="A^B")[0]
    ds = dcmread(path)
    ds.IssuerOfPatientID = "RXX"
    q = Dataset()
    q.UniversalEntityID, q.UniversalEntityIDType = "1.2.826.0.1.999.1", "ISO"  # the sender's assigning authority
    ds.IssuerOfPatientIDQualifiersSequence = DicomSequence([q])
    ds.save_as(path)
    return path.read_bytes()


# review finding 5: the sender's Issuer of Patient ID Qualifiers stayed beside the local Patient ID
@pytest.mark.parametrize("oid", ["", "1.2.826.0.1.3680043.10.1"])
def test_the_senders_issuer_qualifiers_move_to_other_ids_and_the_local_ones_replace_them(
        tmp_path: Path, oid: str) -> None:
    out = dcmread(io.BytesIO(coerced_copy(_qualified(tmp_path), replace(C, local_issuer_oid=oid))))
    if oid:
        [q] = out.IssuerOfPatientIDQualifiersSequence
        assert (q.UniversalEntityID, q.UniversalEntityIDType) == (oid, "ISO")
    else:
        assert "IssuerOfPatientIDQualifiersSequence" not in out
    [other] = [i for i in out.OtherPatientIDsSequence if i.PatientID == "RXX-1"]
    assert other.IssuerOfPatientID == "RXX"
    assert other.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityID == "1.2.826.0.1.999.1"
    [mod] = out.OriginalAttributesSequence[-1].ModifiedAttributesSequence
    assert mod.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityID == "1.2.826.0.1.999.1"
    assert mod.IssuerOfPatientID == "RXX"


def test_a_local_issuer_oid_is_added_when_the_sender_had_no_qualifiers(tmp_path: Path) -> None:
    path = generate_ct_study(tmp_path, slices=1, rows=16, columns=16, patient_id="RXX-1", patient_name="A^B")[0]
    out = dcmread(io.BytesIO(coerced_copy(path.read_bytes(), replace(C, local_issuer_oid="1.2.3.4"))))
    assert out.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityID == "1.2.3.4"
    [mod] = out.OriginalAttributesSequence[-1].ModifiedAttributesSequence
    assert len(mod.IssuerOfPatientIDQualifiersSequence) == 0  # absent before: zero length


# review finding 6: a non-ASCII local name was written as '?' and a Latin-1 byte with no character set
@pytest.mark.parametrize("charset", ["ISO_IR 100", None])
def test_a_non_ascii_local_name_is_written_in_utf8_and_other_text_kept(tmp_path: Path, charset: str | None) -> None:
    path = generate_ct_study(tmp_path, slices=1, rows=16, columns=16, patient_id="RXX-1",
                             patient_name="Müller^Jörg" if charset else "MULLER^JORG")[0]
    ds = dcmread(path)
    if charset:
        ds.SpecificCharacterSet = charset
        ds.StudyDescription = "Tête et cou"
        ds.InstitutionName = "Hôpital Général"
    else:
        ds.SpecificCharacterSet = None
        del ds.SpecificCharacterSet
        ds.PatientName = "MULLER^JORG"
        ds.StudyDescription = "HEAD"
    ds.save_as(path)
    data = path.read_bytes()
    if charset:
        assert "Tête".encode("latin-1") in data
    before = dcmread(io.BytesIO(data))
    raw = coerced_copy(data, replace(C, name="ŁOZIŃSKA^ZOË"))
    out = dcmread(io.BytesIO(raw))
    assert out.SpecificCharacterSet == "ISO_IR 192"
    assert str(out.PatientName) == "ŁOZIŃSKA^ZOË"
    assert "ŁOZIŃSKA^ZOË".encode() in raw and "?".encode() + b"OZI" not in raw
    assert out.StudyDescription == before.StudyDescription
    if charset:
        assert out.InstitutionName == "Hôpital Général"
    [mod] = out.OriginalAttributesSequence[-1].ModifiedAttributesSequence
    assert str(mod.PatientName) == str(before.PatientName)  # the original name, decoded right
    assert out.PixelData == before.PixelData


def test_an_ascii_local_name_leaves_the_character_set_alone() -> None:
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()  # type: ignore[arg-type]
    before = dcmread(io.BytesIO(data))
    out = dcmread(io.BytesIO(coerced_copy(data, C)))
    assert out.get("SpecificCharacterSet") == before.get("SpecificCharacterSet")
