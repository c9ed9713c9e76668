"""SOP Instance UID conflicts against hostile users and hostile failures.

- a user without the write role (or with only the UI's session cookie) cannot decide a conflict;
- a crash between storing the newcomer's blocks and recording the conflict (kill -9 inside the
  transaction, or an exception) leaves a consistent state: no instance, no conflict, an intact audit
  chain, the newcomer's blocks unreferenced (gc), and the same ingest again holds it once.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
import trio

from meshnode.dicom import synthetic
from meshnode.gateway.conflict_desk import ConflictDesk
from meshnode.gateway.routes import RouteTable
from meshnode.storage.audit import EventCode, verify_chain
from meshnode.storage.dbthread import DatabaseThread
from meshnode.storage.memory_gateway import MemoryGatewayStore
from meshnode.storage.node_storage import NodeStorage
from meshnode.storage.users import MemoryUserStore
from meshnode.study.ingest import Ingester
from meshnode.web.app import WebApp
from meshnode.web.auth import SESSION_COOKIE, Authenticator, add_user, issue_token
from meshnode.web.config import HttpConfig
from meshnode.web.conflicts_http import ConflictsHttp
from protocol.conflict import ConflictState
from protocol.errors import StorageError
from tests.meshnode.web.asgi import call


def modified(path: Path, out: Path) -> Path:
    ds = pydicom.dcmread(path)
    ds.SeriesDescription = "CORRECTED"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(buf.getvalue())
    return out


@pytest.fixture
def study(tmp_path: Path) -> list[Path]:
    return synthetic.generate_ct_study(tmp_path / "ct", slices=2, rows=32, columns=32, seed=5)


def held_store(tmp_path: Path, study: list[Path]) -> NodeStorage:
    home = tmp_path / "node"
    home.mkdir()
    storage = NodeStorage.open(home)
    Ingester(storage, workers=1, chunk_size=4096).ingest(study)
    report = Ingester(storage, workers=1, chunk_size=4096).ingest([modified(study[0], tmp_path / "new" / "a.dcm")])
    assert report.conflicts == 1 and report.added == 0
    return storage


@dataclass
class Http:
    app: WebApp
    storage: NodeStorage
    writer: str
    reader: str
    session: str
    conflict: int


@pytest.fixture
async def http(tmp_path: Path, study: list[Path]) -> AsyncIterator[Http]:
    storage = held_store(tmp_path, study)
    db = DatabaseThread(storage.metadata)
    desk = ConflictDesk(db, storage, MemoryGatewayStore(), None, RouteTable([]))
    users = MemoryUserStore()
    add_user(users, "ct3", ("pacs",), 0)  # the PACS team: queues to list, write to decide
    add_user(users, "viewer", ("read",), 0)
    writer, _ = issue_token(users, "ct3", "", 0)
    reader, _ = issue_token(users, "viewer", "", 0)
    auth = Authenticator(users)
    writer_principal = await auth.token(writer)
    assert writer_principal is not None
    session = auth.open_session(writer_principal, 1)

    async def audit(event: object) -> None:
        return None

    app = WebApp(ConflictsHttp(lambda: desk).routes(), auth, HttpConfig(listen="127.0.0.1:0"), audit)  # type: ignore[arg-type]
    [row] = storage.metadata.conflicts(ConflictState.PENDING)
    yield Http(app, storage, writer, reader, session, row.conflict_id)
    storage.close()


def decisions(storage: NodeStorage) -> int:
    return sum(1 for e in storage.metadata.audit_entries() if "decided" in e.event.detail)


async def test_an_unauthorised_user_cannot_decide(http: Http) -> None:
    path = f"/api/conflicts/{http.conflict}/decision"
    body = json.dumps({"decision": "replace"}).encode()
    for headers, status in (
        ({}, 401),  # nobody
        ({"Authorization": "Bearer mnt_forged"}, 401),
        ({"Authorization": f"Bearer {http.reader}"}, 403),  # read role only
        ({"Cookie": f"{SESSION_COOKIE}={http.session}"}, 403),  # a writer's session cookie without its CSRF token
        ({"Cookie": f"{SESSION_COOKIE}={http.session}", "X-CSRF-Token": "forged"}, 403),
    ):
        reply = await call(http.app, "POST", path, headers={**headers, "Content-Type": "application/json"},
                           body=body)
        assert reply.status == status, (headers, reply.body)
    assert http.storage.metadata.conflict(http.conflict).state is ConflictState.PENDING  # type: ignore[union-attr]
    assert decisions(http.storage) == 0
    # read alone may not list (the PACS team's queue); the PACS user may (with both digests), by token or session
    assert (await call(http.app, "GET", "/api/conflicts",
                       headers={"Authorization": f"Bearer {http.reader}"})).status == 403
    for headers in ({"Authorization": f"Bearer {http.writer}"}, {"Cookie": f"{SESSION_COOKIE}={http.session}"}):
        listing = await call(http.app, "GET", "/api/conflicts", headers=headers)
        assert listing.status == 200 and len(listing.json()[0]["newcomer_sha256"]) == 64


async def test_bad_decisions_are_refused_and_change_nothing(http: Http) -> None:
    auth = {"Authorization": f"Bearer {http.writer}", "Content-Type": "application/json"}
    for path, body, status in (
        (f"/api/conflicts/{http.conflict}/decision", b'{"decision": "overwrite-all"}', 400),
        (f"/api/conflicts/{http.conflict}/decision", b"[1]", 400),
        (f"/api/conflicts/{http.conflict}/decision", b"not json", 400),
        ("/api/conflicts/-1/decision", b'{"decision": "discard"}', 400),
        ("/api/conflicts/99999/decision", b'{"decision": "discard"}', 400),
    ):
        reply = await call(http.app, "POST", path, headers=auth, body=body)
        assert reply.status == status, (path, body, reply.body)
    assert decisions(http.storage) == 0
    ok = await call(http.app, "POST", f"/api/conflicts/{http.conflict}/decision", headers=auth,
                    body=b'{"decision": "discard"}')
    assert ok.status == 200 and ok.json()["decided_by"] == "user:ct3"
    replay = await call(http.app, "POST", f"/api/conflicts/{http.conflict}/decision", headers=auth,
                        body=b'{"decision": "replace"}')
    assert replay.status == 400 and "decided already" in replay.json()["message"]
    assert decisions(http.storage) == 1
    last = http.storage.metadata.audit_entries()[-1].event
    assert last.code == EventCode.SECURITY_ALERT and last.actor == "user:ct3"


CHILD = r"""
import os, sys
from pathlib import Path
from meshnode.storage.node_storage import NodeStorage
from meshnode.study.ingest import Ingester

