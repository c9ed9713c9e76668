"""`meshnode patients` as an operator runs it: a bad CSV (bad NHS number, duplicate, formula, oversized) is
refused whole with its line named and the table unchanged; edits are checked and audited."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshnode.cli.main import main as meshnode_main
from meshnode.gateway.patient_table import MAX_CSV_BYTES
from meshnode.storage.node_storage import NodeStorage

HEADER = "local_id,issuer,nhs_number,name,birth_date,sex\n"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "node"
    assert meshnode_main(["init", "--home", str(home), "--org", "RJ1"]) == 0
    return home


def table(home: Path, capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    capsys.readouterr()
    assert meshnode_main(["patients", "list", "--json", "--home", str(home)]) == 0
    rows: list[dict[str, object]] = json.loads(capsys.readouterr().out)
    return rows


def audit_actions(home: Path) -> list[str]:
    storage = NodeStorage.open(home)
    try:
        return [e.event.action for e in storage.metadata.audit_entries() if e.event.action.startswith("patient-")]
    finally:
        storage.close()


def test_import_is_strict(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.csv"
    good.write_text(HEADER + "RJ1-1,RJ1,9434765919,SMITH^JANE,19700101,F\n")
    assert meshnode_main(["patients", "import", str(good), "--home", str(home)]) == 0
    before = table(home, capsys)
    assert [r["local_id"] for r in before] == ["RJ1-1"]
    for name, line, body in [
        ("bad-digit.csv", 3, HEADER + "RJ1-1,RJ1,4010232137,CHANGED^A,19700101,F\nRJ1-2,RJ1,4010232138,B^B,,\n"),
        ("duplicate.csv", 3, HEADER + "RJ1-2,RJ1,4010232137,B^B,,\nRJ1-2,RJ1,9434765919,C^C,,\n"),
        ("formula.csv", 2, HEADER + "RJ1-2,RJ1,4010232137,\"=HYPERLINK(\"\"http://x\"\")\",,\n"),
    ]:
        path = tmp_path / name
        path.write_text(body)
        capsys.readouterr()
        assert meshnode_main(["patients", "import", str(path), "--home", str(home)]) != 0
        assert f"line {line}:" in capsys.readouterr().err
        assert table(home, capsys) == before
    big = tmp_path / "big.csv"
    big.write_bytes(HEADER.encode() + b"x" * (MAX_CSV_BYTES + 1))
    assert meshnode_main(["patients", "import", str(big), "--home", str(home)]) != 0
    assert table(home, capsys) == before
    assert audit_actions(home) == ["patient-table-import"]


def test_set_and_delete(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--home", str(home)]
    assert meshnode_main(["patients", "set", "RJ1-9", "--issuer", "RJ1", "--nhs-number", "9434765918", *base]) != 0
    assert table(home, capsys) == []
    assert meshnode_main(["patients", "set", "RJ1-9", "--issuer", "RJ1", "--nhs-number", "943 476 5919",
                          "--name", "SMITH^JANE", "--birth-date", "19700101", "--sex", "F", *base]) == 0
    assert [r["nhs_number"] for r in table(home, capsys)] == ["9434765919"]
    assert meshnode_main(["patients", "delete", "RJ1-9", *base]) == 0
    assert meshnode_main(["patients", "delete", "RJ1-9", *base]) != 0
    assert table(home, capsys) == []
    assert audit_actions(home) == ["patient-table-add", "patient-table-delete"]
