"""De-identify one DICOM instance: PS3.15 Annex E Basic Application Level Confidentiality Profile + options.

dicognito (a maintained de-identification library) does what it is good at: dummy person names,
addresses and institution names, dummy IDs (accession and procedure IDs, seeded so that they are stable),
the removal of a list of identifying attributes, and date/time shifting (with the ACR-NEMA forms and the
paired TM elements handled). It is extended here, for reasons it cannot meet as it is:

- Pseudonyms: dicognito's are an MD5 of a seed and the value, and its UIDs use the "2." root with a
  random-looking number. Patient IDs and UIDs here are HMAC-SHA256 with the research project's secret key
  (meshnode.study.pseudonyms: consistent within a project, unlinkable across projects, and recorded in the
  sender's re-link table), UIDs as 2.25.<int> (PS3.5 B.2).
- Dates: dicognito shifts every date of an Anonymizer by one offset. The offset here is per patient and
  keyed (two studies of a patient keep their interval, two patients do not share an offset), and without
  Retain Longitudinal Temporal Information dates and times are removed (emptied), as the Basic Profile says.
- Options: dicognito knows none of Annex E's options, and keeps descriptions, comments, patient
  characteristics, device identifiers and private attributes. protocol.deid_actions is the Table E.1-1
  rows it lacks, with each option's effect; private attributes are removed unless safe-listed (Retain
  Safe Private); curves (50xx) and overlays (60xx) are removed.

Pixel data is never touched: the output's Pixel Data is byte-identical to the input's.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pydicom
from dicognito.anonymizer import Anonymizer
from dicognito.datetimeanonymizer import DateTimeAnonymizer
from dicognito.element_anonymizer import ElementAnonymizer
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence as DicomSequence
import pydicom.uid

from meshnode.study.annex_e_table import BASIC
from meshnode.study.pseudonyms import Pseudonymiser
from protocol.deid import DeidOption, DeidProfile, SafePrivate
from protocol.deid_actions import TABLE, Action, action_for
from protocol.errors import LocalProtocolError

log = logging.getLogger(__name__)

METHOD = "dicom-mesh PS3.15 E.1 Basic Profile (dicognito)"
#: appended to De-identification Method on an instance released although it is at pixel risk
PIXELS_NOT_CLEANED = "; pixel data not cleaned (at pixel risk, released after review)"
#: the well-known UIDs (transfer syntaxes, SOP classes, coding schemes, the UTC frame of reference): kept. The
#: dictionary pydicom.uid names them from (UID.name, UID.keyword), read without the private pydicom._uid_dict
#: and without building a UID per value (that validates, and warns on every malformed value)
_WELL_KNOWN_UIDS: frozenset[str] = frozenset(getattr(pydicom.uid, "UID_dictionary", {}))
#: free text in structured content (Clean Structured Content): emptied, as no recogniser proves it clean
_FREE_TEXT_VRS = frozenset({"UT", "LT", "ST"})
_TEXT_VRS = frozenset({"LO", "LT", "SH", "ST", "UT", "UC"})
_TIME_VRS = frozenset({"DA", "DT", "TM"})
#: handled by VR wherever they are: keyed UIDs, dates removed or shifted
_BY_VR = _TIME_VRS | {"UI"}


class DeidentificationError(LocalProtocolError):
    """An instance this node cannot de-identify (not DICOM, unreadable): it is not shared."""

    code = 950
    name = "deidentification-error"


@dataclass
class Relink:
    """What one de-identification replaced: (kind, pseudonym) -> original, for the sender's re-link table."""

    entries: dict[tuple[str, str], str] = field(default_factory=dict)

    def add(self, kind: str, pseudonym: str, original: str) -> None:
        self.entries[(kind, pseudonym)] = original


class _Handler(ElementAnonymizer):
    """An element handler put in front of dicognito's: returns True when it dealt with the element."""

    def __init__(self, handle: Callable[[Dataset, DataElement], bool]) -> None:
        self._handle = handle

    def __call__(self, dataset: Dataset, data_element: DataElement) -> bool:
        return self._handle(dataset, data_element)

    def describe_actions(self) -> Iterator[str]:
        yield "dicom-mesh: keyed pseudonyms, per-patient dates, Annex E options"


def _identifying_strings(ds: Dataset) -> list[str]:
    """The patient's own identifying values, which a cleaned descriptor must not contain."""
    out: list[str] = []
    name = str(ds.get("PatientName", "") or "")
    out += [part for part in name.replace("^", " ").replace("=", " ").split() if len(part) >= 3]
    for keyword in ("PatientID", "OtherPatientIDs", "AccessionNumber", "PatientBirthDate", "MedicalRecordLocator"):
        value = ds.get(keyword)
        if value:
            values = value if isinstance(value, pydicom.multival.MultiValue) else [value]
            out += [str(v).strip() for v in values if len(str(v).strip()) >= 3]
    return [s.lower() for s in out]


