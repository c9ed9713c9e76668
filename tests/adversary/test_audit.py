"""Adversary: someone with write access to a node's database and state/ folder, but not its key,
tries to hide what the audit log recorded (DESIGN.md threats: audit log truncated or rewritten,
audit repository down). Each attack is detected locally, or, where only an outside copy can tell,
by the audit repository."""

from __future__ import annotations

import base64
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest
import trio

from meshnode.cli.main import main as meshnode_main
from meshnode.storage.audit import GENESIS, AuditEvent, EventCode, Outcome, entry_hash
from meshnode.storage.audit_checkpoint import CHECKPOINT_EVERY, sign_checkpoint
from meshnode.storage.node_storage import NodeStorage
from meshnode.storage.sqlite_metadata import SqliteMetadataStore
from protocol.keys import SigningKey
from tests.meshnode.audit_export.helpers import make_pki, parse_rfc5424, validate
from tests.meshnode.audit_export.receivers import TlsReceiver
from tests.meshnode.audit_export.test_exporter import eventually, exporter


def node_home(tmp_path: Path, entries: int) -> Path:
    home = tmp_path / "node"
    assert meshnode_main(["init", "--home", str(home), "--org", "RGT"]) == 0
    storage = NodeStorage.open(home)
    storage.audit(*[AuditEvent(EventCode.INSTANCES_TRANSFERRED, "served", actor="12D3KooWpeer", actor_org="RJ1",
                               detail=f"batch {i}") for i in range(entries)])
    storage.close()
    return home


def sql(home: Path, *statements: str) -> None:
    db = sqlite3.connect(home / "node.db")
    with db:
        for s in statements:
            db.execute(s)
    db.close()


def rehash(home: Path) -> None:
    """Recompute every hash and the head file, as an attacker who knows the algorithm would."""
    db = sqlite3.connect(home / "node.db")
    reader = SqliteMetadataStore.__new__(SqliteMetadataStore)
    reader._db = db
    reader._lock = threading.RLock()  # what __init__ would have made
    prev = GENESIS
    entries = reader.audit_entries()
    with db:
        for e in entries:
            digest = entry_hash(e.seq, e.at_ms, e.event, prev)
            db.execute("UPDATE audit SET prev_hash = ?, hash = ? WHERE seq = ?", (prev, digest, e.seq))
            prev = digest
    db.close()
    (home / "state" / "audit-head").write_text(f"{entries[-1].seq} {prev.hex()}\n")


def verify(home: Path) -> int:
    return meshnode_main(["audit", "verify", "--home", str(home)])


def test_erasing_what_was_served_to_a_peer_is_detected(tmp_path: Path) -> None:
    home = node_home(tmp_path, 10)
    sql(home, "DELETE FROM audit WHERE actor_org = 'RJ1' AND seq > 3")
    rehash(home)  # a consistent, shorter chain and head file
    sql(home, "DELETE FROM audit_tail", "DELETE FROM audit_checkpoints WHERE seq > 3")
    assert verify(home) == 1


def test_rebuilt_chain_signed_with_the_attackers_own_key_is_forged(tmp_path: Path) -> None:
    home = node_home(tmp_path, 10)
    sql(home, "UPDATE audit SET actor_org = 'RGT' WHERE seq = 5")
    rehash(home)
    mallory = SigningKey(bytes(32))
    db = sqlite3.connect(home / "node.db")
    head_seq, head_hash = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    forged = sign_checkpoint(mallory, head_seq, bytes(head_hash), 0)
    with db:
        db.execute("UPDATE audit_tail SET seq = ?, hash = ?, signature = ?", (head_seq, head_hash, forged.signature))
        db.execute("DELETE FROM audit_checkpoints")
    db.close()
    storage = NodeStorage.open(home)
    try:
        found = [p.problem for p in storage.verify_audit()[1]]
    finally:
        storage.close()
    assert any("forged" in p for p in found), found


def test_truncation_alert_reaches_the_repository_and_stays_until_acknowledged(tmp_path: Path) -> None:
    home = node_home(tmp_path, 10)
    pki = make_pki(tmp_path / "pki")
    receiver = TlsReceiver(pki)
    storage = NodeStorage.open(home)

    async def scenario() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(receiver.serve, 0)
            await nursery.start(exporter(storage, port, pki.ca_cert).run)
            await eventually(lambda: len(receiver.frames()) == 1)  # the first checkpoint
            sql(home, "DELETE FROM audit WHERE seq > 6")
            storage.audit(AuditEvent(EventCode.INSTANCES_ACCESSED, "view"))  # the node carries on
            await eventually(lambda: len(receiver.frames()) == 2)
            nursery.cancel_scope.cancel()

    try:
        trio.run(scenario)
    finally:
        storage.close()
    message = validate(parse_rfc5424(receiver.frames()[1]).xml)
    assert message.find("EventIdentification/EventID").get("csd-code") == "110113"
    assert message.find("EventIdentification").get("EventOutcomeIndicator") == str(int(Outcome.SERIOUS_FAILURE))
    assert verify(home) == 1 and verify(home) == 1
    assert meshnode_main(["audit", "acknowledge", "--home", str(home), "--reason", "INC-1 restored"]) == 0
    assert verify(home) == 0