storage = NodeStorage.open(Path(sys.argv[1]))
conn = storage.metadata._db
conn.create_function("die", 0, lambda: os.kill(os.getpid(), 9))
conn.execute("CREATE TEMP TRIGGER die_after_hold AFTER INSERT ON instance_conflicts BEGIN SELECT die(); END")
Ingester(storage, workers=1, chunk_size=4096).ingest([Path(sys.argv[2])])
print("survived")
"""


def test_kill_9_between_storing_the_newcomer_and_recording_the_conflict(tmp_path: Path, study: list[Path]) -> None:
    home = tmp_path / "node"
    home.mkdir()
    storage = NodeStorage.open(home)
    Ingester(storage, workers=1, chunk_size=4096).ingest(study)
    before = storage.metadata.studies()
    storage.close()
    newcomer = modified(study[0], tmp_path / "new" / "a.dcm")
    child = subprocess.run([sys.executable, "-c", CHILD, str(home), str(newcomer)], capture_output=True,
                           timeout=120, env={**os.environ})
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]
    storage = NodeStorage.open(home)
    try:
        assert storage.metadata.conflicts() == []  # the conflict row died with its transaction
        assert storage.metadata.studies() == before  # ... and no instance beside the original
        # the audit chain is intact, its head file at most behind the log (nothing of the dead transaction)
        assert verify_chain(storage.metadata.audit_entries(), storage.head.recorded()) == []
        # the newcomer's block files (durable before the metadata) are unrecorded orphans: `meshnode gc`'s
        report = Ingester(storage, workers=1, chunk_size=4096).ingest([newcomer])
        assert report.conflicts == 1
        assert len(storage.metadata.conflicts(ConflictState.PENDING)) == 1
    finally:
        storage.close()


def test_an_exception_in_the_transaction_leaves_nothing(tmp_path: Path, study: list[Path]) -> None:
    home = tmp_path / "node"
    home.mkdir()
    storage = NodeStorage.open(home)
    try:
        Ingester(storage, workers=1, chunk_size=4096).ingest(study)
        audit_before = len(storage.metadata.audit_entries())
        conn: sqlite3.Connection = storage.metadata._db  # type: ignore[attr-defined]
        conn.execute("CREATE TEMP TRIGGER fail_hold AFTER INSERT ON instance_conflicts"
                     " BEGIN SELECT RAISE(ABORT, 'disk I/O error (test)'); END")
        newcomer = modified(study[0], tmp_path / "new" / "a.dcm")
        with pytest.raises(StorageError):
            Ingester(storage, workers=1, chunk_size=4096).ingest([newcomer])
        assert storage.metadata.conflicts() == []
        assert len(storage.metadata.audit_entries()) == audit_before
        conn.execute("DROP TRIGGER fail_hold")
        assert Ingester(storage, workers=1, chunk_size=4096).ingest([newcomer]).conflicts == 1
    finally:
        storage.close()
