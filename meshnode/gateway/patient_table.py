"""The local patient lookup table as the PACS team edits it: checked records and the strict CSV import.

CSV (UTF-8, a header row, comma-separated, RFC 4180 quoting):

    local_id,issuer,nhs_number,name,birth_date,sex
    RGT0001234,RGT,943 476 5919,SMITH^JANE,19700101,F

`local_id` (the local Patient ID), `issuer` (the local Issuer of Patient ID)
and `nhs_number` are required; `name` (DICOM PN, FAMILY^GIVEN), `birth_date`
(YYYYMMDD) and `sex` (M, F, O) may be empty. Strict: one bad row (a wrong
NHS number check digit, a placeholder NHS number (one digit ten times), a
local ID twice, a bad date, a control character, a value too long, a leading
= + - @ tab or carriage return, a wrong header) fails the whole file with
every problem named by its line number, and nothing is imported.
"""

from __future__ import annotations

import csv
import datetime
import io
import re
from dataclasses import dataclass

from meshnode.storage.patients import PatientRecord
from protocol.errors import LocalProtocolError
from protocol.reconciliation import nhs_number_placeholder, nhs_number_valid, normalise_nhs_number

COLUMNS = ("local_id", "issuer", "nhs_number", "name", "birth_date", "sex")
MAX_CSV_BYTES = 64 << 20
MAX_ROWS = 2_000_000
MAX_PROBLEMS = 20
#: Patient ID and Issuer of Patient ID are LO (64 characters, no backslash); PN at most 5 groups of 64
_LO = re.compile(r"[^\\\x00-\x1f\x7f]{1,64}")
_PN = re.compile(r"[^\\\x00-\x1f\x7f]{0,320}")
_DATE = re.compile(r"[0-9]{8}")
SEXES = ("", "M", "F", "O")
#: what a spreadsheet would run as a formula if the table is ever exported and opened in one
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True)
class PatientInput:
    """A record as typed or imported, before it is checked."""

    local_id: str
    issuer: str
    nhs_number: str
    name: str = ""
    birth_date: str = ""
    sex: str = ""


def check_record(p: PatientInput, *, now_ms: int, by: str) -> PatientRecord:
    """A checked record (LocalProtocolError naming every problem)."""
    problems: list[str] = []
    local_id, issuer = p.local_id.strip(), p.issuer.strip()
    if not _LO.fullmatch(local_id):
        problems.append("local_id: 1-64 characters, no backslash or control characters")
    if not _LO.fullmatch(issuer):
        problems.append("issuer: 1-64 characters, no backslash or control characters")
    number = normalise_nhs_number(p.nhs_number)
    if not nhs_number_valid(number):
        problems.append("nhs_number: not 10 digits with a valid modulus-11 check digit"
                        + (" (one digit ten times is a placeholder)" if nhs_number_placeholder(number) else ""))
    name = p.name.strip()
    if not _PN.fullmatch(name) or name.count("^") > 4:
        problems.append("name: DICOM PN (FAMILY^GIVEN), at most 320 characters, no backslash or control characters")
    birth = p.birth_date.strip()
    if birth:
        try:
            if not _DATE.fullmatch(birth):
                raise ValueError(birth)
            datetime.date(int(birth[:4]), int(birth[4:6]), int(birth[6:]))
        except ValueError:
            problems.append("birth_date: YYYYMMDD, a real date")
    sex = p.sex.strip().upper()
    if sex not in SEXES:
        problems.append("sex: M, F, O or empty")
    if any(v[:1] in _FORMULA for v in (local_id, issuer, name, p.local_id, p.issuer, p.name)):
        problems.append("a value starts with = + - @, a tab or a carriage return (spreadsheet formula): refused")
    if problems:
        raise LocalProtocolError("; ".join(problems))
    return PatientRecord(local_id, issuer, number, name, birth, sex, now_ms, by)


def parse_csv(data: bytes, *, now_ms: int, by: str) -> list[PatientRecord]:
    """Every row of a CSV file as checked records, or LocalProtocolError listing the bad lines (the first
    MAX_PROBLEMS) so that nothing is imported."""
    if len(data) > MAX_CSV_BYTES:
        raise LocalProtocolError(f"CSV file larger than {MAX_CSV_BYTES >> 20} MiB: split it")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LocalProtocolError(f"CSV file is not UTF-8 (byte {exc.start})") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    problems: list[str] = []
    records: list[PatientRecord] = []
    seen: dict[str, int] = {}
    try:
        header = next(reader, None)
        if header is None or tuple(h.strip().lower() for h in header) != COLUMNS:
            raise LocalProtocolError(f"line 1: the header must be {','.join(COLUMNS)}")
        start = reader.line_num + 1  # where the next record starts (a quoted field may span lines)
        for row in reader:
            line, start = start, reader.line_num + 1
            if not row or row == [""]:
                continue
            if len(records) + len(problems) >= MAX_ROWS:
                raise LocalProtocolError(f"more than {MAX_ROWS} rows: split the file")
            if len(row) != len(COLUMNS):
                problems.append(f"line {line}: {len(row)} fields, expected {len(COLUMNS)}")
                continue
            try:
                record = check_record(PatientInput(*row), now_ms=now_ms, by=by)
            except LocalProtocolError as exc:
                problems.append(f"line {line}: {exc}")
                continue
            if record.local_id in seen:
                problems.append(f"line {line}: local_id also on line {seen[record.local_id]}")
                continue
            seen[record.local_id] = line
            records.append(record)
    except csv.Error as exc:
        problems.append(f"line {reader.line_num}: not CSV: {exc}")
    if problems:
        more = f" (and {len(problems) - MAX_PROBLEMS} more)" if len(problems) > MAX_PROBLEMS else ""
        raise LocalProtocolError("nothing imported: " + " | ".join(problems[:MAX_PROBLEMS]) + more)
    return records