def test_rollback_to_an_older_signed_state_is_visible_at_the_repository(tmp_path: Path) -> None:
    """The one thing the node cannot see alone: its whole state replaced by an older copy it signed.
    The repository holds the later checkpoints, which the rolled-back log contradicts."""
    home = node_home(tmp_path, 5)
    backup = tmp_path / "backup"
    shutil.copytree(home, backup)
    pki = make_pki(tmp_path / "pki")
    receiver = TlsReceiver(pki)

    async def run_exporter(target: Path, events: int, frames: int) -> None:
        storage = NodeStorage.open(target)
        try:
            storage.audit(*[AuditEvent(EventCode.INSTANCES_TRANSFERRED, "served", detail=str(i))
                            for i in range(events)])
            async with trio.open_nursery() as nursery:
                port = await nursery.start(receiver.serve, 0)
                await nursery.start(exporter(storage, port, pki.ca_cert).run)
                await eventually(lambda: len(receiver.frames()) >= frames)
                nursery.cancel_scope.cancel()
        finally:
            storage.close()

    trio.run(run_exporter, home, CHECKPOINT_EVERY, 2)  # checkpoints at 1 and 64 reach the repository
    shutil.rmtree(home)
    shutil.copytree(backup, home)  # database, state/ and all: the node's own older, signed state
    trio.run(run_exporter, home, CHECKPOINT_EVERY + 1, 3)  # and the node carries on past 64 again
    assert verify(home) == 0  # locally consistent: this is the limit the repository covers

    checkpoints: dict[int, set[bytes]] = {}
    for raw in receiver.frames():
        doc = validate(parse_rfc5424(raw).xml)
        if doc.find("EventIdentification/EventTypeCode").get("csd-code") != "audit-checkpoint":
            continue
        details = {d.get("type"): base64.b64decode(d.get("value")) for d in doc.iter("ParticipantObjectDetail")}
        checkpoints.setdefault(int(details["seq"]), set()).add(details["hash"])
    assert len(checkpoints[CHECKPOINT_EVERY]) == 2  # two different entries signed as number 64: a rollback


@pytest.mark.slow
def test_running_node_exports_a_truncation_alert_to_rsyslog(tmp_path: Path) -> None:
    """Real processes: a node with [audit_repository] pointing at a real rsyslog. Rows are deleted from
    its audit log while it runs; the alert raised by the next write reaches rsyslog as a valid A.5
    message, and the node keeps running."""
    from meshnode.audit_export.atna import SECURITY_CONFIGURATION
    from tests.meshnode.audit_export.receivers import free_port
    from tests.meshnode.audit_export.rsyslog import Rsyslog, rsyslogd
    from meshnode.demo.mesh import MeshDemo
    from meshnode.demo.workspace import Workspace

    if rsyslogd() is None:
        pytest.skip("rsyslog not installed (Makefile SYSTEM_DEPS)")
    pki = make_pki(tmp_path / "pki")
    repository = Rsyslog(tmp_path / "rsyslog", pki, free_port())
    repository.start()
    mesh = MeshDemo(Workspace(tmp_path / "mesh"))
    try:
        node = mesh.setup([("a", "RGT", "Guy's and St Thomas'")], start=False)["a"]
        with open(node.home / "node.toml", "a") as f:
            f.write(f'\n[audit_repository]\naddress = "127.0.0.1:{repository.port}"\nca = "{pki.ca_cert}"\n')
        mesh.start(node)
        mesh.wait_for(lambda: repository.messages(), 30, "the first checkpoint at the repository")
        mesh.wait_for(lambda: len(mesh.audit(node)) >= 2, 30, "audit entries")
        sql(node.home, "DELETE FROM audit WHERE seq > 1")
        assert mesh.ws.run("meshnode", "audit", "verify", "--home", str(node.home), check=False).code == 1

        def alert_arrived() -> bool:
            for raw in repository.messages():
                doc = validate(parse_rfc5424(raw).xml)
                codes = [c.get("csd-code") for c in doc.iter("EventTypeCode")]
                if codes == [SECURITY_CONFIGURATION[0], "audit-log-truncated"]:
                    return True
            return False

        mesh.wait_for(alert_arrived, 30, "the truncation alert at the repository")
        assert mesh.procs["a"].poll() is None
    finally:
        mesh.close()
        repository.stop()
