"""The HTTP listener against hostile clients (in-process, the real app and route modules).

Oversized uploads (declared or not, with or without credentials), clients that
stall or go away mid-upload or mid-download, wrong methods, unknown and
traversing paths: every answer is a JSON error with the security headers,
nothing is stored, and nothing is read that the answer does not need.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from meshnode.dicom import synthetic
from meshnode.gateway.announcer import StudyAnnouncer
from meshnode.gateway.intake import StudyIntake
from meshnode.gateway.routes import RouteTable
from meshnode.study.ingest import Ingester
from meshnode.storage.audit import AuditEvent
from meshnode.storage.dbthread import DatabaseThread
from meshnode.storage.node_storage import NodeStorage
from meshnode.storage.records import InstanceRecord
from meshnode.storage.sqlite_gateway import SqliteGatewayStore
from meshnode.storage.users import MemoryUserStore
from meshnode.web.app import WebApp
from meshnode.web.auth import Authenticator, add_user, issue_token
from meshnode.web.config import HttpConfig
from meshnode.web.metrics import EventMetrics, MetricsSnapshot
from meshnode.web.ops import Ops
from meshnode.web.qido import Qido
from meshnode.web.services import WebServices
from meshnode.web.stow import Stow
from meshnode.web.wado import Wado
from protocol.document import Signed
from protocol.manifest import Manifest, Priority, Purpose
from tests.meshnode.web.asgi import Reply, call

Message = MutableMapping[str, Any]
SECURITY = {"x-content-type-options": "nosniff", "referrer-policy": "no-referrer", "cache-control": "no-store"}
STOW_TYPE = 'multipart/related; type="application/dicom"; boundary=b0und4ry'
ACCEPT = 'multipart/related; type="application/dicom"'


@dataclass
class Node:
    app: WebApp
    storage: NodeStorage
    writer: str
    reader: str
    study: str
    records: list[InstanceRecord]
    spool: Path

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.writer}"}


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    home = tmp_path / "node"
    home.mkdir()
    storage = NodeStorage.open(home)
    db = DatabaseThread(storage.metadata)
    Ingester(storage, chunk_size=4096).ingest(
        synthetic.generate_ct_study(tmp_path / "ct", slices=8, rows=64, columns=64, seed=3))
    [study] = storage.metadata.studies()
    records = storage.metadata.instances(study.attributes.study_uid)
    state = SqliteGatewayStore(home / "node.db")
    table = RouteTable([])

    async def share(study: str, to: Sequence[str], priority: Priority, purpose: Purpose) -> Signed[Manifest]:
        raise AssertionError("nothing is shared in these tests")

    async def audit(event: AuditEvent) -> None:
        await db.run(lambda _: storage.audit(event))

    async def health() -> tuple[bool, dict[str, object]]:
        return True, {}

    async def snapshot() -> MetricsSnapshot:
        raise AssertionError("not asked")

    intake = StudyIntake(storage, db, state, StudyAnnouncer(db, state, table, share))
    users = MemoryUserStore()
    add_user(users, "ct3", ("write", "read"), 0)
    add_user(users, "viewer", ("read",), 0)
    writer, _ = issue_token(users, "ct3", "", 0)
    reader, _ = issue_token(users, "viewer", "", 0)
    config = HttpConfig(listen="127.0.0.1:0", max_request_mb=8, max_instance_mb=1)
    services = WebServices(config, "RGT", storage, db, audit)
    stow = Stow(services, lambda: intake, lambda: table)
    holder: list[WebApp] = []
    app = WebApp([*Ops(health, snapshot, EventMetrics(), lambda: holder[0]).routes(), *stow.routes(),
                  *Qido(services).routes(), *Wado(services).routes()], Authenticator(users), config, audit)
    holder.append(app)
    async with trio.open_nursery() as nursery:
        await nursery.start(intake.run)
        yield Node(app, storage, writer, reader, study.attributes.study_uid, records, stow.spool_root)
        nursery.cancel_scope.cancel()
    state.close()
    storage.close()


def secure(reply: Reply) -> None:
    for name, value in SECURITY.items():
        assert reply.headers.get(name) == value, (name, reply.status)


def studies(node: Node) -> int:
    return len(node.storage.metadata.studies())


async def test_every_answer_is_json_with_the_security_headers(node: Node) -> None:
    for method, path, headers, status in (
        ("GET", "/health", {}, 200),
        ("GET", "/nowhere", {}, 404),
        ("GET", "/dicomweb/studies", {}, 401),
        ("GET", "/dicomweb/studies", {"Authorization": "Bearer mnt_forged"}, 401),
        ("POST", "/dicomweb/studies", node.auth(node.reader), 403),
        ("GET", f"/dicomweb/studies/{node.study}", {**node.auth(), "Accept": "image/png"}, 406),
        ("DELETE", "/health", {}, 405),
    ):
        reply = await call(node.app, method, path, headers=headers)
        assert reply.status == status, (method, path, reply.body)
        secure(reply)
        if status != 200:
            assert reply.headers["content-type"] == "application/json" and reply.json()["error"], reply.body
    streamed = await call(node.app, "GET", f"/dicomweb/studies/{node.study}", headers={**node.auth(), "Accept": ACCEPT})
    assert streamed.status == 200
    secure(streamed)


async def test_a_wrong_method_is_405_naming_every_allowed_method(node: Node) -> None:
    for method, path, allow in (("POST", "/health", "GET"), ("HEAD", "/health", "GET"),
                                ("PUT", "/dicomweb/studies", "GET, POST"),
                                ("DELETE", f"/dicomweb/studies/{node.study}", "GET, POST")):
        reply = await call(node.app, method, path, headers=node.auth())
        assert reply.status == 405, (method, path)
        assert reply.headers["allow"] == allow and reply.json()["error"] == "method-not-allowed"


async def test_unknown_and_traversing_paths_are_404(node: Node) -> None:
    for path in ("/dicomweb/studies/x/../../../etc/passwd", "/dicomweb/../health/x", "/dicomweb//studies",
                 "/health/", f"/dicomweb/studies/{node.study}/frames", "/%2e%2e/etc/passwd", "/" + "a/" * 500):
        reply = await call(node.app, "GET", path, headers=node.auth())
        assert reply.status == 404, path
        assert reply.json()["error"] == "not-found" and len(reply.json()["message"]) < 300


async def test_an_upload_declared_over_the_cap_is_refused_before_it_is_read(node: Node) -> None:
    # the client sends a little and would send 100 MB more: the answer must not wait for it, and the
    # connection closes rather than reading what is left
    with trio.fail_after(10):
        reply = await call(node.app, "POST", "/dicomweb/studies", stall=True, body=[b"\r\n--b0und4ry\r\n"],
                           headers={**node.auth(), "Content-Type": STOW_TYPE, "Content-Length": str(100 << 20)})
    assert reply.status == 413 and "exceeds the limit" in reply.json()["message"]
    assert reply.headers.get("connection") == "close"
    secure(reply)
    assert studies(node) == 1


async def test_an_unauthenticated_upload_is_not_read(node: Node) -> None:
    for headers in ({}, {"Authorization": "Bearer mnt_forged"}):
        with trio.fail_after(10):
            reply = await call(node.app, "POST", "/dicomweb/studies", stall=True, body=[b"x" * 1000],
                               headers={**headers, "Content-Type": STOW_TYPE, "Content-Length": str(5 << 20)})
        assert reply.status == 401 and reply.headers.get("connection") == "close"


async def test_an_undeclared_upload_is_cut_at_the_cap(node: Node) -> None:
    with trio.fail_after(10):
        reply = await call(node.app, "POST", "/dicomweb/studies", stall=True,
                           body=[b"\r\n--b0und4ry\r\nContent-Type: application/dicom\r\n\r\n"] + [b"y" * (1 << 20)] * 9,
                           headers={**node.auth(), "Content-Type": STOW_TYPE})
    assert reply.status == 413
    assert reply.headers.get("connection") == "close"
    assert not node.spool.exists() or not list(node.spool.iterdir())


async def test_a_client_gone_mid_upload_stores_nothing(node: Node) -> None:
    messages: list[Message] = [
        {"type": "http.request", "body": b"\r\n--b0und4ry\r\nContent-Type: application/dicom\r\n\r\n", "more_body": True},
        {"type": "http.request", "body": b"z" * 1000, "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        if messages:
            return messages.pop(0)
        await trio.sleep_forever()
        raise AssertionError

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/dicomweb/studies", "raw_path": b"/dicomweb/studies",
             "query_string": b"", "scheme": "http", "client": ("127.0.0.1", 5), "server": ("t", 80), "root_path": "",
             "http_version": "1.1", "headers": [(b"authorization", f"Bearer {node.writer}".encode()),
                                                (b"content-type", STOW_TYPE.encode())]}
    with trio.fail_after(10):
        await node.app(scope, receive, send)  # returns: no exception escapes the app
    assert studies(node) == 1
    assert not node.spool.exists() or not list(node.spool.iterdir())


async def test_wado_is_streamed_and_stops_when_the_client_goes_away(node: Node) -> None:
    gone = trio.Event()
    sent: list[Message] = []
    scope = {"type": "http", "method": "GET", "path": f"/dicomweb/studies/{node.study}",
             "raw_path": f"/dicomweb/studies/{node.study}".encode(), "query_string": b"", "scheme": "http",
             "client": ("127.0.0.1", 5), "server": ("t", 80), "root_path": "", "http_version": "1.1",
             "asgi": {"version": "3.0", "spec_version": "2.1"},
             "headers": [(b"authorization", f"Bearer {node.reader}".encode()), (b"accept", ACCEPT.encode())]}
    first = True

    async def receive() -> Message:
        nonlocal first
        if first:
            first = False
            return {"type": "http.request", "body": b"", "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and sum(len(m.get("body", b"")) for m in sent[1:]) > 0:
            gone.set()  # the viewer closes after the first bytes (a server keeps accepting sends after that)
        await trio.sleep(0)

    with trio.fail_after(10):
        await node.app(scope, receive, send)
    start = sent[0]
    assert start["type"] == "http.response.start" and start["status"] == 200
    length = int(dict(start["headers"])[b"content-length"])
    body = sum(len(m.get("body", b"")) for m in sent[1:])
    assert 0 < body < length  # streamed (not one buffered message), and stopped once the client left
    assert body < sum(r.size for r in node.records[:4])


async def test_a_websocket_upgrade_is_closed_without_reaching_a_route(node: Node,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    # no route speaks WebSocket: the handshake is refused (the server answers 403), nothing is logged as a
    # failure of the app and no handler runs
    sent: list[Message] = []
    incoming = [{"type": "websocket.connect"}]

    async def receive() -> Message:
        if incoming:
            return incoming.pop(0)
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "websocket", "asgi": {"version": "3.0"}, "scheme": "ws", "path": "/studies",
             "raw_path": b"/studies", "query_string": b"", "headers": [(b"host", b"node")],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80), "subprotocols": []}
    with trio.fail_after(5):
        await node.app(scope, receive, send)
    assert [m["type"] for m in sent] == ["websocket.close"]
    assert not [r for r in caplog.records if r.levelno >= 40]
