"""Uploads from patients and external clinicians, attacked: every bad file kind refused with its reason and
nothing written outside quarantine; tus abuse; the PACS team's review without `queues`, twice, or after a
rejection. The public routes run behind an in-test PatientGate double (a header names the link) until the
public app's real gate lands."""

from __future__ import annotations

import base64
import io
import os
import shutil
import struct
import threading
import time
import zipfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
import trio.testing
from pydicom import dcmread
from starlette.requests import Request

from meshnode.gateway.announcer import StudyAnnouncer
from meshnode.gateway.intake import StudyIntake
from meshnode.gateway.reconcile_config import ReconciliationSettings
from meshnode.gateway.reconciler import Reconciler
from meshnode.gateway.routes import RouteTable
from meshnode.patient.config import PatientAccessConfig
from meshnode.patient.links import LinkGrant, LinkKind
from meshnode.patient.upload_errors import UploadStateError
from meshnode.patient.uploads import Uploads, link_folder
from meshnode.storage.audit import AuditEvent
from meshnode.storage.dbthread import DatabaseThread
from meshnode.storage.node_storage import NodeStorage
from meshnode.storage.sqlite_gateway import SqliteGatewayStore
from meshnode.storage.sqlite_uploads import SqliteUploadStore
from meshnode.storage.upload_store import MemoryUploadStore, UploadRow
from meshnode.storage.users import MemoryUserStore
from meshnode.web.app import WebApp
from meshnode.web.auth import Authenticator, add_user, issue_token
from meshnode.web.config import HttpConfig
from meshnode.web.http import HttpError
from meshnode.web.uploads_web import UploadsWeb
from protocol.document import Signed
from protocol.errors import NotFoundError
from protocol.manifest import Manifest, Priority, Purpose
from tests.meshnode.patient.upload_files import (
    ct_files,
    dicomdir_bytes,
    raw_name_zip,
    with_preamble,
    zip_bytes,
)
from tests.meshnode.web.asgi import Reply, call

TUS = {"Tus-Resumable": "1.0.0"}


@dataclass
class Gate:
    """PatientGate double: the link named by X-Test-Link, if it is live and of the wanted kind."""

    live: dict[str, LinkKind] = field(default_factory=dict)

    async def require(self, request: Request, kind: LinkKind) -> LinkGrant:
        link = request.headers.get("x-test-link", "")
        if self.live.get(link) is not kind:
            raise HttpError(401, "no patient session")
        return LinkGrant(link, kind, (), 2e9, False, f"Person of {link}", "alice")


@dataclass
class Env:
    app: WebApp
    home: Path
    gate: Gate
    tokens: dict[str, str]
    storage: NodeStorage
    files: list[Path]
    events: list[AuditEvent]
    uploads: Uploads | None = None
    intake: StudyIntake | None = None

    async def tus(self, method: str, path: str, link: str, headers: dict[str, str] | None = None,
                  body: bytes | list[bytes] = b"") -> Reply:
        return await call(self.app, method, path, headers={**TUS, "X-Test-Link": link, **(headers or {})}, body=body)

    async def create(self, link: str, length: int, name: str = "IM1") -> Reply:
        meta = "filename " + base64.b64encode(name.encode()).decode()
        return await self.tus("POST", "/p/api/uploads", link, {"Upload-Length": str(length), "Upload-Metadata": meta})

    async def upload(self, link: str, data: bytes, name: str = "IM1") -> Reply:
        created = await self.create(link, len(data), name)
        assert created.status == 201, created.body
        if not data:
            return Reply(204, {}, b"")  # complete as created
        return await self.tus("PATCH", created.headers["location"], link,
                              {"Content-Type": "application/offset+octet-stream", "Upload-Offset": "0",
                               "Content-Length": str(len(data))}, data)

    async def results(self, link: str) -> dict[str, tuple[str, str]]:
        reply = await self.tus("GET", "/p/api/uploads", link)
        return {f["name"]: (f["outcome"], f["reason"]) for f in reply.json()["files"]}

    async def staff(self, method: str, path: str, who: str, body: bytes = b"") -> Reply:
        return await call(self.app, method, path, body=body,
                          headers={"Authorization": f"Bearer {self.tokens[who]}", "Content-Type": "application/json"})

    def written(self) -> list[Path]:
        """Every file under the node home's upload areas."""
        return [p for top in ("uploads", "quarantine", "tmp") for p in (self.home / top).rglob("*") if p.is_file()]


