"""The forwarded copy of a reconciled instance: the local patient's identity, the original kept (PS3.3 C.12.1.1.8).

Derived at forwarding time from the stored bytes, which are never modified
(the node's blocks, manifest and digests stay as received). The copy carries

- Patient ID / Issuer of Patient ID / Patient's Name / Birth Date / Sex as the
  local record says (a value the record leaves empty is not touched);
- the arriving Patient ID (with its issuer, or the sending organisation's code
  when it had none) added to Other Patient IDs Sequence;
- one more Original Attributes Sequence item: Modified Attributes Sequence
  with the replaced attributes' original values, Attribute Modification
  DateTime, Modifying System (this node), Source of Previous Values (the
  sending organisation) and Reason for the Attribute Modification "COERCE".

Everything else, Pixel Data above all, is written back as read (pydicom keeps
undecoded values as bytes; the transfer syntax and file meta stay).
"""

from __future__ import annotations

import copy
import io
from dataclasses import dataclass

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence as DicomSequence

from meshnode.storage.records import hash_uid
from protocol.errors import StorageError

#: the attributes a coercion may replace, by keyword
COERCED = ("PatientID", "IssuerOfPatientID", "PatientName", "PatientBirthDate", "PatientSex")


@dataclass(frozen=True)
class Coercion:
    """What the forwarded copy says instead (values "" are left as they arrived)."""

    patient_id: str
    issuer: str
    name: str
    birth_date: str
    sex: str
    source_org: str  # Source of Previous Values: the sending organisation
    modifying_system: str  # this node (org code and AE title)
    when: str  # Attribute Modification DateTime, DICOM DT (YYYYMMDDHHMMSS+ZZZZ)


def _new_values(c: Coercion) -> dict[str, str]:
    values = {"PatientID": c.patient_id, "IssuerOfPatientID": c.issuer, "PatientName": c.name,
              "PatientBirthDate": c.birth_date, "PatientSex": c.sex}
    return {k: v for k, v in values.items() if v}


def coerce_dataset(ds: Dataset, c: Coercion) -> None:
    """Apply the coercion to a dataset in place."""
    new = _new_values(c)
    original = Dataset()
    for keyword in new:
        if keyword in ds:
            original[keyword] = copy.deepcopy(ds[keyword])  # setattr below changes the element in place
    arriving_id = str(ds.get("PatientID", "") or "")
    arriving_issuer = str(ds.get("IssuerOfPatientID", "") or "")
    if "OtherPatientIDsSequence" in ds:
        original.OtherPatientIDsSequence = DicomSequence([copy.deepcopy(i) for i in ds.OtherPatientIDsSequence])
    if arriving_id and arriving_id != c.patient_id:
        other = Dataset()
        other.PatientID = arriving_id
        other.IssuerOfPatientID = arriving_issuer or c.source_org
        other.TypeOfPatientID = "TEXT"
        items = list(ds.OtherPatientIDsSequence) if "OtherPatientIDsSequence" in ds else []
        if not any(str(i.get("PatientID", "")) == arriving_id and str(i.get("IssuerOfPatientID", ""))
                   == other.IssuerOfPatientID for i in items):
            items.append(other)
        ds.OtherPatientIDsSequence = DicomSequence(items)
    for keyword, value in new.items():
        setattr(ds, keyword, value)
    item = Dataset()
    item.ModifiedAttributesSequence = DicomSequence([original])
    item.AttributeModificationDateTime = c.when
    item.ModifyingSystem = c.modifying_system[:64]
    item.SourceOfPreviousValues = c.source_org[:64]
    item.ReasonForTheAttributeModification = "COERCE"
    history = list(ds.OriginalAttributesSequence) if "OriginalAttributesSequence" in ds else []
    ds.OriginalAttributesSequence = DicomSequence([*history, item])


def coerced_copy(data: bytes, c: Coercion) -> bytes:
    """The Part 10 bytes of the forwarded copy (StorageError when the stored bytes do not parse)."""
    uid = ""
    try:
        ds = dcmread(io.BytesIO(data))
        uid = str(ds.get("SOPInstanceUID", ""))
        coerce_dataset(ds, c)
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
    except (InvalidDicomError, ValueError, TypeError, KeyError, AttributeError, EOFError, OverflowError) as exc:
        raise StorageError(f"cannot derive the reconciled copy of {hash_uid(uid)}: {type(exc).__name__}") from None
    return out.getvalue()


def forwarded_bytes(data: bytes, coercion: Coercion | None) -> bytes:
    """What the forwarder sends for a stored instance: the stored bytes, or the reconciled copy."""
    return data if coercion is None else coerced_copy(data, coercion)
