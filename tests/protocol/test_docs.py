"""The wire spec in docs/protocol/ states what the code does (labels, limits, error codes)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from protocol import directory_messages as dm
from protocol.address_record import AddressRecord
from protocol.certificate import ROLE_NAMES, Certificate
from protocol.errors import ERRORS_BY_CODE, REGISTRY
from protocol.framing import ABSOLUTE_MAX_FRAME
from protocol.manifest import MAX_MANIFEST_ITEMS, Manifest
from protocol.forward_report import ForwardReport
from protocol.recall import Recall
from protocol.receipt import Receipt
from protocol.roster import Roster
from protocol.study_request import RequestResponse, StudyRequest

from tests.protocol import factories as f

DOCS = Path(__file__).resolve().parents[2] / "docs" / "protocol"
DOCUMENT_TYPES = (Certificate, Roster, AddressRecord, Manifest, Receipt, Recall, StudyRequest, RequestResponse,
                  ForwardReport)


def read(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def test_error_table_matches_errors_py() -> None:
    text = read("documents.md")
    table = text.split("<!-- errors:begin -->")[1].split("<!-- errors:end -->")[0]
    rows = table.strip().splitlines()[2:]
    documented = {}
    for row in rows:
        cells = [c.strip().strip("`") for c in row.strip("|").split("|")]
        documented[int(cells[0])] = (cells[1], cells[2], cells[3])
    expected = {
        code: (cls.name, cls.__name__, cls.__mro__[1].__name__) for code, cls in ERRORS_BY_CODE.items()
    }
    assert documented == expected


def test_other_error_table_matches_the_registry() -> None:
    text = read("documents.md")
    table = text.split("<!-- other-errors:begin -->")[1].split("<!-- other-errors:end -->")[0]
    documented = {}
    for row in table.strip().splitlines()[2:]:
        cells = [c.strip().strip("`") for c in row.strip("|").split("|")]
        documented[int(cells[0])] = (cells[1], cells[2])
    expected = {e.code: (e.name, e.rebuilt_as.__name__) for e in REGISTRY if e.code not in ERRORS_BY_CODE}
    assert documented == expected


@pytest.mark.parametrize("cls", DOCUMENT_TYPES, ids=lambda c: c.__name__)
def test_every_label_and_size_limit_is_documented(cls: type[Certificate]) -> None:
    text = read("documents.md")
    row = next(line for line in text.splitlines() if f"`{cls.LABEL}`" in line and "bytes" in line)
    assert f"{cls.MAX_BYTES:,} bytes" in row


def test_every_body_field_is_documented() -> None:
    text = read("documents.md")
    for doc, _ in f.examples():
        for field in doc.to_body():
            assert f"| `{field}` |" in text, (type(doc).__name__, field)
    for field in f.make_manifest().summary.to_wire():
        assert f"| `{field}` |" in text
    for field in f.make_instance(1).to_wire():
        assert f"| `{field}` |" in text
    for role in ROLE_NAMES:
        assert f"`{role}`" in text


def test_numbers_in_the_cbor_page() -> None:
    text = read("cbor-and-framing.md")
    assert f"{ABSOLUTE_MAX_FRAME:,} bytes" in text
    assert f"{MAX_MANIFEST_ITEMS:,}" in text


def test_directory_page() -> None:
    text = read("directory.md")
    assert dm.DIRECTORY_PROTOCOL in text
    assert f"{dm.MAX_REQUEST_FRAME:,} bytes" in text
    assert f"{dm.MAX_RESPONSE_FRAME:,} bytes" in text
    for op in re.findall(r'"op": "([a-z-]+)"', Path(dm.__file__).read_text(encoding="utf-8")):
        assert f"| `{op}` |" in text, op