async def _no_share(study: str, to: Sequence[str], priority: Priority, purpose: Purpose) -> Signed[Manifest]:
    raise AssertionError("an accepted upload goes on no route here")


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    home = tmp_path / "node"
    home.mkdir()
    storage = NodeStorage.open(home)
    db = DatabaseThread(storage.metadata)
    state = SqliteGatewayStore(home / "node.db")
    intake = StudyIntake(storage, db, state, StudyAnnouncer(db, state, RouteTable([]), _no_share))
    store = SqliteUploadStore(home / "node.db")
    events: list[AuditEvent] = []

    async def audit(event: AuditEvent) -> None:
        events.append(event)

    config = PatientAccessConfig(max_upload_mb=4, max_file_mb=1, max_files=20)
    uploads = Uploads(home, store, config, audit, lambda: intake, lambda: 1e9)
    gate = Gate({"L1": LinkKind.UPLOAD, "L2": LinkKind.UPLOAD, "S1": LinkKind.SHARE})
    web = UploadsWeb(lambda: uploads, gate)
    users = MemoryUserStore()
    add_user(users, "pacs1", ("pacs",), 0)
    add_user(users, "doc", ("clinician",), 0)
    tokens = {n: issue_token(users, n, "", 0)[0] for n in ("pacs1", "doc")}
    app = WebApp([*web.public_routes(), *web.staff_routes()], Authenticator(users),
                 HttpConfig(listen="127.0.0.1:0"), audit)
    files = ct_files(tmp_path / "study", 3)
    async with trio.open_nursery() as nursery:
        await nursery.start(intake.run)
        yield Env(app, home, gate, tokens, storage, files, events, uploads, intake)
        nursery.cancel_scope.cancel()
    store.close()
    state.close()
    storage.close()


def _inside_quarantine(env: Env) -> None:
    q = (env.home / "quarantine").resolve()
    for path in env.written():
        assert path.resolve().is_relative_to(q), path  # parts and scratch files are gone after the checks
    for path in (env.home.parent).rglob("*"):
        if path.is_file() and not path.resolve().is_relative_to(env.home.resolve()):
            assert path.parent.name == "study", path  # only the test's own inputs


# -- every bad file kind ----------------------------------------------------------------------------------

async def test_a_folder_with_good_bad_and_executable_files(env: Env) -> None:
    good = env.files[0].read_bytes()
    cases = {
        "good.dcm": good,
        "notes.txt": b"just some text, not DICOM at all" * 10,
        "pe.dcm": with_preamble(good, b"MZ\x90\x00"),
        "elf.dcm": with_preamble(good, b"\x7fELF\x02\x01\x01"),
        "macho.dcm": with_preamble(good, b"\xcf\xfa\xed\xfe"),
        "script.dcm": with_preamble(good, b"#!/bin/sh\nrm -rf /\n"),
        "junk-preamble.dcm": with_preamble(good, b"\x01\x02\x03"),
        "tiff.dcm": with_preamble(env.files[1].read_bytes(), b"II*\x00\x08\x00\x00\x00"),
        "truncated.dcm": good[:400],
        "no-meta.dcm": good[:132] + good[good.index(b"\x08\x00"):][:300],
        "DICOMDIR": dicomdir_bytes(),
        "empty": b"",
    }
    for name, data in cases.items():
        reply = await env.upload("L1", data, name)
        assert reply.status == 204, (name, reply.body)
    results = await env.results("L1")
    assert results["good.dcm"] == ("accepted", "")
    assert results["tiff.dcm"] == ("accepted", "")
    assert results["DICOMDIR"][0] == "skipped" and "index" in results["DICOMDIR"][1]
    assert "not a DICOM file" in results["notes.txt"][1] and results["notes.txt"][0] == "refused"
    assert "Windows executable" in results["pe.dcm"][1]
    assert "ELF" in results["elf.dcm"][1]
    assert "Mach-O" in results["macho.dcm"][1]
    assert "script" in results["script.dcm"][1]
    assert "not empty" in results["junk-preamble.dcm"][1]
    for name in ("truncated.dcm", "no-meta.dcm", "empty"):
        assert results[name][0] == "refused" and results[name][1], name
    alerts = [e for e in env.events if e.action == "upload-hostile-file"]
    assert len(alerts) == 5 and all(int(e.code) == 110113 for e in alerts)
    held = sorted(p.name for p in (env.home / "quarantine" / link_folder("L1")).iterdir())
    assert len(held) == 2 and all(len(n) == 68 and n.endswith(".dcm") for n in held)
    _inside_quarantine(env)


