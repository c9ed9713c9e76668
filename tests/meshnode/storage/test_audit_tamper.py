"""`audit verify` finds every edited, deleted, reordered or truncated entry and says which."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from meshnode.cli.main import main as meshnode_main
from meshnode.storage.audit import AuditEvent, EventCode
from meshnode.storage.node_storage import NodeStorage


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "node"
    assert meshnode_main(["init", "--home", str(home), "--org", "RGT"]) == 0
    storage = NodeStorage.open(home)
    for i in range(6):
        storage.audit(AuditEvent(EventCode.INSTANCES_ACCESSED, "view", actor=f"user{i}", detail=f"event {i}"))
    storage.close()
    return home


def problems(home: Path) -> list[tuple[int, str]]:
    storage = NodeStorage.open(home)
    try:
        return [(p.seq, p.problem) for p in storage.verify_audit()[1]]
    finally:
        storage.close()


def tamper(home: Path, *statements: str) -> None:
    db = sqlite3.connect(home / "node.db")
    with db:
        for sql in statements:
            db.execute(sql)
    db.close()


def test_intact_chain(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert problems(home) == []
    assert meshnode_main(["audit", "verify", "--home", str(home)]) == 0
    assert "intact" in capsys.readouterr().out


def test_edited_entry(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tamper(home, "UPDATE audit SET actor = 'someone-else' WHERE seq = 3")
    assert problems(home)[0] == (3, "content does not match its hash (edited)")
    capsys.readouterr()
    assert meshnode_main(["audit", "verify", "--home", str(home)]) == 1
    assert "entry 3: content does not match its hash (edited)" in capsys.readouterr().out


def test_deleted_entry(home: Path) -> None:
    tamper(home, "DELETE FROM audit WHERE seq = 4")
    found = problems(home)
    assert found[0][0] == 5 and "entry 4 missing (deleted)" in found[0][1]


def test_reordered_entries(home: Path) -> None:
    # swap the contents of entries 2 and 5, keeping their sequence numbers in place
    cols = "at_ms, code, action, outcome, actor, actor_org, study, manifest_id, detail, prev_hash, hash"
    tamper(
        home,
        f"CREATE TEMP TABLE t AS SELECT seq, {cols} FROM audit WHERE seq IN (2, 5)",
        "DELETE FROM audit WHERE seq IN (2, 5)",
        f"INSERT INTO audit SELECT CASE seq WHEN 2 THEN 5 ELSE 2 END, {cols} FROM t",
    )
    seqs = {seq for seq, _ in problems(home)}
    assert {2, 5} <= seqs


def test_truncated_log_detected_by_head(home: Path) -> None:
    tamper(home, "DELETE FROM audit WHERE seq >= 5")
    found = problems(home)
    assert found and "missing (log truncated)" in found[-1][1]


def test_export_json_lines(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    capsys.readouterr()
    assert meshnode_main(["audit", "export", "--json", "--home", str(home)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["seq"] for e in lines] == [1, 2, 3, 4, 5, 6]
    assert lines[0]["event_code"] == 110103 and lines[0]["event"] == "INSTANCES_ACCESSED"
    assert problems(home) == []  # the export itself was audited (110101) and the chain is still whole
