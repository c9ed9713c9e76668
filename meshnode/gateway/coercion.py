"""The forwarded copy of a reconciled instance: the local patient's identity, the original kept (PS3.3 C.12.1.1.8).

Derived at forwarding time from the stored bytes, which are never modified
(the node's blocks, manifest and digests stay as received). The copy carries

- Patient ID / Issuer of Patient ID / Patient's Name / Birth Date / Sex as the
  local record says (a value the record leaves empty is not touched);
- Issuer of Patient ID Qualifiers Sequence: the local assigning authority's
  ([reconciliation] local_issuer_oid, Universal Entity ID of type ISO), or none
  when that is not configured: the sender's qualifiers never stay beside the
  local Patient ID (IHE PIX / XDS-I key on the assigning authority);
- the arriving Patient ID (with its issuer, or the sending organisation's code
  when it had none, and its Issuer of Patient ID Qualifiers Sequence) added to
  Other Patient IDs Sequence;
- one more Original Attributes Sequence item: Modified Attributes Sequence
  with the replaced attributes' original values (attributes absent before and
  added now with a zero length value, as PS3.3 C.12.1.1.9.2 allows: "Attributes
  that were empty or absent and for which values have been added may be present
  ... with a zero length value"), Attribute Modification DateTime, Modifying
  System (this node), Source of Previous Values (the sending organisation) and
  Reason for the Attribute Modification "COERCE";
- Specific Character Set ISO_IR 192 (UTF-8) when a local value is not ASCII:
  every text value is decoded with the arriving character set first and written
  again in UTF-8 (pydicom), so the other text stays what it was.

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
COERCED = ("PatientID", "IssuerOfPatientID", "PatientName", "PatientBirthDate", "PatientSex",
           "IssuerOfPatientIDQualifiersSequence", "OtherPatientIDsSequence")
UTF8 = "ISO_IR 192"


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
    local_issuer_oid: str = ""  # the local assigning authority (Issuer of Patient ID Qualifiers), "" = none


def _new_values(c: Coercion) -> dict[str, str]:
    values = {"PatientID": c.patient_id, "IssuerOfPatientID": c.issuer, "PatientName": c.name,
              "PatientBirthDate": c.birth_date, "PatientSex": c.sex}
    return {k: v for k, v in values.items() if v}


def _qualifiers(oid: str) -> DicomSequence:
    item = Dataset()
    item.UniversalEntityID = oid
    item.UniversalEntityIDType = "ISO"
    return DicomSequence([item])


def _prior(ds: Dataset, original: Dataset, keyword: str) -> None:
    """Record `keyword`'s value before the change in `original` (zero length when it was absent)."""
    if keyword in original:
        return
    if keyword in ds:
        original[keyword] = copy.deepcopy(ds[keyword])  # the changes below replace the element in place
    elif keyword.endswith("Sequence"):
        setattr(original, keyword, DicomSequence([]))
    else:
        setattr(original, keyword, None)


def coerce_dataset(ds: Dataset, c: Coercion) -> None:
    """Apply the coercion to a dataset in place."""
    new = _new_values(c)
    if any(not v.isascii() for v in new.values()) and str(ds.get("SpecificCharacterSet", "") or "") != UTF8:
        # every text value decoded with the arriving character set, then written in UTF-8 (the Modified
        # Attributes item inherits it: its original values are text now, so they are written in UTF-8 too)
        ds.decode()
        ds.SpecificCharacterSet = UTF8
    original = Dataset()
    for keyword in new:
        _prior(ds, original, keyword)
    arriving_id = str(ds.get("PatientID", "") or "")
    arriving_issuer = str(ds.get("IssuerOfPatientID", "") or "")
    sender_qualifiers = ds.get("IssuerOfPatientIDQualifiersSequence", None)
    if arriving_id and arriving_id != c.patient_id:
        _prior(ds, original, "OtherPatientIDsSequence")
        other = Dataset()
        other.PatientID = arriving_id
        other.IssuerOfPatientID = arriving_issuer or c.source_org
        if sender_qualifiers:
            other.IssuerOfPatientIDQualifiersSequence = DicomSequence([copy.deepcopy(i) for i in sender_qualifiers])
        other.TypeOfPatientID = "TEXT"
        items = list(ds.OtherPatientIDsSequence) if "OtherPatientIDsSequence" in ds else []
        if not any(str(i.get("PatientID", "")) == arriving_id and str(i.get("IssuerOfPatientID", ""))
                   == other.IssuerOfPatientID for i in items):
            items.append(other)
        ds.OtherPatientIDsSequence = DicomSequence(items)
    if "PatientID" in new and (sender_qualifiers is not None or c.local_issuer_oid):
        _prior(ds, original, "IssuerOfPatientIDQualifiersSequence")
        if c.local_issuer_oid:
            ds.IssuerOfPatientIDQualifiersSequence = _qualifiers(c.local_issuer_oid)
        else:
            del ds.IssuerOfPatientIDQualifiersSequence
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