async def test_hostile_zip_members_are_refused_one_by_one(env: Env) -> None:
    good, other = env.files[0].read_bytes(), env.files[1].read_bytes()
    link = zipfile.ZipInfo("link.dcm")
    link.create_system = 3
    link.external_attr = (0o120777 << 16)
    archive = zip_bytes([
        ("DICOM/IM1", good),
        ("../../escape.dcm", other),
        ("/etc/abs.dcm", other),
        ("C:/Windows/drive.dcm", other),
        ("dir\\back.dcm", other),
        (link, b"/etc/passwd"),
        ("dup.dcm", other), ("dup.dcm", other),
        ("inner.zip", zip_bytes([("x.dcm", other)])),
        ("hidden-zip.dcm", zip_bytes([("x.dcm", other)])),
        ("bomb.dcm", bytes(900_000)),
        ("readme.txt", b"hello"),
    ])
    reply = await env.upload("L1", archive, "cd.zip")
    assert reply.status == 204, reply.body
    r = await env.results("L1")
    assert r["cd.zip/DICOM/IM1"] == ("accepted", "")
    assert "'..'" in r["cd.zip/../../escape.dcm"][1]
    assert "absolute" in r["cd.zip//etc/abs.dcm"][1]
    assert "drive letter" in r["cd.zip/C:/Windows/drive.dcm"][1]
    assert "backslash" in r["cd.zip/dir\\back.dcm"][1]
    assert "symbolic link" in r["cd.zip/link.dcm"][1]
    assert "more than once" in r["cd.zip/dup.dcm"][1]
    assert "inside the archive" in r["cd.zip/inner.zip"][1]
    assert "inside the archive" in r["cd.zip/hidden-zip.dcm"][1]
    assert "decompression bomb" in r["cd.zip/bomb.dcm"][1]
    assert "not a DICOM file" in r["cd.zip/readme.txt"][1]
    assert not (env.home / "escape.dcm").exists() and not (env.home.parent / "escape.dcm").exists()
    _inside_quarantine(env)


async def test_nul_names_and_encrypted_members(env: Env) -> None:
    other = env.files[1].read_bytes()
    reply = await env.upload("L1", raw_name_zip(b"ok.dcm\x00../../x", other), "nul.zip")
    assert reply.status == 204
    enc = bytearray(zip_bytes([("e.dcm", other)], zipfile.ZIP_STORED))
    enc[6] |= 1  # general purpose flag bit 0 (encrypted) in the local header ...
    central = enc.index(b"PK\x01\x02")
    enc[central + 8] |= 1  # ... and in the central directory
    assert (await env.upload("L1", bytes(enc), "enc.zip")).status == 204
    assert (await env.upload("L1", b"PK\x03\x04 not really a zip", "broken.zip")).status == 204
    r = await env.results("L1")
    assert any("NUL" in reason for name, (_, reason) in r.items() if name.startswith("nul.zip/"))
    assert "encrypted" in r["enc.zip/e.dcm"][1]
    assert "cannot be read" in r["broken.zip"][1]
    _inside_quarantine(env)


async def test_uploader_names_are_text_never_paths(env: Env) -> None:
    good = env.files[0].read_bytes()
    reply = await env.upload("L1", good, "../../../../etc/passwd\x00<script>")
    assert reply.status == 204
    [(name, (outcome, _))] = (await env.results("L1")).items()
    assert outcome == "accepted" and "\x00" not in name
    _inside_quarantine(env)


# -- tus abuse --------------------------------------------------------------------------------------------

async def test_offset_mismatch_past_length_and_wrong_type(env: Env) -> None:
    created = await env.create("L1", 100)
    where = created.headers["location"]
    patch = {"Content-Type": "application/offset+octet-stream"}
    assert (await env.tus("PATCH", where, "L1", {**patch, "Upload-Offset": "5"}, b"x")).status == 409
    assert (await env.tus("PATCH", where, "L1", {**patch, "Upload-Offset": "0", "Content-Length": "101"},
                          b"x" * 101)).status == 413
    # past the length without a Content-Length (chunked): refused, nothing of the body kept
    assert (await env.tus("PATCH", where, "L1", {**patch, "Upload-Offset": "0"}, [b"x" * 60, b"y" * 60])).status == 413
    assert (await env.tus("PATCH", where, "L1", {"Content-Type": "application/octet-stream", "Upload-Offset": "0"},
                          b"x")).status == 415
    assert (await env.tus("PATCH", where, "L1", {**patch, "Upload-Offset": "-1"}, b"x")).status == 400
    head = await env.tus("HEAD", where, "L1")
    assert head.headers["upload-offset"] == "0" and head.headers["tus-resumable"] == "1.0.0"
    ok = await env.tus("PATCH", where, "L1", {**patch, "Upload-Offset": "0"}, b"a" * 40)
    assert ok.status == 204 and ok.headers["upload-offset"] == "40"
    assert (await env.tus("PATCH", where, "L1", {**patch, "Upload-Offset": "0"}, b"a")).status == 409


async def test_bad_lengths_and_garbage_metadata(env: Env) -> None:
    for length in ("-1", "1e9", "", "99999999999999999999999", " 5"):
        reply = await env.tus("POST", "/p/api/uploads", "L1", {"Upload-Length": length})
        assert reply.status == 400, length
    assert (await env.create("L1", (1 << 20) + 1)).status == 413  # over max_file_mb
    for meta in ("filename !!!notbase64", "filename " + base64.b64encode(b"\xff\xfe").decode(),
                 "a b,a c", "bad key x", "x" * 5000):
        reply = await env.tus("POST", "/p/api/uploads", "L1", {"Upload-Length": "10", "Upload-Metadata": meta})
        assert reply.status == 400, meta
    no_tus = await call(env.app, "POST", "/p/api/uploads", headers={"X-Test-Link": "L1", "Upload-Length": "1"})
    assert no_tus.status == 412 and no_tus.headers["tus-version"] == "1.0.0"


