"""Patient reconciliation on arrival: does an arriving study's patient match one local record? (pure)

A study from another organisation carries that organisation's patient ID. The
node maps it to the local record by NHS number before forwarding it to the
local PACS. This module decides, from the arriving identifiers and
demographics and the local lookup's candidates (the local records holding the
same NHS number), either

- a confident match: exactly one candidate, the NHS number is valid (modulus
  11) and equal, and (unless the node says otherwise) the demographics agree;
- or that a human must decide, with the reason (`NeedsHuman`).

No I/O and no clock: the driver (meshnode.gateway.reconciler) reads the
identifiers from the DICOM header and the candidates from the store.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

#: the NHS number's issuer: its OID (Issuer of Patient ID Qualifiers' Universal Entity ID) and common text forms
NHS_ISSUERS = frozenset({"2.16.840.1.113883.2.1.4.1", "NHS", "NHSN"})
_DIGITS10 = re.compile(r"[0-9]{10}")
_SEPARATORS = re.compile(r"[ -]")


def normalise_nhs_number(text: str) -> str:
    """'943 476 5919' / '943-476-5919' -> '9434765919' (spaces and hyphens dropped, nothing else)."""
    return _SEPARATORS.sub("", text.strip())


def nhs_number_placeholder(text: str) -> bool:
    """A placeholder some systems put where the NHS number is unknown: ten times one digit (0000000000,
    1111111111, 9999999999 pass modulus 11 but name nobody)."""
    return bool(_DIGITS10.fullmatch(text)) and len(set(text)) == 1


def nhs_number_valid(text: str) -> bool:
    """Ten digits whose last is the modulus-11 check digit of the first nine (weights 10..2); a check
    value of 10 makes the number invalid, and so does a placeholder (one digit ten times)."""
    if not _DIGITS10.fullmatch(text) or nhs_number_placeholder(text):
        return False
    total = sum(int(d) * w for d, w in zip(text[:9], range(10, 1, -1)))
    check = 11 - total % 11
    if check == 11:
        check = 0
    return check != 10 and check == int(text[9])


def nhs_check_digit(nine: str) -> int | None:
    """The check digit for nine digits, or None when none exists (a remainder giving 10)."""
    total = sum(int(d) * w for d, w in zip(nine, range(10, 1, -1)))
    check = (11 - total % 11) % 11
    return None if check == 10 else check


@dataclass(frozen=True)
class PatientIdentifier:
    """A Patient ID and its Issuer of Patient ID ("" when absent)."""

    value: str
    issuer: str = ""


@dataclass(frozen=True)
class Demographics:
    name: str = ""  # DICOM PN: FAMILY^GIVEN^MIDDLE^PREFIX^SUFFIX
    birth_date: str = ""  # YYYYMMDD
    sex: str = ""  # M, F, O or ""


@dataclass(frozen=True)
class ArrivingPatient:
    """The patient as an arriving study names it."""

    patient_id: PatientIdentifier
    others: tuple[PatientIdentifier, ...] = ()  # Other Patient IDs Sequence
    demographics: Demographics = Demographics()


@dataclass(frozen=True)
class LocalPatient:
    """A record of the local lookup table the PACS team maintains."""

    local_id: str
    issuer: str
    nhs_number: str
    demographics: Demographics = Demographics()


class Reason(str, enum.Enum):
    MATCHED = "matched"
    NO_NHS_NUMBER = "no-nhs-number"
    INVALID_CHECK_DIGIT = "invalid-check-digit"
    PLACEHOLDER_NHS_NUMBER = "placeholder-nhs-number"  # one digit ten times: names nobody
    CONFLICTING_NHS_NUMBERS = "conflicting-nhs-numbers"
    NO_CANDIDATE = "no-candidate"
    SEVERAL_CANDIDATES = "several-candidates"
    DEMOGRAPHICS_DISAGREE = "demographics-disagree"
    INSTANCES_DISAGREE = "instances-disagree"  # the study's instances name different patients


@dataclass(frozen=True)
class Match:
    """A confident match: forward under this local record."""

    record: LocalPatient
    nhs_number: str
    reason: Reason = Reason.MATCHED


@dataclass(frozen=True)
class NeedsHuman:
    """No confident match: the study waits for a PACS-team user."""

    reason: Reason
    nhs_number: str = ""  # the (valid or not) NHS number found, "" when none
    detail: str = ""  # which attribute disagrees (never its value)


Decision = Match | NeedsHuman


def nhs_numbers(patient: ArrivingPatient, issuers: frozenset[str] = NHS_ISSUERS) -> list[str]:
    """The arriving NHS numbers (normalised, distinct, in order): Patient ID then Other Patient IDs whose
    issuer is one of `issuers` (compared without case)."""
    wanted = {i.upper() for i in issuers}
    out: list[str] = []
    for ident in (patient.patient_id, *patient.others):
        if ident.issuer.strip().upper() in wanted and ident.value.strip():
            number = normalise_nhs_number(ident.value)
            if number not in out:
                out.append(number)
    return out


def nhs_number_of(patient: ArrivingPatient, issuers: frozenset[str] = NHS_ISSUERS) -> NeedsHuman | str:
    """The one valid NHS number the patient carries, or why there is none."""
    numbers = nhs_numbers(patient, issuers)
    if not numbers:
        return NeedsHuman(Reason.NO_NHS_NUMBER)
    if len(numbers) > 1:
        return NeedsHuman(Reason.CONFLICTING_NHS_NUMBERS, detail=f"{len(numbers)} different NHS numbers")
    if nhs_number_placeholder(numbers[0]):
        return NeedsHuman(Reason.PLACEHOLDER_NHS_NUMBER, numbers[0])
    if not nhs_number_valid(numbers[0]):
        return NeedsHuman(Reason.INVALID_CHECK_DIGIT, numbers[0])
    return numbers[0]


def normalise_name_part(text: str) -> str:
    """A name component compared without case, accents, punctuation or spacing: "Zoë-Ann " -> "ZOE ANN"."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join("".join(c if c.isalnum() else " " for c in plain.upper()).split())