def _subject(ds: Dataset) -> str:
    """The patient a data set (or an item) names: its Patient ID, with '^^^' and the Issuer of Patient ID when
    there is one (HL7 CX's form, as the re-link table shows it); '' without a Patient ID."""
    pid = str(ds.get("PatientID", "") or "").strip()
    issuer = str(ds.get("IssuerOfPatientID", "") or "").strip()
    return f"{pid}^^^{issuer}" if pid and issuer else pid


class Deidentifier:
    """De-identifies instances for one project with one profile (reuse it for a whole share)."""

    def __init__(self, profile: DeidProfile, pseudonyms: Pseudonymiser) -> None:
        self.profile = profile
        self.pseudonyms = pseudonyms
        self._safe = {(s.group, s.element, s.creator) for s in profile.safe_private} \
            if profile.has(DeidOption.RETAIN_SAFE_PRIVATE) else set[tuple[int, int, str]]()

    # -- bytes in, bytes out ---------------------------------------------------------------------
    def deidentify_bytes(self, data: bytes, relink: Relink, *, pixel_risk: str | None = None) -> bytes:
        """`pixel_risk`: the instance may carry identifiers in its pixels (a person released it anyway):
        Patient Identity Removed is NO then, and De-identification Method says the pixels were not cleaned."""
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=False)
        except (InvalidDicomError, ValueError, EOFError, OSError) as exc:
            raise DeidentificationError(f"not a DICOM instance this node can de-identify: {exc}") from None
        self.deidentify(ds, relink)
        if pixel_risk is not None:
            ds.PatientIdentityRemoved = "NO"
            ds.DeidentificationMethod = METHOD + PIXELS_NOT_CLEANED
        # the 128-byte preamble is free for applications (PS3.10 7.1): it may hold anything, names included
        ds.preamble = b"\0" * 128
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        return out.getvalue()

    # -- a data set, in place --------------------------------------------------------------------
    def deidentify(self, ds: Dataset, relink: Relink) -> None:
        # the subject: (Patient ID, Issuer of Patient ID), so one ID under two issuers is two patients; an
        # instance without a Patient ID is a subject of its own study (not one subject for every such instance)
        original_pid = _subject(ds) or "study:" + str(ds.get("StudyInstanceUID", "") or ds.get("SOPInstanceUID", ""))
        pseudonym = self.pseudonyms.patient_id(original_pid)
        relink.add("patient", pseudonym, original_pid)
        identifying = _identifying_strings(ds)
        self._apply_table(ds, identifying, relink, in_structured=False, subject=original_pid)
        meta = getattr(ds, "file_meta", None)
        if meta is not None:  # the sending device's AE titles and addresses, private information
            self._apply_table(meta, identifying, relink, in_structured=False, subject=original_pid)
        if "PatientID" not in ds:
            ds.PatientID = pseudonym
        anonymizer = Anonymizer(seed=self.pseudonyms.seed(original_pid))
        shift = DateTimeAnonymizer(self.pseudonyms.shift_days(original_pid) * 24)
        anonymizer.add_element_handler(_Handler(self._dates(shift)))
        anonymizer.add_element_handler(_Handler(self._uids(relink)))
        anonymizer.add_element_handler(_Handler(self._done_here(pseudonym)))
        anonymizer.anonymize(ds)
        self._mark(ds)

    def _apply_table(self, ds: Dataset, identifying: list[str], relink: Relink, *, in_structured: bool,
                     subject: str) -> None:
        """Table E.1-1 rows dicognito lacks, private attributes, curves and overlays; recursing into items."""
        options = self.profile.options
        for elem in list(ds):
            tag = elem.tag
            if tag.is_private:
                if not self._safe_private(ds, elem):
                    del ds[tag]
                continue
            if 0x5000 <= tag.group <= 0x50FF or (0x6000 <= tag.group <= 0x60FF and tag.group % 2 == 0):
                del ds[tag]
                continue
            if elem.VR == "UR":  # URLs (Retrieve URL/URI, WADO links) carry original UIDs and host names
                del ds[tag]
                continue
            action = action_for(elem.keyword, options)
            if action is None and elem.VR not in _BY_VR and tag != 0x00100010:  # Patient's Name: its pseudonym
                action = BASIC.get(int(tag))
            if tag == 0x00100020:  # Patient ID, here or in an item (a DICOMDIR's records): its pseudonym
                original = _subject(ds) or subject
                elem.value = self.pseudonyms.patient_id(original)
                relink.add("patient", elem.value, original)
                continue
            if action is Action.REMOVE:
                del ds[tag]
                continue
            if action in (Action.EMPTY, Action.DUMMY):
                elem.value = DicomSequence([]) if elem.VR == "SQ" else ""
                continue
            if action is Action.CLEAN and elem.VR != "SQ" and elem.VR in _TEXT_VRS | {"PN"}:
                if self._identifies(elem, identifying):
                    elem.value = ""
                continue
            if in_structured and (elem.VR in _FREE_TEXT_VRS or elem.keyword == "TextValue"):
                elem.value = ""  # free text of structured content: may name anyone (a doctor, a place)
                continue
            if in_structured and elem.VR in _TEXT_VRS and self._identifies(elem, identifying):
                elem.value = ""  # a text value of structured content naming the patient
                continue
            if elem.VR == "SQ" and elem.value is not None:
                for item in elem.value:
                    self._apply_table(item, identifying, relink,
                                      in_structured=in_structured or action is Action.CLEAN, subject=subject)

    def _safe_private(self, ds: Dataset, elem: DataElement) -> bool:
        if not self._safe:
            return False
        tag = elem.tag
        if tag.is_private_creator:
            creator = str(elem.value).strip()
            return any(g == tag.group and c == creator for g, _, c in self._safe)
        if tag.element < 0x1000:
            return False
        creator_elem = ds.get((tag.group, tag.element >> 8))
        if creator_elem is None:
            return False
        return (tag.group, tag.element & 0xFF, str(creator_elem.value).strip()) in self._safe

    @staticmethod
    def _identifies(elem: DataElement, identifying: list[str]) -> bool:
        text = str(elem.value or "").lower()
        return any(s in text for s in identifying)

    # -- handlers put in front of dicognito's ----------------------------------------------------
    def _done_here(self, pseudonym: str) -> Callable[[Dataset, DataElement], bool]:
        """Elements this module decided already (Table E.1-1 rows, private ones kept) are left alone."""
        def handle(ds: Dataset, elem: DataElement) -> bool:
            if elem.tag == 0x00100010:  # Patient's Name: the pseudonym (what a researcher sees)
                elem.value = pseudonym
                return True
            if elem.VR in _BY_VR:
                return False
            return elem.keyword in TABLE or int(elem.tag) in BASIC or elem.tag.is_private
        return handle

    def _uids(self, relink: Relink) -> Callable[[Dataset, DataElement], bool]:
        def new(value: str, keyword: str) -> str:
            value = str(value)
            if not value or value in _WELL_KNOWN_UIDS:
                return value
            mapped = self.pseudonyms.uid(value)
            relink.add(_UID_KINDS.get(keyword, "uid"), mapped, value)
            return mapped

        def handle(ds: Dataset, elem: DataElement) -> bool:
            if elem.VR != "UI":
                return False
            keyword = keyword_for_tag(elem.tag)
            if not elem.value or keyword.endswith("ClassUID") or keyword == "TransferSyntaxUID":
                return True
            if isinstance(elem.value, pydicom.multival.MultiValue):
                elem.value = [new(v, keyword) for v in elem.value]
            else:
                elem.value = new(elem.value, keyword)
            return True
        return handle

    def _dates(self, shift: DateTimeAnonymizer) -> Callable[[Dataset, DataElement], bool]:
        retain = self.profile.has(DeidOption.RETAIN_LONGITUDINAL_TEMPORAL)

        def handle(ds: Dataset, elem: DataElement) -> bool:
            if elem.VR not in _TIME_VRS:
                return False
            if not retain:
                elem.value = ""
                return True
            if elem.VR == "TM":
                return True  # whole days are shifted: the time of day is unchanged
            try:
                return shift(ds, elem)
            except ValueError:  # a malformed date cannot be shifted: it goes
                elem.value = ""
                return True
        return handle

    def _mark(self, ds: Dataset) -> None:
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = METHOD
        codes = []
        for value, meaning in self.profile.codes():
            item = Dataset()
            item.CodeValue = value
            item.CodingSchemeDesignator = "DCM"
            item.CodeMeaning = meaning
            codes.append(item)
        ds.DeidentificationMethodCodeSequence = DicomSequence(codes)
        ds.LongitudinalTemporalInformationModified = (
            "MODIFIED" if self.profile.has(DeidOption.RETAIN_LONGITUDINAL_TEMPORAL) else "REMOVED")


_UID_KINDS = {"StudyInstanceUID": "study", "SeriesInstanceUID": "series", "SOPInstanceUID": "instance"}


__all__ = ["DeidentificationError", "Deidentifier", "Relink", "SafePrivate"]