async def test_another_links_upload_is_not_found(env: Env) -> None:
    created = await env.create("L1", 10)
    where = created.headers["location"]
    assert (await env.tus("HEAD", where, "L2")).status == 404
    assert (await env.tus("PATCH", where, "L2", {"Content-Type": "application/offset+octet-stream",
                                                 "Upload-Offset": "0"}, b"x")).status == 404
    assert (await env.tus("DELETE", where, "L2")).status == 404
    assert (await env.tus("HEAD", "/p/api/uploads/../../node.db", "L1")).status == 404
    assert (await env.tus("HEAD", where, "L1")).status == 200


async def test_share_links_and_revoked_links_cannot_upload(env: Env) -> None:
    assert (await env.create("S1", 10)).status == 401
    created = await env.create("L1", 10)
    del env.gate.live["L1"]
    assert (await env.tus("PATCH", created.headers["location"], "L1",
                          {"Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"},
                          b"x" * 10)).status == 401
    assert (await env.create("L1", 10)).status == 401
    assert (await env.tus("GET", "/p/api/uploads", "L1")).status == 401


async def test_per_link_totals_hold_across_many_small_uploads(env: Env) -> None:
    for _ in range(20):
        assert (await env.create("L2", 1)).status == 201
    assert (await env.create("L2", 1)).status == 413  # max_files
    for _ in range(4):
        assert (await env.create("L1", 1 << 20)).status == 201
    assert (await env.create("L1", 1)).status == 413  # max_upload_mb


async def test_termination_removes_the_part(env: Env) -> None:
    created = await env.create("L1", 10)
    assert (await env.tus("DELETE", created.headers["location"], "L1")).status == 204
    assert (await env.tus("HEAD", created.headers["location"], "L1")).status == 404
    assert env.written() == []


async def test_a_restart_resumes_from_the_durable_offset(env: Env) -> None:
    data = env.files[0].read_bytes()
    created = await env.create("L1", len(data))
    where = created.headers["location"]
    patch = {"Content-Type": "application/offset+octet-stream"}
    first = await env.tus("PATCH", where, "L1", {**patch, "Upload-Offset": "0"}, data[:1000])
    assert first.headers["upload-offset"] == "1000"
    # an unacknowledged tail (a crash after write, before the offset was committed) is cut back
    [part] = (env.home / "uploads").rglob("*.part")
    part.write_bytes(part.read_bytes() + b"garbage that was never acknowledged")
    assert (await env.tus("HEAD", where, "L1")).headers["upload-offset"] == "1000"
    [pending] = (await env.tus("GET", "/p/api/uploads", "L1")).json()["uploads"]
    assert (pending["received"], pending["length"], pending["state"]) == (1000, len(data), "receiving")
    more = await env.tus("PATCH", where, "L1", {**patch, "Upload-Offset": "1000"}, data[1000:1010])
    assert more.headers["upload-offset"] == "1010" and part.read_bytes() == data[:1010]
    done = await env.tus("PATCH", where, "L1", {**patch, "Upload-Offset": "1010"}, data[1010:])
    assert done.status == 204 and done.headers["upload-offset"] == str(len(data))
    [held] = (env.home / "quarantine" / link_folder("L1")).iterdir()
    assert held.read_bytes() == data
    assert (await env.tus("GET", "/p/api/uploads", "L1")).json()["uploads"] == []


# -- the PACS team's review -------------------------------------------------------------------------------

async def test_staff_routes_need_queues(env: Env) -> None:
    await env.upload("L1", env.files[0].read_bytes())
    for method, path in (("GET", "/ui/api/uploads"), ("POST", "/ui/api/uploads/L1/accept"),
                         ("POST", "/ui/api/uploads/L1/reject")):
        assert (await call(env.app, method, path)).status == 401
        assert (await env.staff(method, path, "doc", b'{"reason": "x"}')).status == 403
        # the uploader's session is no staff session either
        assert (await call(env.app, method, path, headers={"X-Test-Link": "L1"})).status == 401
    assert len(list((env.home / "quarantine").rglob("*.dcm"))) == 1