def name_parts(name: str) -> tuple[str, str]:
    """(family, given) of a DICOM PN's alphabetic group (FAMILY^GIVEN^MIDDLE^PREFIX^SUFFIX), normalised;
    middle names, prefixes and suffixes are not compared."""
    parts = name.split("=")[0].split("^")
    return normalise_name_part(parts[0]), normalise_name_part(parts[1] if len(parts) > 1 else "")


SEX_VALUES = frozenset({"M", "F", "O"})


def disagreement(arriving: Demographics, local: Demographics) -> str:
    """Which demographics disagree or are missing ("" when they agree). Every one must be present on both
    sides and equal: the birth date; the family name and the given name(s), compared whole (case, accents,
    punctuation and spacing aside: SMITH^JOHN is not SMITH^JAMES, SMITH is not SMITH^JANE); the sex, one of
    M, F, O on both sides and the same (unknown or O against M/F needs a human)."""
    bad: list[str] = []
    if not arriving.birth_date.strip() or arriving.birth_date.strip() != local.birth_date.strip():
        bad.append("birth date")
    (fa, ga), (fb, gb) = name_parts(arriving.name), name_parts(local.name)
    if not fa or fa != fb:
        bad.append("family name")
    if not ga or ga != gb:
        bad.append("given name")
    sa, sb = arriving.sex.strip().upper(), local.sex.strip().upper()
    if sa not in SEX_VALUES or sa != sb:
        bad.append("sex")
    return ", ".join(bad)


def patients_fingerprint(patients: Sequence[ArrivingPatient]) -> str:
    """A digest of everything a decision reads from the arriving instances (each distinct patient's Patient ID,
    issuer, Other Patient IDs with their issuers, name, birth date, sex), in a canonical order: two revisions
    with the same fingerprint name the same patient the same way."""
    canonical = sorted({(p.patient_id.value, p.patient_id.issuer, tuple((o.value, o.issuer) for o in p.others),
                         p.demographics.name, p.demographics.birth_date, p.demographics.sex) for p in patients})
    return hashlib.sha256(json.dumps(canonical, ensure_ascii=True).encode()).hexdigest()


def decide_study(patients: Sequence[ArrivingPatient], candidates: Sequence[LocalPatient], *,
                 issuers: frozenset[str] = NHS_ISSUERS, demographics_must_agree: bool = True) -> Decision:
    """The decision for a study whose instances name these patients: they must all name the same one (the
    same identifiers and demographics), else a human decides."""
    distinct = set(patients)
    if len(distinct) != 1:
        return NeedsHuman(Reason.INSTANCES_DISAGREE, detail=f"{len(distinct)} different patients in the study")
    return decide(patients[0], candidates, issuers=issuers, demographics_must_agree=demographics_must_agree)


def decide(patient: ArrivingPatient, candidates: Sequence[LocalPatient], *,
           issuers: frozenset[str] = NHS_ISSUERS, demographics_must_agree: bool = True) -> Decision:
    """The reconciliation decision for an arriving patient given the local records found for its NHS
    number (candidates whose NHS number differs are ignored: the caller's lookup is not trusted to
    have filtered)."""
    number = nhs_number_of(patient, issuers)
    if isinstance(number, NeedsHuman):
        return number
    same = [c for c in candidates if normalise_nhs_number(c.nhs_number) == number]
    if not same:
        return NeedsHuman(Reason.NO_CANDIDATE, number)
    if len(same) > 1:
        return NeedsHuman(Reason.SEVERAL_CANDIDATES, number, f"{len(same)} local records")
    if demographics_must_agree:
        bad = disagreement(patient.demographics, same[0].demographics)
        if bad:
            return NeedsHuman(Reason.DEMOGRAPHICS_DISAGREE, number, bad)
    return Match(same[0], number)
