"""Hostile and mistaken input to patient reconciliation: the lookup table's CSV import and record edits.

Every bad file fails whole, naming the line, and changes nothing in the table.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from meshnode.gateway.patient_table import (
    MAX_CSV_BYTES,
    PatientInput,
    check_record,
    parse_csv,
)
from meshnode.storage.patients import PatientRecord
from meshnode.storage.sqlite_metadata import SqliteMetadataStore
from protocol.errors import LocalProtocolError

HEADER = "local_id,issuer,nhs_number,name,birth_date,sex\n"
GOOD = "RGT0001,RGT,943 476 5919,SMITH^JANE,19700101,F\n"


def parse(text: str | bytes) -> list[PatientRecord]:
    return parse_csv(text.encode() if isinstance(text, str) else text, now_ms=1, by="local:test")


def test_good_file() -> None:
    [r] = parse(HEADER + GOOD + "\n")
    assert (r.local_id, r.nhs_number, r.name, r.updated_by) == ("RGT0001", "9434765919", "SMITH^JANE", "local:test")


@pytest.mark.parametrize("rows, line, words", [
    (GOOD + "RGT0002,RGT,9434765918,JONES^A,19800101,M\n", 3, "check digit"),
    (GOOD + "RGT0001,RGT,4010232137,JONES^A,19800101,M\n", 3, "also on line 2"),  # a local ID twice
    (GOOD + "RGT0002,RGT,4010232137,JONES^A,19801301,M\n", 3, "birth_date"),
    (GOOD + "RGT0002,RGT,4010232137,JONES^A,19800101,Q\n", 3, "sex"),
    (GOOD + "RGT0002,RGT,4010232137\n", 3, "3 fields"),
    (GOOD + "\"RGT'; DROP TABLE patient_records;--\",RGT,4010232137,=HYPERLINK(\"x\"),19800101,M\n", 3, "formula"),
    (GOOD + "RGT\\0002,RGT,4010232137,JONES^A,19800101,M\n", 3, "backslash"),
    (GOOD + "\"RGT\n0002\",RGT,4010232137,JONES^A,19800101,M\n", 3, "control"),
    (GOOD + "R" * 65 + ",RGT,4010232137,JONES^A,19800101,M\n", 3, "1-64"),
    (GOOD + ",RGT,4010232137,JONES^A,19800101,M\n", 3, "local_id"),
    (GOOD + "@SUM(A1),RGT,4010232137,JONES^A,19800101,M\n", 3, "formula"),
    # review finding 13: '-' and tab/CR prefixes; placeholder NHS numbers that pass modulus 11
    (GOOD + "\"-2+3+cmd|' /C calc'!A0\",RGT,4010232137,JONES^A,19800101,M\n", 3, "formula"),
    (GOOD + "RGT0002,RGT,4010232137,-HYPERLINK(1),19800101,M\n", 3, "formula"),
    (GOOD + "RGT0002,-RGT,4010232137,JONES^A,19800101,M\n", 3, "formula"),
    (GOOD + "\"\t=1+1\",RGT,4010232137,JONES^A,19800101,M\n", 3, "formula"),
    (GOOD + "\"\r=1+1\",RGT,4010232137,JONES^A,19800101,M\n", 3, "formula"),
    (GOOD + "RGT0002,RGT,0000000000,JONES^A,19800101,M\n", 3, "placeholder"),
    (GOOD + "RGT0002,RGT,1111111111,JONES^A,19800101,M\n", 3, "placeholder"),
    (GOOD + "RGT0002,RGT,999 999 9999,JONES^A,19800101,M\n", 3, "placeholder"),
])
def test_a_bad_row_fails_the_whole_file_naming_its_line(rows: str, line: int, words: str) -> None:
    with pytest.raises(LocalProtocolError) as caught:
        parse(HEADER + rows)
    message = str(caught.value)
    assert message.startswith("nothing imported") and f"line {line}" in message and words in message


@pytest.mark.parametrize("data", [
    b"", b"local_id,nhs_number\n", (HEADER.replace("sex", "gender") + GOOD).encode(),
    b"\xff\xfe" + HEADER.encode("utf-16-le"),  # not UTF-8
    HEADER.encode() + b"\"unterminated,RGT,9434765919,A^B,19700101,F\n",
])
def test_not_the_table_format(data: bytes) -> None:
    with pytest.raises(LocalProtocolError):
        parse(data)


def test_oversized_file_is_refused_before_parsing() -> None:
    with pytest.raises(LocalProtocolError, match="larger than"):
        parse(b"x" * (MAX_CSV_BYTES + 1))


def test_many_problems_are_listed_with_a_bound() -> None:
    rows = "".join(f"R{i},RGT,1234567890,A^B,19700101,F\n" for i in range(100))
    with pytest.raises(LocalProtocolError) as caught:
        parse(HEADER + rows)
    assert "line 2:" in str(caught.value) and "(and 80 more)" in str(caught.value)
    assert len(str(caught.value)) < 4000


def test_a_bad_file_leaves_the_table_as_it_was(tmp_path: Path) -> None:
    store = SqliteMetadataStore(tmp_path / "node.db")
    try:
        store.put_patients(parse(HEADER + GOOD))
        before = store.patients()
        with pytest.raises(LocalProtocolError):
            store.put_patients(parse(HEADER + "RGT0001,RGT,4010232137,CHANGED^A,19800101,M\n"
                                      "RGT0009,RGT,123,X^Y,19800101,M\n"))
        assert store.patients() == before
    finally:
        store.close()


def test_an_edited_record_is_checked_like_an_imported_one() -> None:
    with pytest.raises(LocalProtocolError, match="check digit"):
        check_record(PatientInput("RGT1", "RGT", "9434765918"), now_ms=1, by="x")
    with pytest.raises(LocalProtocolError, match="nhs_number"):
        check_record(PatientInput("RGT1", "RGT", "94347659１9"), now_ms=1, by="x")  # a full-width digit
    assert check_record(PatientInput("RGT1", "RGT", "943-476-5919", "", "", "f"), now_ms=1, by="x").sex == "F"