async def test_review_accept_twice(env: Env) -> None:
    for f in env.files[:2]:
        await env.upload("L1", f.read_bytes(), f.name)
    listing = (await env.staff("GET", "/ui/api/uploads", "pacs1")).json()["links"]
    [entry] = listing
    assert entry["link"] == "L1" and entry["person"] == "Person of L1" and entry["files"] == 2
    [study] = entry["studies"]
    assert study["modalities"] == ["CT"] and study["patient_id"]
    first = await env.staff("POST", "/ui/api/uploads/L1/accept", "pacs1")
    assert first.status == 200 and first.json() == {"stored": 2, "held": []}
    assert not (env.home / "quarantine" / link_folder("L1")).exists()
    again = await env.staff("POST", "/ui/api/uploads/L1/accept", "pacs1")
    assert again.status == 409
    assert (await env.staff("GET", "/ui/api/uploads", "pacs1")).json()["links"] == []


async def test_reject_then_accept(env: Env) -> None:
    await env.upload("L1", env.files[0].read_bytes())
    assert (await env.staff("POST", "/ui/api/uploads/L1/reject", "pacs1", b"{}")).status == 400  # a reason
    rejected = await env.staff("POST", "/ui/api/uploads/L1/reject", "pacs1", b'{"reason": "wrong patient"}')
    assert rejected.status == 200 and rejected.json() == {"deleted": 1}
    assert list((env.home / "quarantine").rglob("*.dcm")) == []
    assert (await env.staff("POST", "/ui/api/uploads/L1/accept", "pacs1")).status == 409
    results = await env.results("L1")
    assert list(results.values()) == [("accepted", "")]  # the uploader's list still shows what was checked


def test_every_name_on_disk_is_a_hash_or_random() -> None:
    assert len(link_folder("../../etc")) == 32 and "/" not in link_folder("../../etc")
    assert os.sep not in link_folder("a" + os.sep + "b")


async def test_a_dropped_connection_keeps_what_arrived_durable(tmp_path: Path) -> None:
    from starlette.requests import ClientDisconnect

    from meshnode.storage.upload_store import MemoryUploadStore

    async def audit(event: AuditEvent) -> None:
        pass

    uploads = Uploads(tmp_path, MemoryUploadStore(), PatientAccessConfig(), audit, lambda: None, lambda: 1e9)
    grant = LinkGrant("L1", LinkKind.UPLOAD, (), 2e9, False, "P", "alice")
    row = await uploads.create(grant, 100, "x")

    async def dropping() -> AsyncIterator[bytes]:
        yield b"a" * 30
        raise ClientDisconnect()

    with pytest.raises(ClientDisconnect):
        await uploads.append(grant, row.upload_id, 0, dropping(), None)
    assert (await uploads.status(grant, row.upload_id)).received == 30
    [part] = (tmp_path / "uploads").rglob("*.part")
    assert part.read_bytes() == b"a" * 30


async def test_an_upload_during_a_decision_is_not_decided_without_being_ingested(env: Env) -> None:
    """Accept marks only the files it ingested: one arriving while it runs is either ingested with it or
    stays held in quarantine, never marked accepted without being stored."""
    await env.upload("L1", env.files[0].read_bytes(), "a")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(env.staff, "POST", "/ui/api/uploads/L1/accept", "pacs1")
        async def second() -> None:
            reply = await env.upload("L1", env.files[1].read_bytes(), "b")
            print("PATCH b", reply.status, reply.body[:300])
        nursery.start_soon(second)
    stored = {s.attributes.study_uid for s in env.storage.metadata.studies()}
    rows = {f["name"]: f for f in (await env.tus("GET", "/p/api/uploads", "L1")).json()["files"]}
    assert set(rows) == {"a", "b"} and stored
    held = list((env.home / "quarantine").rglob("*.dcm"))
    listing = (await env.staff("GET", "/ui/api/uploads", "pacs1")).json()["links"]
    assert len(held) == sum(e["files"] for e in listing)  # what is still held is still in quarantine
    if not listing:  # both decided: both ingested
        assert len(env.storage.metadata.instances(next(iter(stored)))) == 2


async def test_an_empty_upload_is_complete_as_created_and_refused(env: Env) -> None:
    created = await env.create("L1", 0, "empty.dcm")
    assert created.status == 201
    assert (await env.results("L1"))["empty.dcm"][0] == "refused"


async def test_the_upload_page_is_served_with_its_csp_and_holds_nothing(env: Env) -> None:
    page = await call(env.app, "GET", "/p/upload")
    assert page.status == 200 and "script-src 'self'" in page.headers["content-security-policy"]
    assert b"Person of" not in page.body and b"/p/static/upload.js" in page.body


async def test_abandoned_uploads_are_swept_after_a_links_lifetime(tmp_path: Path) -> None:
    from meshnode.storage.upload_store import MemoryUploadStore

    async def audit(event: AuditEvent) -> None:
        pass

    now = [1e9]
    uploads = Uploads(tmp_path, MemoryUploadStore(), PatientAccessConfig(upload_days=14), audit, lambda: None,
                      lambda: now[0])
    grant = LinkGrant("L1", LinkKind.UPLOAD, (), 2e9, False, "P", "alice")
    row = await uploads.create(grant, 100, "x")
    now[0] += 14 * 86400
    assert await uploads.sweep() == 0  # the link may still be live
    now[0] += 2 * 86400
    assert await uploads.sweep() == 1
    assert list((tmp_path / "uploads").rglob("*.part")) == []
    with pytest.raises(NotFoundError, match="no such upload"):
        await uploads.status(grant, row.upload_id)


