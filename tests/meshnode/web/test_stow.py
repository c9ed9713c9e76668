"""STOW-RS through a real HTTP server (hypercorn on 127.0.0.1) into the real intake and node store.

Uploads with dicomweb-client (a real client, on a worker thread), routing by
route name and by destination org, and the bad-input corpus: broken
boundaries, non-DICOM parts, other studies, oversized bodies and parts, wrong
media types, missing or insufficient credentials. Each refusal is a clear
HTTP error, stores nothing and is audited.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
import requests
import trio
from dicomweb_client.api import DICOMwebClient

from meshnode.dicom import synthetic
from meshnode.gateway.announcer import StudyAnnouncer
from meshnode.gateway.intake import StudyIntake
from meshnode.gateway.routes import Route, RouteTable
from meshnode.storage.audit import AuditEvent
from meshnode.storage.dbthread import DatabaseThread
from meshnode.storage.node_storage import NodeStorage
from meshnode.storage.sqlite_gateway import SqliteGatewayStore
from meshnode.storage.users import MemoryUserStore
from meshnode.web.app import WebApp
from meshnode.web.auth import Authenticator, add_user, issue_token
from meshnode.web.config import HttpConfig
from meshnode.web.qido import Qido
from meshnode.web.server import serve_http
from meshnode.web.services import WebServices
from meshnode.web.stow import Stow
from meshnode.web.wado import Wado
from protocol.document import Signed
from protocol.manifest import Manifest, Priority, Purpose

BOUNDARY = "b0und4ry-for-tests"


@dataclass
class Server:
    url: str
    storage: NodeStorage
    db: DatabaseThread
    writer: str
    reader: str
    files: list[Path]
    spool: Path

    async def studies(self) -> list[str]:
        return [s.attributes.study_uid for s in await self.db.run(lambda m: m.studies())]

    async def audit(self) -> list[tuple[int, str, str]]:
        return [(int(e.event.code), e.event.action, e.event.detail)
                for e in await self.db.run(lambda m: m.audit_entries())]

    async def post(self, body: bytes, *, path: str = "/dicomweb/studies", token: str | None = None,
                   content_type: str = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
                   ) -> requests.Response:
        headers = {"Content-Type": content_type}
        if token != "":
            headers["Authorization"] = f"Bearer {token or self.writer}"
        return await trio.to_thread.run_sync(
            lambda: requests.post(self.url + path, data=body, headers=headers, timeout=30))


def multipart(parts: Sequence[bytes], boundary: str = BOUNDARY, content_type: str = "application/dicom") -> bytes:
    out = b""
    for p in parts:
        out += f"\r\n--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode() + p
    return out + f"\r\n--{boundary}--\r\n".encode()


class _NoShare(Exception):
    pass


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    home = tmp_path / "node"
    home.mkdir()
    storage = NodeStorage.open(home)
    db = DatabaseThread(storage.metadata)
    state = SqliteGatewayStore(home / "node.db")
    routes = RouteTable([Route("stroke", ("RJ1",), Priority.URGENT), Route("research", ("RAJ", "RJ1"))])

    async def share(study: str, to: Sequence[str], priority: Priority, purpose: Purpose) -> Signed[Manifest]:
        raise _NoShare("these tests check storage; the announcer's sharing has its own tests")

    async def audit(event: AuditEvent) -> None:
        await db.run(lambda _: storage.audit(event))

    intake = StudyIntake(storage, db, state, StudyAnnouncer(db, state, routes, share))
    users = MemoryUserStore()
    add_user(users, "ct3", ("write",), 0)
    add_user(users, "viewer", ("read",), 0)
    writer, _ = issue_token(users, "ct3", "", 0)
    reader, _ = issue_token(users, "viewer", "", 0)
    config = HttpConfig(listen="127.0.0.1:0", max_request_mb=8, max_instance_mb=1)
    services = WebServices(config, "RGT", storage, db, audit)
    stow = Stow(services, lambda: intake, lambda: routes)
    app = WebApp([*stow.routes(), *Qido(services).routes(), *Wado(services).routes()], Authenticator(users), config,
                 audit)
    files = synthetic.generate_ct_study(tmp_path / "study", slices=4, rows=128, columns=128, seed=5)
    async with trio.open_nursery() as nursery:
        await nursery.start(intake.run)
        url = await nursery.start(serve_http, app, config, home)
        services.url = url
        yield Server(url, storage, db, writer, reader, files, stow.spool_root)
        nursery.cancel_scope.cancel()
    state.close()
    storage.close()


async def test_store_with_dicomweb_client_then_retrieve(server: Server) -> None:
    datasets = [pydicom.dcmread(f) for f in server.files]

    def upload() -> pydicom.Dataset:
        client = DICOMwebClient(server.url + "/dicomweb", headers={"Authorization": f"Bearer {server.writer}"})
        result: pydicom.Dataset = client.store_instances(datasets, additional_params={"route": "stroke"})
        return result

    result = await trio.to_thread.run_sync(upload)
    stored = sorted(str(item.ReferencedSOPInstanceUID) for item in result.ReferencedSOPSequence)
    assert stored == sorted(str(ds.SOPInstanceUID) for ds in datasets)
    assert "FailedSOPSequence" not in result
    study = str(datasets[0].StudyInstanceUID)
    assert await server.studies() == [study]
    assert result.RetrieveURL.endswith(f"/dicomweb/studies/{study}")
    imports = [a for a in await server.audit() if a[1] == "gateway-store"]
    assert imports and imports[0][0] == 110107 and "route stroke" in imports[0][2]

    def retrieve() -> list[pydicom.Dataset]:
        client = DICOMwebClient(server.url + "/dicomweb", headers={"Authorization": f"Bearer {server.reader}"})
        return list(client.retrieve_study(study))

    back = await trio.to_thread.run_sync(retrieve)
    assert sorted(str(d.SOPInstanceUID) for d in back) == stored
    assert not list(server.spool.iterdir())  # spool files are gone


async def test_route_by_destination_org_and_path(server: Server) -> None:
    raw = [f.read_bytes() for f in server.files]
    ok = await server.post(multipart(raw[:1]), path="/dicomweb/studies?to=rj1")
    assert ok.status_code == 200, ok.text
    study = str(pydicom.dcmread(server.files[0], stop_before_pixels=True).StudyInstanceUID)
    ok = await server.post(multipart(raw[1:2]), path=f"/dicomweb/routes/research/studies/{study}")
    assert ok.status_code == 200, ok.text
    details = [d for _, a, d in await server.audit() if a == "gateway-store"]
    assert any("route stroke" in d for d in details) and any("route research" in d for d in details)
    unknown = await server.post(multipart(raw[2:3]), path="/dicomweb/routes/nowhere/studies")
    assert unknown.status_code == 404 and "stroke" in unknown.json()["message"]  # names the known routes
    nobody = await server.post(multipart(raw[2:3]), path="/dicomweb/studies?to=XYZ")
    assert nobody.status_code == 404
    plain = await server.post(multipart(raw[2:3]))  # no route: kept on this node
    assert plain.status_code == 200


@pytest.mark.parametrize("make, content_type, status, why", [
    (lambda good: multipart([good], boundary="other-boundary"), None, 400, "wrong boundary"),
    (lambda good: multipart([good, good])[:-12], None, 400, "ended early"),
    (lambda good: b"not multipart at all", None, 400, "multipart"),
    (lambda good: multipart([good]), 'multipart/related; type="application/dicom"', 400, "boundary"),
    (lambda good: multipart([good]), "application/dicom", 415, "multipart/related"),
    (lambda good: multipart([good]), f'multipart/related; type="application/pdf"; boundary={BOUNDARY}', 415, "pdf"),
    (lambda good: multipart([good, b"x" * (2 << 20)]), None, 413, "larger than"),
])
async def test_broken_requests_store_nothing(server: Server, make: Callable[[bytes], bytes],
                                             content_type: str | None, status: int, why: str) -> None:
    body = make(server.files[0].read_bytes())  # a real instance in the body: still nothing is stored
    kwargs = {"content_type": content_type} if content_type else {}
    response = await server.post(body, **kwargs)  # type: ignore[arg-type]
    assert response.status_code == status, response.text
    assert why in response.json()["message"]
    assert await server.studies() == []
    if status in (400, 413) and why != "boundary":
        assert any(a == "stow-refused" and code == 110107 for code, a, _ in await server.audit())
    if server.spool.exists():
        assert not list(server.spool.iterdir())


async def test_non_dicom_and_foreign_parts_refuse_the_whole_request(server: Server) -> None:
    good = [f.read_bytes() for f in server.files]
    mixed = await server.post(multipart([good[0], b"%PDF-1.4 not dicom", good[1]]))
    assert mixed.status_code == 409
    failed = pydicom.Dataset.from_json(mixed.json()).FailedSOPSequence
    assert len(failed) == 1 and failed[0].FailureReason == 0xC000
    assert "part 2: not a valid DICOM instance" in mixed.headers["warning"]
    truncated = await server.post(multipart([good[0][:-5000]]))
    assert truncated.status_code == 409
    typed = await server.post(multipart([good[0]], content_type="text/plain"))
    assert typed.status_code == 409 and "text/plain" in typed.headers["warning"]
    other = synthetic.generate_ct_study(server.files[0].parent.parent / "other", slices=1, rows=64, columns=64,
                                        seed=99)
    study = str(pydicom.dcmread(server.files[0], stop_before_pixels=True).StudyInstanceUID)
    foreign = await server.post(multipart([good[0], other[0].read_bytes()]), path=f"/dicomweb/studies/{study}")
    assert foreign.status_code == 409
    item = pydicom.Dataset.from_json(foreign.json()).FailedSOPSequence[0]
    assert item.FailureReason == 0xC122
    assert item.ReferencedSOPInstanceUID == pydicom.dcmread(other[0], stop_before_pixels=True).SOPInstanceUID
    assert await server.studies() == []
    refused = [d for _, a, d in await server.audit() if a == "stow-refused"]
    assert len(refused) == 4


async def test_credentials_and_body_limit(server: Server) -> None:
    body = multipart([server.files[0].read_bytes()])
    assert (await server.post(body, token="")).status_code == 401
    assert (await server.post(body, token=server.reader)).status_code == 403  # read role only
    assert (await server.post(body, token="mnt_forged")).status_code == 401
    huge = multipart([b"y" * (900 << 10)] * 10)  # each part under 1 MB, the body over 8 MB
    response = await server.post(huge)
    assert response.status_code == 413 and "exceeds the limit" in response.json()["message"]
    assert await server.studies() == []


async def test_a_refused_upload_is_answered_over_a_real_connection(server: Server) -> None:
    # hypercorn queues the body for the app: an answer sent without reading it must not wait on that queue
    huge = multipart([b"y" * (900 << 10)] * 24)  # 22 MB, over the cap and over what a refusal drains
    for token, status in (("", 401), ("mnt_forged", 401), (server.reader, 403), (None, 413)):
        response = await server.post(huge, token=token)
        assert response.status_code == status, response.text
        # a known user's refused body is read (up to 64 MiB) and the connection kept; the others are not read
        assert (response.headers.get("connection") == "close") == (status != 403)
    assert await server.studies() == []
