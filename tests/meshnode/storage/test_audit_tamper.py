"""`audit verify` finds every edited, deleted, reordered or truncated entry and says which."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from meshnode.cli.main import main as meshnode_main
from meshnode.storage.audit import GENESIS, AuditEvent, EventCode, entry_hash
from meshnode.storage.node_storage import NodeStorage
from meshnode.storage.sqlite_metadata import SqliteMetadataStore


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
    assert any("missing (log truncated)" in problem for _, problem in found)


def test_export_json_lines(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    capsys.readouterr()
    assert meshnode_main(["audit", "export", "--json", "--home", str(home)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["seq"] for e in lines] == [1, 2, 3, 4, 5, 6]
    assert lines[0]["event_code"] == 110103 and lines[0]["event"] == "INSTANCES_ACCESSED"
    assert problems(home) == []  # the export itself was audited (110101) and the chain is still whole


# -- finding 6: a truncation stays detected; a rebuilt chain is detected without the key -------------------
def verify_cli(home: Path) -> int:
    return meshnode_main(["audit", "verify", "--home", str(home)])


def alerts(home: Path) -> list[str]:
    storage = NodeStorage.open(home)
    try:
        return [e.event.action for e in storage.metadata.audit_entries() if e.event.code is EventCode.SECURITY_ALERT]
    finally:
        storage.close()


def ordinary_event(home: Path) -> None:
    storage = NodeStorage.open(home)
    try:
        storage.audit(AuditEvent(EventCode.INSTANCES_ACCESSED, "view", actor="user9", detail="after the attack"))
    finally:
        storage.close()


def test_truncation_stays_detected_until_acknowledged(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    head_before = (home / "state" / "audit-head").read_text()
    tamper(home, "DELETE FROM audit WHERE seq >= 5")
    assert verify_cli(home) == 1
    assert verify_cli(home) == 1  # the first verify's own entry does not make the log "intact" again
    ordinary_event(home)
    assert verify_cli(home) == 1  # nor does any ordinary event
    assert (home / "state" / "audit-head").read_text() == head_before  # the head never moved backwards
    assert alerts(home).count("audit-log-truncated") == 1  # one alert, not one per write
    out = capsys.readouterr().out
    assert "unacknowledged audit alert: entry 6 was recorded as the head" in out

    assert meshnode_main(["audit", "acknowledge", "--home", str(home), "--reason", "restored from backup; ticket 42"]) == 0
    assert "acknowledged" in capsys.readouterr().out
    assert verify_cli(home) == 0
    assert "audit-alert-acknowledged" in alerts(home)
    ordinary_event(home)
    assert verify_cli(home) == 0


def test_acknowledge_needs_an_alert_and_a_reason(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert meshnode_main(["audit", "acknowledge", "--home", str(home), "--reason", "x"]) != 0
    assert "no audit alert to acknowledge" in capsys.readouterr().err
    tamper(home, "DELETE FROM audit WHERE seq >= 5")
    ordinary_event(home)
    assert meshnode_main(["audit", "acknowledge", "--home", str(home), "--reason", "  "]) != 0
    assert verify_cli(home) == 1


def rebuild_chain(home: Path, edit: str) -> None:
    """What an attacker with write access to node.db and state/ (but not node.key) can do: edit an entry,
    recompute every hash after it, and rewrite the head file to match."""
    tamper(home, edit)
    db = sqlite3.connect(home / "node.db")
    storage = SqliteMetadataStore.__new__(SqliteMetadataStore)
    storage._db = db
    storage._lock = threading.RLock()  # what __init__ would have made
    entries = storage.audit_entries()
    prev = GENESIS
    with db:
        for e in entries:
            digest = entry_hash(e.seq, e.at_ms, e.event, prev)
            db.execute("UPDATE audit SET prev_hash = ?, hash = ? WHERE seq = ?", (prev, digest, e.seq))
            prev = digest
    db.close()
    (home / "state" / "audit-head").write_text(f"{entries[-1].seq} {prev.hex()}\n")


def test_rebuilt_chain_without_the_key_is_detected(home: Path) -> None:
    rebuild_chain(home, "UPDATE audit SET actor = 'someone-else' WHERE seq = 3")
    found = problems(home)
    assert any("differs from the node's signed newest entry (rewritten)" in p for _, p in found), found
    assert "audit-verify" in alerts(home)  # a failed verify is a Security Alert, exported


def test_rebuilt_chain_with_checkpoints_deleted_is_detected(home: Path) -> None:
    rebuild_chain(home, "UPDATE audit SET detail = 'nothing happened' WHERE seq = 2")
    tamper(home, "DELETE FROM audit_checkpoints", "DELETE FROM audit_tail")
    ordinary_event(home)  # the node carries on: it must not take the unsigned log for a new one and sign it
    found = problems(home)
    assert any("no signed checkpoint" in p for _, p in found), found


def test_rewrite_deep_in_a_long_log_is_detected_by_kept_checkpoints(tmp_path: Path) -> None:
    home = tmp_path / "node"
    assert meshnode_main(["init", "--home", str(home), "--org", "RGT"]) == 0
    storage = NodeStorage.open(home)
    storage.audit(*[AuditEvent(EventCode.INSTANCES_ACCESSED, "view", detail=f"{i}") for i in range(200)])
    storage.audit(AuditEvent(EventCode.INSTANCES_ACCESSED, "view", detail="last"))
    storage.close()
    # the attacker rebuilds from entry 100 and drops every checkpoint after it and the tail
    rebuild_chain(home, "UPDATE audit SET detail = 'x' WHERE seq = 100")
    tamper(home, "DELETE FROM audit_checkpoints WHERE seq >= 100", "DELETE FROM audit_tail")
    found = problems(home)
    assert (128, "no valid signed checkpoint where one is required (deleted)") in found, found


def test_forged_checkpoint_is_detected(home: Path) -> None:
    tamper(home, "UPDATE audit_tail SET signature = zeroblob(64)")
    found = problems(home)
    assert any("forged" in p for _, p in found), found


def test_an_append_never_signs_a_chain_changed_under_it(home: Path) -> None:
    """After a rebuild, neither the node's next appends nor its periodic checkpoint sign the attacker's chain."""
    rebuild_chain(home, "UPDATE audit SET actor = 'someone-else' WHERE seq = 3")
    tamper(home, "DELETE FROM audit_tail")
    ordinary_event(home)
    storage = NodeStorage.open(home)
    try:
        before = storage.metadata.audit_checkpoints()
        assert storage.checkpoint() is False and storage.metadata.audit_checkpoints() == before
    finally:
        storage.close()
    ordinary_event(home)
    assert problems(home)


def test_verify_while_the_node_appends_is_not_a_false_alarm(home: Path) -> None:
    """The running node and `meshnode audit verify` share the database and the head file."""
    import threading

    done = threading.Event()
    failures: list[BaseException] = []

    def node() -> None:
        writer = NodeStorage.open(home)
        try:
            for i in range(100):
                writer.audit(AuditEvent(EventCode.INSTANCES_TRANSFERRED, "served", detail=str(i)))
        except BaseException as exc:  # reported by the test below
            failures.append(exc)
        finally:
            writer.close()
            done.set()

    thread = threading.Thread(target=node)
    thread.start()
    seen = []
    while not done.is_set():
        seen.append(problems(home))
    thread.join()
    assert not failures
    assert seen and all(found == [] for found in seen), [f for f in seen if f][:1]
    assert problems(home) == [] and "audit-log-truncated" not in alerts(home)


def test_a_log_kept_before_signing_is_signed_only_once_an_operator_accepts_it(tmp_path: Path) -> None:
    home = tmp_path / "node"
    assert meshnode_main(["init", "--home", str(home), "--org", "RGT"]) == 0
    legacy = SqliteMetadataStore(home / "node.db")  # as a node of the previous version wrote it: no key
    legacy.append_audit([AuditEvent(EventCode.IMPORT, "ingest", detail=str(i)) for i in range(70)], 1)
    legacy.close()
    ordinary_event(home)
    assert any("no signed checkpoint" in p for _, p in problems(home))  # not silently adopted
    assert meshnode_main(["audit", "acknowledge", "--home", str(home), "--reason", "upgrade to signed audit"]) == 0
    assert problems(home) == []
    ordinary_event(home)
    assert problems(home) == []


async def test_web_ui_chain_status_shows_the_alarm_and_the_signature(home: Path) -> None:
    from meshnode.storage.dbthread import DatabaseThread
    from meshnode.web.chain import ChainVerifier

    storage = NodeStorage.open(home)
    try:
        verifier = ChainVerifier(DatabaseThread(storage.metadata), storage)
        assert (await verifier.check()).intact
        tamper(home, "DELETE FROM audit WHERE seq >= 5")
        storage.audit(AuditEvent(EventCode.INSTANCES_ACCESSED, "view"))
        for _ in range(2):  # incremental checks report it once, not once more each time
            status = await verifier.check()
            found = [p.problem for p in status.problems]
            assert sum("unacknowledged audit alert" in p for p in found) == 1, found
        tamper(home, "UPDATE audit_tail SET signature = zeroblob(64)")
        assert any("no valid signed checkpoint" in p.problem for p in (await verifier.check()).problems)
    finally:
        storage.close()