async def test_concurrent_creations_cannot_pass_the_links_file_limit_together(env: Env) -> None:
    statuses: list[int] = []

    async def one() -> None:
        statuses.append((await env.create("L2", 1)).status)

    async with trio.open_nursery() as nursery:
        for _ in range(30):
            nursery.start_soon(one)
    assert statuses.count(201) == 20 and statuses.count(413) == 10


# -- hostile review of the PACS team's review (C3, M1, M2): each failed before its fix ------------------------

def _as_patient(data: bytes, patient_id: str, name: str, sop_suffix: str) -> bytes:
    ds = dcmread(io.BytesIO(data))
    ds.PatientID, ds.PatientName = patient_id, name
    ds.SOPInstanceUID = ds.SOPInstanceUID + sop_suffix
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _stored(env: Env) -> list[object]:
    return [i for s in env.storage.metadata.studies() for i in env.storage.metadata.instances(s.attributes.study_uid)]


async def test_accept_ingests_a_quarantined_file_changed_after_its_check(env: Env) -> None:
    await env.upload("L1", env.files[0].read_bytes(), "a")
    [held] = (env.home / "quarantine" / link_folder("L1")).glob("*.dcm")
    # anything that can write the node's disk (another process, a restore, a bug) changes it after the check
    held.write_bytes(_as_patient(env.files[1].read_bytes(), "OTHER-PATIENT", "VICTIM^B", ".9"))
    reply = await env.staff("POST", "/ui/api/uploads/L1/accept", "pacs1")
    assert reply.status == 409 and "changed after it was checked" in reply.json()["message"], reply.body
    assert not _stored(env)


async def test_one_study_with_files_of_two_patients_is_shown_with_both_and_held_on_accept(env: Env) -> None:
    good = env.files[0].read_bytes()
    await env.upload("L1", _as_patient(good, "PAT-OWN", "OWN^PATIENT", ".1"), "a")
    await env.upload("L1", _as_patient(env.files[1].read_bytes(), "PAT-VICTIM", "VICTIM^OTHER", ".2"), "b")
    [entry] = (await env.staff("GET", "/ui/api/uploads", "pacs1")).json()["links"]
    [study] = entry["studies"]
    assert study["mixed"] and {p for p, _ in study["patients"]} == {"PAT-OWN", "PAT-VICTIM"}
    assert "PAT-VICTIM" in study["patient_id"] and "PAT-OWN" in study["patient_id"]
    reply = await env.staff("POST", "/ui/api/uploads/L1/accept", "pacs1")
    assert reply.status == 200 and reply.json()["stored"] == 0, reply.body
    [held] = reply.json()["held"]
    assert "2 different patients" in held["reason"]
    assert not _stored(env)  # held, not stored: the files stay in quarantine for the PACS team
    assert len(list((env.home / "quarantine" / link_folder("L1")).glob("*.dcm"))) == 2
    assert any(e.action == "upload-held-by-reconciliation" for e in env.events)


async def test_an_upload_of_a_study_the_node_holds_for_another_patient_is_held(env: Env) -> None:
    assert env.intake is not None
    await env.intake.store(env.files[0].read_bytes(), None, source="test")
    await env.upload("L1", _as_patient(env.files[1].read_bytes(), "PAT-OTHER", "OTHER^PATIENT", ".5"), "a")
    reply = await env.staff("POST", "/ui/api/uploads/L1/accept", "pacs1")
    assert reply.status == 200 and reply.json()["stored"] == 0
    assert "another patient" in reply.json()["held"][0]["reason"]
    assert len(_stored(env)) == 1


async def test_with_reconciliation_on_an_unmatched_patient_is_held_not_stored(env: Env) -> None:
    assert env.uploads is not None and env.intake is not None
    reconciler = Reconciler(env.intake.db, env.storage.blocks, ReconciliationSettings(enabled=True),
                            env.uploads.audit, "test", lambda: 1e9)
    env.uploads.reconciler = lambda: reconciler
    await env.upload("L1", env.files[0].read_bytes(), "a")  # no NHS number, no local record
    reply = await env.staff("POST", "/ui/api/uploads/L1/accept", "pacs1")
    assert reply.status == 200 and reply.json()["stored"] == 0, reply.body
    assert reply.json()["held"][0]["reason"].startswith("patient reconciliation: ")
    assert not _stored(env)
    env.uploads.reconciler = lambda: None  # reconciliation off: the same study is let in
    reply = await env.staff("POST", "/ui/api/uploads/L1/accept", "pacs1")
    assert reply.json()["stored"] == 1 and len(_stored(env)) == 1


