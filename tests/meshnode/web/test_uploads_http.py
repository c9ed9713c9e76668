"""Uploads over a real HTTP listener (hypercorn on 127.0.0.1): a tus upload whose connection drops in the
middle of a PATCH resumes from the server's durable offset, the file lands in quarantine byte-exact, the
PACS team accepts it, and the study is then found by QIDO-RS. The public app's real PatientGate is not on
main yet: the gate here is the in-test double of tests/adversary/test_uploads.py."""

from __future__ import annotations

import base64
import socket
import urllib.parse
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
import requests
import trio

from meshnode.gateway.announcer import StudyAnnouncer
from meshnode.gateway.intake import StudyIntake
from meshnode.gateway.routes import RouteTable
from meshnode.patient.config import PatientAccessConfig
from meshnode.patient.links import LinkKind
from meshnode.patient.uploads import Uploads, link_folder
from meshnode.storage.audit import AuditEvent
from meshnode.storage.dbthread import DatabaseThread
from meshnode.storage.node_storage import NodeStorage
from meshnode.storage.sqlite_gateway import SqliteGatewayStore
from meshnode.storage.sqlite_uploads import SqliteUploadStore
from meshnode.storage.users import MemoryUserStore
from meshnode.web.app import WebApp
from meshnode.web.auth import Authenticator, add_user, issue_token
from meshnode.web.config import HttpConfig
from meshnode.web.qido import Qido
from meshnode.web.server import serve_http
from meshnode.web.services import WebServices
from meshnode.web.uploads_web import UploadsWeb
from protocol.document import Signed
from protocol.manifest import Manifest, Priority, Purpose
from tests.adversary.test_uploads import Gate
from tests.meshnode.patient.upload_files import ct_files

TUS = {"Tus-Resumable": "1.0.0", "X-Test-Link": "L1"}


async def _no_share(study: str, to: Sequence[str], priority: Priority, purpose: Purpose) -> Signed[Manifest]:
    raise AssertionError("no route")


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[str, Path, str, DatabaseThread]]:
    home = tmp_path / "node"
    home.mkdir()
    storage = NodeStorage.open(home)
    db = DatabaseThread(storage.metadata)
    state = SqliteGatewayStore(home / "node.db")
    intake = StudyIntake(storage, db, state, StudyAnnouncer(db, state, RouteTable([]), _no_share))
    store = SqliteUploadStore(home / "node.db")

    async def audit(event: AuditEvent) -> None:
        await db.run(lambda _: storage.audit(event))

    uploads = Uploads(home, store, PatientAccessConfig(), audit, lambda: intake, lambda: 1e9)
    web = UploadsWeb(lambda: uploads, Gate({"L1": LinkKind.UPLOAD}))
    users = MemoryUserStore()
    add_user(users, "pacs1", ("pacs",), 0)
    token, _ = issue_token(users, "pacs1", "", 0)
    config = HttpConfig(listen="127.0.0.1:0")
    services = WebServices(config, "RGT", storage, db, audit)
    app = WebApp([*web.public_routes(), *web.staff_routes(), *Qido(services).routes()], Authenticator(users),
                 config, audit)
    async with trio.open_nursery() as nursery:
        await nursery.start(intake.run)
        url = await nursery.start(serve_http, app, config, home)
        yield url, home, token, db
        nursery.cancel_scope.cancel()
    store.close()
    state.close()
    storage.close()


def _dropped_patch(url: str, path: str, offset: int, declared: int, sent: bytes) -> None:
    """A PATCH that promises `declared` bytes, sends `sent`, and drops the connection."""
    parts = urllib.parse.urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as s:
        head = (f"PATCH {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nTus-Resumable: 1.0.0\r\nX-Test-Link: L1\r\n"
                f"Content-Type: application/offset+octet-stream\r\nUpload-Offset: {offset}\r\n"
                f"Content-Length: {declared}\r\n\r\n")
        s.sendall(head.encode() + sent)


async def test_interrupted_upload_resumes_then_accepted_study_is_in_qido(
        served: tuple[str, Path, str, DatabaseThread], tmp_path: Path) -> None:
    url, home, token, db = served
    data = ct_files(tmp_path / "in", 1)[0].read_bytes()
    meta = "filename " + base64.b64encode(b"CD/IMG0001").decode()

    def create() -> requests.Response:
        return requests.post(url + "/p/api/uploads", headers={**TUS, "Upload-Length": str(len(data)),
                                                              "Upload-Metadata": meta}, timeout=10)

    created = await trio.to_thread.run_sync(create)
    assert created.status_code == 201
    where = created.headers["Location"]
    await trio.to_thread.run_sync(_dropped_patch, url, where, 0, len(data), data[:len(data) // 2])

    def offset() -> int:
        return int(requests.head(url + where, headers=TUS, timeout=10).headers["Upload-Offset"])

    with trio.fail_after(20):  # the server notices the drop and commits what arrived (polled, bounded)
        while (got := await trio.to_thread.run_sync(offset)) != len(data) // 2:
            await trio.sleep(0.05)
    [part] = (home / "uploads").rglob("*.part")
    assert part.read_bytes() == data[:got]

    def rest() -> requests.Response:
        return requests.patch(url + where, data=data[got:], timeout=10, headers={
            **TUS, "Content-Type": "application/offset+octet-stream", "Upload-Offset": str(got)})

    with trio.fail_after(20):  # 409 while the server still closes the dropped request's file: as a client would
        while (done := await trio.to_thread.run_sync(rest)).status_code == 409:
            await trio.sleep(0.05)
    assert done.status_code == 204 and done.headers["Upload-Offset"] == str(len(data))
    [held] = (home / "quarantine" / link_folder("L1")).iterdir()
    assert held.read_bytes() == data

    staff = {"Authorization": f"Bearer {token}"}
    accepted = await trio.to_thread.run_sync(
        lambda: requests.post(url + "/ui/api/uploads/L1/accept", headers=staff, timeout=30))
    assert accepted.status_code == 200, accepted.text
    found = await trio.to_thread.run_sync(
        lambda: requests.get(url + "/dicomweb/studies", headers=staff | {"Accept": "application/dicom+json"},
                             timeout=10))
    assert found.status_code == 200
    assert [s["0020000D"]["Value"][0] for s in found.json()] == [held_study(data)]
    audit = [e.event.action for e in await db.run(lambda m: m.audit_entries())]
    assert "upload-received" in audit and "upload-accepted" in audit


def held_study(data: bytes) -> str:
    import io

    import pydicom
    return str(pydicom.dcmread(io.BytesIO(data)).StudyInstanceUID)
