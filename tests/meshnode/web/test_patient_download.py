"""The patient pages with the real link service (LINKS), media set and key images (MEDIA), in-process: open the
link from the email, the code from the SMS gateway, then download the ZIP in byte ranges and check every file
in it byte for byte against the ingested instances; a revoked link ends the session mid-download."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from meshnode.dicom import synthetic
from meshnode.storage.audit import AuditEvent
from meshnode.storage.dbthread import DatabaseThread
from meshnode.storage.patients import ReconciliationRow, ReconState
from meshnode.storage.sqlite_metadata import SqliteMetadataStore
from meshnode.storage.node_storage import NodeStorage
from meshnode.storage.users import MemoryUserStore
from meshnode.study.ingest import Ingester
from meshnode.storage.records import InstanceRecord
from meshnode.study.key_image import key_image_of
from meshnode.web.app import WebApp
from meshnode.web.auth import Authenticator
from meshnode.web.config import HttpConfig
from meshnode.web.patient_listener import limited
from meshnode.web.patient_session import COOKIE
from meshnode.web.patient_web import PatientWeb, media_planner
from meshnode.web.services import WebServices
from protocol.cid import CID
from tests.meshnode.notify.smtp_server import SmtpServer
from tests.meshnode.patient.helpers import Clock, SmsGateway, service, token_of
from tests.meshnode.web.asgi import call

JSON = {"Content-Type": "application/json"}


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[SmtpServer]:
    server = SmtpServer(tmp_path / "smtp").start()
    yield server
    server.stop()


@pytest.fixture
def gateway() -> Iterator[SmsGateway]:
    g = SmsGateway(Clock()).start()
    yield g
    g.stop()


async def test_download_in_ranges_is_byte_exact_and_recorded_once(smtp: SmtpServer, gateway: SmsGateway,
                                                                  tmp_path: Path) -> None:
    home = tmp_path / "node"
    home.mkdir()
    storage = NodeStorage.open(home)
    db = DatabaseThread(storage.metadata)
    files = synthetic.generate_ct_study(tmp_path / "ct", slices=4, rows=64, columns=64, seed=9)
    Ingester(storage, chunk_size=4096).ingest(files)
    [study] = [s.attributes.study_uid for s in storage.metadata.studies()]
    clock = Clock()
    links, _ = service(smtp, gateway, tmp_path, clock)
    link_id = await links.create_share("alice", [study], "Ann Patient", "ann@example.org", "+447700900123")
    token = token_of(smtp, "ann@example.org")

    async def audit(event: AuditEvent) -> None:
        pass

    services = WebServices(HttpConfig(listen="127.0.0.1:0"), "RGT", storage, db, audit, clock)

    def render(record: InstanceRecord, fmt: str, frame: int) -> bytes:
        return key_image_of(storage, record, fmt=fmt, frame=frame)

    web = PatientWeb(links, services, links.config, media_planner(db, storage, "Royal Example"), render)
    app = limited(WebApp(web.routes(), Authenticator(MemoryUserStore(), clock), HttpConfig(), audit),
                  web.config)

    async def post(path: str, body: str, **headers: str) -> tuple[int, dict[str, object], dict[str, str]]:
        reply = await call(app, "POST", path, headers={**JSON, **headers}, body=body.encode())
        return reply.status, reply.json(), reply.headers

    status, opened, _ = await post("/p/api/open", f'{{"token": "{token}"}}')
    assert status == 200 and opened["kind"] == "share" and "Ann" not in str(opened)
    assert (await post("/p/api/code", f'{{"token": "{token}"}}'))[0] == 200
    code = gateway.received[-1].code
    status, verified, headers = await post("/p/api/verify", f'{{"token": "{token}", "code": "{code}"}}')
    assert status == 200, verified
    cookie = headers["set-cookie"].split(";")[0].split("=", 1)[1]
    session = {"Cookie": f"{COOKIE}={cookie}"}

    share = (await call(app, "GET", "/p/api/share", headers=session)).json()
    assert [s["uid"] for s in share["studies"]] == [study] and share["studies"][0]["images"] == 4
    whole = await call(app, "GET", "/p/download/images.zip", headers=session)
    assert whole.status == 200
    size = len(whole.body)
    etag = whole.headers["etag"]
    pieces = []
    for start, stop in ((0, 1000), (1000, size // 2), (size // 2, size)):
        reply = await call(app, "GET", "/p/download/images.zip",
                           headers={**session, "Range": f"bytes={start}-{stop - 1}", "If-Range": etag})
        assert reply.status == 206 and reply.headers["content-range"] == f"bytes {start}-{stop - 1}/{size}"
        pieces.append(reply.body)
    assembled = b"".join(pieces)
    assert assembled == whole.body
    with zipfile.ZipFile(io.BytesIO(assembled)) as archive:
        members = {n: archive.read(n) for n in archive.namelist()}
    dicom = {n: data for n, data in members.items() if n not in ("DICOMDIR", "README.TXT")}
    assert sorted(dicom.values()) == sorted(f.read_bytes() for f in files)  # byte-exact to what was ingested
    pydicom.dcmread(io.BytesIO(members["DICOMDIR"]))
    history = await links.history(link_id)
    actions = [h["action"] for h in history["history"]]
    assert actions.count("downloaded") == 2  # the whole one and the ranged one (once, from byte 0)

    record = storage.metadata.instances(study)[0]
    q = f"study={study}&series={record.series_uid}&instance={record.sop_instance_uid}&format=png"
    image = await call(app, "GET", "/p/api/key-image", headers=session, query=q)
    assert image.status == 200 and image.body.startswith(b"\x89PNG")

    # an instance held back after the share was made (a waiting reconciliation): hidden from the page, the
    # viewer, the key images and the ZIP alike
    held = storage.metadata.instances(study)[0]
    held_bytes = next(f.read_bytes() for f in files
                      if pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID == held.sop_instance_uid)

    def as_received(_: object) -> None:
        store = storage.metadata
        assert isinstance(store, SqliteMetadataStore)
        with store._tx() as tx:
            tx.execute("UPDATE instances SET source = 'received'")
    await db.run(as_received)
    await db.run(lambda s: s.add_reconciliation(ReconciliationRow(CID.of(b"m"), study, "RXX", ReconState.WAITING, 1),
                                                [(held.sop_instance_uid, held.digest)]))
    share = (await call(app, "GET", "/p/api/share", headers=session)).json()
    assert share["studies"][0]["images"] == 3
    now = await call(app, "GET", "/p/download/images.zip", headers=session)
    assert now.status == 200 and now.headers["etag"] != etag  # another set: a resume with If-Range starts over
    with zipfile.ZipFile(io.BytesIO(now.body)) as archive:
        names = [n for n in archive.namelist() if n not in ("DICOMDIR", "README.TXT")]
        assert len(names) == 3
        assert all(archive.read(n) != held_bytes for n in names)
    q = f"study={study}&series={held.series_uid}&instance={held.sop_instance_uid}&format=png"
    assert (await call(app, "GET", "/p/api/key-image", headers=session, query=q)).status == 404
    stale = await call(app, "GET", "/p/download/images.zip",
                       headers={**session, "Range": "bytes=100-", "If-Range": etag})
    assert stale.status == 200 and stale.body == now.body

    await links.revoke("alice", link_id, "sent by mistake")
    gone = await call(app, "GET", "/p/download/images.zip", headers={**session, "Range": "bytes=1000-"})
    assert gone.status == 401
    storage.close()