async def test_an_accept_that_fails_half_way_stores_nothing_and_keeps_all_held(env: Env) -> None:
    assert env.intake is not None
    small = env.files[0].read_bytes()
    await env.upload("L1", small, "a")  # and a larger file of the same patient:
    larger = dcmread(io.BytesIO(env.files[1].read_bytes()))
    larger.ImageComments = "x" * 1000
    out = io.BytesIO()
    larger.save_as(out, enforce_file_format=True)
    assert len(out.getvalue()) > len(small)
    await env.upload("L1", out.getvalue(), "b")
    # the node's intake limit ([gateway] max_instance_mb) below [patient_access] max_file_mb: the second fails
    env.intake.max_instance_bytes = len(small)
    reply = await env.staff("POST", "/ui/api/uploads/L1/accept", "pacs1")
    assert reply.status == 409 and "intake refuses" in reply.json()["message"], reply.body
    assert not _stored(env)
    [entry] = (await env.staff("GET", "/ui/api/uploads", "pacs1")).json()["links"]
    assert entry["files"] == 2  # both still held, nothing claimed
    env.intake.max_instance_bytes = 1 << 30
    reply = await env.staff("POST", "/ui/api/uploads/L1/accept", "pacs1")
    assert reply.json()["stored"] == 2 and len(_stored(env)) == 2
    assert [e.action for e in env.events if e.action == "upload-accepted"] == ["upload-accepted"]


# -- hostile review M3: a racing PATCH must not roll back an acknowledged offset (failed before its fix) --

