"""The in-process harness of the public patient pages' hostile tests (tests/adversary/test_patient_*.py):
the real app, routes, sessions, limiter and store; the link service a small double of PatientLinks (the
real one is tested in test_patient_links*.py and the e2e tests)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from meshnode.dicom import synthetic
from meshnode.patient.config import PatientAccessConfig
from meshnode.patient.links import LinkGrant, LinkKind, LinkOpened
from meshnode.patient.service import RECORDED
from meshnode.storage.audit import AuditEvent
from meshnode.storage.dbthread import DatabaseThread
from meshnode.storage.node_storage import NodeStorage
from meshnode.storage.records import InstanceRecord
from meshnode.storage.users import MemoryUserStore
from meshnode.study.ingest import Ingester
from meshnode.web.app import WebApp
from meshnode.web.auth import Authenticator, add_user, issue_token
from meshnode.web.config import HttpConfig
from meshnode.web.metrics import EventMetrics, MetricsSnapshot
from meshnode.web.ops import Ops
from meshnode.web.patient_listener import (
    limited,
)
from meshnode.web.patient_session import COOKIE, PatientSessions
from meshnode.web.patient_web import PatientWeb
from meshnode.web.rate_limit import RateLimited
from meshnode.web.services import WebServices
from meshnode.web.wado import Wado
from protocol.patient_link import CodeRefused, LinkGone, PatientAccessError
from tests.meshnode.web.asgi import Reply, call

CODE = "123456"
JSON = {"Content-Type": "application/json"}
ZIP = bytes(range(256)) * 400  # the fake media set's bytes


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeMedia:
    data: bytes
    etag: str = '"media-v1"'
    filename: str = "images.zip"

    @property
    def size(self) -> int:
        return len(self.data)

    def read(self, start: int, stop: int) -> Iterator[bytes]:
        for at in range(start, stop, 4096):
            yield self.data[at:min(stop, at + 4096)]


@dataclass
class FakeLinks:
    """PatientLinks over a dict: token -> grant; the code is CODE."""

    clock: Clock
    grants: dict[str, LinkGrant] = field(default_factory=dict)
    revoked: set[str] = field(default_factory=set)
    records: list[tuple[str, str, str]] = field(default_factory=list)
    forwards: list[tuple[str, str]] = field(default_factory=list)

    def add(self, token: str, link_id: str, studies: tuple[str, ...], **kw: object) -> None:
        expires = kw.get("expires_at", self.clock.now + 14 * 86400)
        assert isinstance(expires, float)
        self.grants[token] = LinkGrant(link_id, LinkKind(str(kw.get("kind", "share"))), studies, expires,
                                       bool(kw.get("may_forward", True)), "Ann Patient", "staff:alice")

    def _live(self, token: str) -> LinkGrant:
        grant = self.grants.get(token)
        if grant is None or grant.link_id in self.revoked or grant.expires_at <= self.clock.now:
            raise LinkGone()
        return grant

    async def opened(self, token: str, client: str) -> LinkOpened:
        grant = self._live(token)
        return LinkOpened(grant.kind, False, 5, "text message")

    async def send_code(self, token: str, client: str) -> None:
        self._live(token)

    async def verify(self, token: str, code: str, client: str) -> LinkGrant:
        grant = self._live(token)
        if code != CODE:
            raise CodeRefused("that code is not right", 2)
        return grant

    async def current(self, link_id: str) -> LinkGrant:
        for token, grant in self.grants.items():
            if grant.link_id == link_id:
                return self._live(token)
        raise LinkGone()

    async def forward(self, grant: LinkGrant, email: str, code_to: str, client: str) -> str:
        if not grant.may_forward:
            raise PatientAccessError("no forwarding")
        self.forwards.append((email, code_to))
        return "fwd-1"

    async def record(self, grant: LinkGrant, action: str, detail: str, client: str) -> None:
        if action not in RECORDED:  # what the real service accepts
            raise PatientAccessError(f"action {action!r}")
        self.records.append((grant.link_id, action, detail))


@dataclass
class Public:
    app: RateLimited
    web: PatientWeb
    links: FakeLinks
    wall: Clock
    mono: Clock
    studies: list[str]
    staff_token: str
    staff_session: str
    planned: list[tuple[str, ...]]
    auth: Authenticator
    config: PatientAccessConfig
    audit: list[AuditEvent]
    web_app: WebApp

    async def get(self, path: str, *, cookie: str = "", headers: dict[str, str] | None = None, query: str = "",
                  client: str = "127.0.0.1") -> Reply:
        h = dict(headers or {})
        if cookie:
            h["Cookie"] = f"{COOKIE}={cookie}"
        return await call(self.app, "GET", path, headers=h, query=query, client=client)

    async def post(self, path: str, body: bytes = b"{}", *, cookie: str = "", csrf: str = "",
                   headers: dict[str, str] | None = None, client: str = "127.0.0.1") -> Reply:
        h = {**JSON, **(headers or {})}
        if cookie:
            h["Cookie"] = f"{COOKIE}={cookie}"
        if csrf:
            h["X-CSRF-Token"] = csrf
        return await call(self.app, "POST", path, headers=h, body=body, client=client)

    async def sign_in(self, token: str) -> tuple[str, str]:
        reply = await self.post("/p/api/verify", f'{{"token": "{token}", "code": "{CODE}"}}'.encode())
        assert reply.status == 200, reply.body
        set_cookie = reply.headers["set-cookie"]
        cookie = set_cookie.split(";")[0].split("=", 1)[1]
        return cookie, str(reply.json()["csrf"])


TOKEN_A = "A" * 43
TOKEN_B = "B" * 43


@pytest.fixture
async def public(tmp_path: Path) -> AsyncIterator[Public]:
    home = tmp_path / "node"
    home.mkdir()
    storage = NodeStorage.open(home)
    db = DatabaseThread(storage.metadata)
    ingester = Ingester(storage, chunk_size=4096)
    for seed in (3, 4):
        ingester.ingest(synthetic.generate_ct_study(tmp_path / f"ct{seed}", slices=3, rows=32, columns=32,
                                                    seed=seed))
    studies = sorted(s.attributes.study_uid for s in storage.metadata.studies())
    assert len(studies) == 2
    audit: list[AuditEvent] = []

    async def audit_fn(event: AuditEvent) -> None:
        audit.append(event)

    wall, mono = Clock(1_800_000_000.0), Clock(1000.0)
    users = MemoryUserStore()
    add_user(users, "alice", ("read", "write", "audit"), 0)
    staff_token, _ = issue_token(users, "alice", "", 0)
    auth = Authenticator(users, wall)
    staff = await auth.token(staff_token)
    assert staff is not None
    staff_session = auth.open_session(staff, 12)
    http = HttpConfig(listen="127.0.0.1:0")
    services = WebServices(http, "RGT", storage, db, audit_fn, wall)
    config = PatientAccessConfig(enabled=True, public_url="https://images.example.nhs.uk",
                                 requests_per_minute=100_000, session_minutes=30)
    links = FakeLinks(wall)
    links.add(TOKEN_A, "link-a", (studies[0],))
    links.add(TOKEN_B, "link-b", (studies[1],), may_forward=False)
    planned: list[tuple[str, ...]] = []

    def plan(uids: tuple[str, ...]) -> FakeMedia:
        planned.append(uids)
        return FakeMedia(ZIP)

    def key_image(record: InstanceRecord, fmt: str, frame: int) -> bytes:
        return b"\x89PNG\r\n\x1a\n" + record.sop_instance_uid.encode()

    web = PatientWeb(links, services, config, plan, key_image,
                     sessions=PatientSessions(config.session_minutes * 60.0, wall, mono), monotonic=mono)

    async def health() -> tuple[bool, dict[str, object]]:
        return True, {}

    async def snapshot() -> MetricsSnapshot:
        raise AssertionError("not asked")

    holder: list[WebApp] = []
    app = WebApp([*Ops(health, snapshot, EventMetrics(), lambda: holder[0]).routes(), *Wado(services).routes(),
                  *web.routes()], auth, http, audit_fn)
    holder.append(app)
    yield Public(limited(app, config), web, links, wall, mono, studies, staff_token, staff_session, planned,
                 auth, config, audit, app)
    storage.close()


def meta(study: str) -> str:
    return f"/p/dicomweb/studies/{study}/metadata"