class SlowRead(MemoryUploadStore):
    """The second read of the upload is slow (a busy database): it returns the row as it was when read."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.release = threading.Event()

    def upload(self, link_id: str, upload_id: str) -> UploadRow | None:
        row = super().upload(link_id, upload_id)
        self.reads += 1
        if self.reads == 3:  # A's status, then B's (stale), ...
            self.release.wait(30)
        return row


async def test_an_acknowledged_offset_is_rolled_back_by_a_racing_patch(tmp_path: Path) -> None:
    async def audit(event: AuditEvent) -> None:
        pass

    store = SlowRead()
    uploads = Uploads(tmp_path, store, PatientAccessConfig(), audit, lambda: None, lambda: 1e9)
    grant = LinkGrant("L1", LinkKind.UPLOAD, (), 2e9, False, "P", "alice")
    row = await uploads.create(grant, 100, "x")
    store.reads = 1
    go_a = trio.Event()
    acked: list[int] = []

    async def body(data: bytes, wait: trio.Event | None = None) -> AsyncIterator[bytes]:
        if wait is not None:
            await wait.wait()
        yield data

    async def a() -> None:
        r = await uploads.append(grant, row.upload_id, 0, body(b"A" * 40, go_a), 40)
        acked.append(r.received)  # the 204's Upload-Offset
        store.release.set()

    async def b() -> None:
        try:
            await uploads.append(grant, row.upload_id, 0, body(b"B" * 5), 5)
        except UploadStateError:
            pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(a)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(b)  # B's status read (stale: received 0) waits in its thread
        await trio.testing.wait_all_tasks_blocked()
        go_a.set()
    now = (await uploads.status(grant, row.upload_id)).received
    part = next((tmp_path / "uploads").rglob("*.part")).read_bytes()
    assert now >= acked[0], f"offset {acked[0]} was acknowledged (fsynced), the upload now says {now}"
    assert len(part) >= acked[0] and part[:acked[0]] == b"A" * acked[0]  # the acknowledged bytes are still there


# -- hostile review M5, M6 (each failed before its fix) --------------------------------------------------

async def test_refused_zip_members_bytes_count_towards_the_links_total(env: Env) -> None:
    # 3 members of 1 MiB (max_file_mb=1, max_upload_mb=4), compressible ~110x (under MAX_RATIO): each
    # extracted to scratch, then refused (not DICOM). (The review's first version compressed 238x: refused by
    # the ratio, never inflated; and a 4th member is refused unextracted by the link's total.)
    junk = os.urandom(8192) + bytes(1 << 20)
    members = [(f"m{i}", junk[: (1 << 20) - 1]) for i in range(3)]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members:
            z.writestr(name, data)
    archive = out.getvalue()
    assert len(archive) < 200_000
    assert all(i.file_size < 200 * i.compress_size for i in zipfile.ZipFile(io.BytesIO(archive)).infolist())
    reply = await env.upload("L1", archive, "a.zip")
    assert reply.status == 204
    results = await env.results("L1")
    assert all(o == "refused" for o, _ in results.values() if _ != "")
    store = SqliteUploadStore(env.home / "node.db")
    try:
        usage = store.usage("L1")
    finally:
        store.close()
    unpacked = sum(len(d) for _, d in members)
    assert usage.bytes >= len(archive) + unpacked, (
        f"{unpacked} bytes inflated and checked, {usage.bytes} counted: max_upload_mb is not what limits inflation")


async def test_a_check_that_raises_leaves_the_upload_checking_for_ever(env: Env) -> None:
    locator = struct.pack("<IIQI", 0x07064B50, 0, 1 << 63, 1)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    data = b"PK\x03\x04" + bytes(60) + locator + end
    reply = await env.upload("L1", data, "z.zip")
    assert reply.status == 204
    listing = (await env.tus("GET", "/p/api/uploads", "L1")).json()
    assert listing["files"] and not listing["uploads"], "no verdict; shown as 'checking' until the sweep"
    assert listing["files"][0]["outcome"] == "refused"


# -- hostile review minors: node-wide check limiter, free space, crash leftovers (each failed before) ---------

async def test_checks_of_all_links_share_one_node_wide_limiter(env: Env) -> None:
    assert env.uploads is not None
    limiter = env.uploads.checks
    holders = [object() for _ in range(int(limiter.total_tokens))]
    for h in holders:  # every check slot busy (other links' large files)
        await limiter.acquire_on_behalf_of(h)
    data = env.files[0].read_bytes()
    created = await env.create("L2", len(data), "a")
    done: list[Reply] = []

    async def patch() -> None:
        done.append(await env.tus("PATCH", created.headers["location"], "L2",
                                  {"Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"}, data))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(patch)
        await trio.testing.wait_all_tasks_blocked()
        assert not done and (await env.results("L2")) == {}  # waits for a slot: not checked yet
        for h in holders:
            limiter.release_on_behalf_of(h)
    assert done[0].status == 204 and (await env.results("L2"))["a"][0] == "accepted"


async def test_an_upload_the_disk_has_no_room_for_is_refused_at_creation(env: Env) -> None:
    assert env.uploads is not None
    env.uploads.min_free_bytes = shutil.disk_usage(env.home).free + (1 << 30)
    reply = await env.create("L1", 1000, "a")
    assert reply.status == 413 and "no room" in reply.body.decode()
    assert not env.written()


async def test_a_crashs_leftovers_are_cleared_at_start(env: Env) -> None:
    assert env.uploads is not None
    await env.upload("L1", env.files[0].read_bytes(), "kept")  # held: stays
    [kept] = (env.home / "quarantine" / link_folder("L1")).glob("*.dcm")
    scratch = env.home / "tmp" / "uploads" / "0123abcd"
    scratch.mkdir(parents=True)
    (scratch / "x.member").write_bytes(b"patient data")
    tmp = kept.parent / ".0123456789abcdef.tmp"
    tmp.write_bytes(b"half a copy")
    orphan = kept.parent / ("ab" * 32 + ".dcm")
    orphan.write_bytes(b"written before the verdicts were committed")
    part = env.home / "uploads" / link_folder("L1") / ("cd" * 16 + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_bytes(b"checked, not yet unlinked")
    live = await env.create("L1", 10, "receiving")
    assert live.status == 201
    [live_part] = [p for p in (env.home / "uploads").rglob("*.part") if p != part]
    assert env.uploads.clear_leftovers(time.time()) == 0  # too recent: a check may be under way
    removed = env.uploads.clear_leftovers(time.time() + 3600)
    assert removed == 4
    assert not scratch.exists() and not tmp.exists() and not orphan.exists() and not part.exists()
    assert kept.exists() and live_part.exists()


async def test_each_accepted_study_is_audited_with_its_study(env: Env) -> None:
    other = dcmread(io.BytesIO(env.files[1].read_bytes()))
    other.StudyInstanceUID = other.StudyInstanceUID + ".77"
    out = io.BytesIO()
    other.save_as(out, enforce_file_format=True)
    await env.upload("L1", env.files[0].read_bytes(), "a")
    await env.upload("L1", out.getvalue(), "b")
    reply = await env.staff("POST", "/ui/api/uploads/L1/accept", "pacs1")
    assert reply.json()["stored"] == 2
    events = [e for e in env.events if e.action == "upload-accepted"]
    assert len(events) == 2 and all(e.study for e in events) and len({e.study for e in events}) == 2


async def test_each_received_study_is_audited_with_its_study(env: Env) -> None:
    other = dcmread(io.BytesIO(env.files[1].read_bytes()))
    other.StudyInstanceUID = other.StudyInstanceUID + ".78"
    out = io.BytesIO()
    other.save_as(out, enforce_file_format=True)
    archive = zip_bytes([("a.dcm", env.files[0].read_bytes()), ("b.dcm", out.getvalue())])
    assert (await env.upload("L1", archive, "two.zip")).status == 204
    events = [e for e in env.events if e.action == "upload-received"]
    assert len(events) == 2 and len({e.study for e in events if e.study}) == 2
