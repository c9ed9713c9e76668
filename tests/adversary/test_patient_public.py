"""The public patient pages (/p/) against hostile clients: the real app, routes, sessions, limiter and store,
driven in-process; the link service is a small in-test double of PatientLinks (the real one is LINKS').

A session of one share reaches only its own studies; staff credentials give nothing on /p/ and a patient
cookie nothing off it; forged, expired, garbled and revoked sessions end; every POST after the code needs the
session's CSRF token; bodies are bounded JSON; byte ranges are parsed strictly; static paths cannot escape;
the limiter answers 429 per address without touching the rest of the app; the public listener serves /p/
and nothing else.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, MutableMapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

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
    check_exposure,
    check_shared,
    limited,
    public_app,
)
from meshnode.web.patient_session import COOKIE, PatientSessions
from meshnode.web.patient_web import PatientWeb
from meshnode.web.rate_limit import RateLimited, RateLimiter
from meshnode.web.services import WebServices
from meshnode.web.wado import Wado
from protocol.errors import ConfigError
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


# -- one share's session on another's study ------------------------------------------------------------------

async def test_a_session_reaches_only_its_own_studies(public: Public) -> None:
    cookie, _ = await public.sign_in(TOKEN_A)
    mine, theirs = public.studies
    assert (await public.get(meta(mine), cookie=cookie)).status == 200
    other = await public.get(meta(theirs), cookie=cookie)
    unknown = await public.get(meta("1.2.3.4.5"), cookie=cookie)
    assert other.status == unknown.status == 404
    assert other.json() == unknown.json()  # the same answer as for a study that does not exist
    for path in (f"/p/dicomweb/studies/{theirs}", f"/p/dicomweb/studies/{theirs}/series/1.2"):
        assert (await public.get(path, cookie=cookie, headers={"Accept": "*/*"})).status == 404
    # key image of the other share's instance, and of an instance named under the wrong study
    records = public.web.s.storage.metadata.instances(theirs)
    r = records[0]
    q = f"study={theirs}&series={r.series_uid}&instance={r.sop_instance_uid}"
    assert (await public.get("/p/api/key-image", cookie=cookie, query=q)).status == 404
    q = f"study={mine}&series={r.series_uid}&instance={r.sop_instance_uid}"
    assert (await public.get("/p/api/key-image", cookie=cookie, query=q)).status == 404
    share = (await public.get("/p/api/share", cookie=cookie)).json()
    assert [s["uid"] for s in share["studies"]] == [mine]
    assert (await public.get("/p/download/images.zip", cookie=cookie)).status == 200
    assert public.planned == [(mine,)]  # the media set is planned from the grant's studies, never the client's


async def test_nothing_about_the_patient_before_the_code(public: Public) -> None:
    reply = await public.post("/p/api/open", f'{{"token": "{TOKEN_A}"}}'.encode())
    assert reply.status == 200
    assert set(reply.json()) == {"kind", "code_pending", "resends_left", "channel"}
    assert (await public.get("/p/api/share")).status == 401
    wrong = await public.post("/p/api/verify", f'{{"token": "{TOKEN_A}", "code": "000000"}}'.encode())
    assert wrong.status == 403 and "set-cookie" not in wrong.headers
    gone = await public.post("/p/api/open", f'{{"token": "{"C" * 43}"}}'.encode())
    assert gone.status == 404 and gone.json()["error"] == "link-gone"


# -- staff credentials on /p/, patient cookie off it -------------------------------------------------------

async def test_staff_credentials_give_nothing_on_the_patient_pages(public: Public) -> None:
    mine = public.studies[0]
    for headers in ({"Authorization": f"Bearer {public.staff_token}"},
                    {"Cookie": f"meshnode_session={public.staff_session}"},
                    {"Authorization": "Bearer mnt_forged"}):
        for path in ("/p/api/share", meta(mine), "/p/download/images.zip"):
            reply = await public.get(path, headers=headers)
            assert reply.status == 401 and reply.json()["error"] == "no-session", (headers, path, reply.body)
    # and a staff session cookie does not get in the way of a patient who is also signed in as staff
    cookie, csrf = await public.sign_in(TOKEN_A)
    both = {"Cookie": f"meshnode_session={public.staff_session}; {COOKIE}={cookie}"}
    assert (await public.get("/p/api/share", headers=both)).status == 200
    assert (await call(public.app, "POST", "/p/api/sign-out", headers={**both, **JSON, "X-CSRF-Token": csrf})
            ).status == 200


async def test_a_patient_cookie_gives_nothing_off_the_patient_pages(public: Public) -> None:
    cookie, csrf = await public.sign_in(TOKEN_A)
    mine = public.studies[0]
    for path in (f"/dicomweb/studies/{mine}/metadata", f"/dicomweb/studies/{mine}"):
        reply = await public.get(path, cookie=cookie, headers={"X-CSRF-Token": csrf, "Accept": "*/*"})
        assert reply.status == 401, (path, reply.status)


# -- forged, expired, garbled, revoked ---------------------------------------------------------------------

async def test_forged_garbled_and_oversized_cookies_are_refused(public: Public) -> None:
    real, _ = await public.sign_in(TOKEN_A)
    for cookie in ("x" * 43, real[:-1] + ("A" if real[-1] != "A" else "B"), "ä\u0000;;==", "x" * 5000, ""):
        reply = await public.get("/p/api/share", headers={"Cookie": f"{COOKIE}={cookie}"})
        assert reply.status == 401, cookie[:20]
    assert (await public.get("/p/api/share", headers={"Cookie": "garbage;;;\x7f=="})).status == 401
    assert (await public.get("/p/api/share", cookie=real)).status == 200


async def test_an_idle_session_ends(public: Public) -> None:
    cookie, _ = await public.sign_in(TOKEN_A)
    public.mono.now += 29 * 60
    assert (await public.get("/p/api/share", cookie=cookie)).status == 200  # activity restarts the idle clock
    public.mono.now += 30 * 60 + 1
    assert (await public.get("/p/api/share", cookie=cookie)).status == 401
    assert len(public.web.sessions) == 0


async def test_a_revoked_or_expired_link_ends_the_session_on_the_next_request(public: Public) -> None:
    cookie_a, _ = await public.sign_in(TOKEN_A)
    cookie_b, _ = await public.sign_in(TOKEN_B)
    public.links.revoked.add("link-a")
    assert (await public.get(meta(public.studies[0]), cookie=cookie_a)).status == 401
    assert (await public.get("/p/api/share", cookie=cookie_b)).status == 200
    public.wall.now += 15 * 86400  # past the link's expiry: the session never outlives it
    assert (await public.get("/p/api/share", cookie=cookie_b)).status == 401
    assert len(public.web.sessions) == 0


async def test_verify_starts_a_new_session_and_drops_the_old_one(public: Public) -> None:
    first, _ = await public.sign_in(TOKEN_A)
    reply = await public.post("/p/api/verify", f'{{"token": "{TOKEN_A}", "code": "{CODE}"}}'.encode(),
                              cookie=first)
    cookie = reply.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert "Path=/p/" in cookie
    assert (await public.get("/p/api/share", cookie=first)).status == 401  # no fixation: the old one is gone


async def test_the_session_cookie_is_secure_over_tls(public: Public) -> None:
    reply = await call(public.app, "POST", "/p/api/verify", headers=JSON,
                       body=f'{{"token": "{TOKEN_A}", "code": "{CODE}"}}'.encode())
    assert "Secure" not in reply.headers["set-cookie"]  # plain http on localhost (tests): no Secure
    original = public.app.app

    async def over_tls(scope, receive, send):  # type: ignore[no-untyped-def]
        await original({**scope, "scheme": "https"}, receive, send)

    public.app.app = over_tls
    reply = await call(public.app, "POST", "/p/api/verify", headers=JSON,
                       body=f'{{"token": "{TOKEN_A}", "code": "{CODE}"}}'.encode())
    assert "Secure" in reply.headers["set-cookie"]


# -- CSRF and bodies ------------------------------------------------------------------------------------------

async def test_a_post_after_the_code_needs_the_sessions_csrf_token(public: Public) -> None:
    cookie, csrf = await public.sign_in(TOKEN_A)
    _, csrf_b = await public.sign_in(TOKEN_B)
    body = b'{"email": "dr@example.org", "code_to": "+447700900123"}'
    for token in ("", "wrong", csrf_b):
        reply = await public.post("/p/api/forward", body, cookie=cookie, csrf=token)
        assert reply.status == 403 and reply.json()["error"] == "csrf", token
        assert (await public.post("/p/api/sign-out", cookie=cookie, csrf=token)).status == 403
    assert public.links.forwards == []
    assert (await public.get("/p/api/share", cookie=cookie)).status == 200  # still signed in
    assert (await public.post("/p/api/forward", body, cookie=cookie, csrf=csrf)).status == 200
    assert public.links.forwards == [("dr@example.org", "+447700900123")]
    assert (await public.post("/p/api/sign-out", cookie=cookie, csrf=csrf)).status == 200
    assert (await public.get("/p/api/share", cookie=cookie)).status == 401


async def test_a_share_that_may_not_be_forwarded_is_not(public: Public) -> None:
    cookie, csrf = await public.sign_in(TOKEN_B)
    reply = await public.post("/p/api/forward", b'{"email": "dr@example.org", "code_to": "dr2@example.org"}',
                              cookie=cookie, csrf=csrf)
    assert reply.status == 403 and public.links.forwards == []


async def test_oversized_and_malformed_bodies_are_refused(public: Public) -> None:
    for body, headers, status in (
        (b"{" + b" " * 5000 + b"}", {}, 413),
        (b'{"token": "' + b"A" * (1 << 20) + b'"}', {}, 413),
        (b"not json", {}, 400),
        (b"[1, 2]", {}, 400),
        (b'{"token": 12345678901234567890}', {}, 400),
        (b'{"token": ["x"]}', {}, 400),
        (b'{"token": "short"}', {}, 400),
        (b'{"token": "' + b"A" * 200 + b'"}', {}, 400),
        (b'{"token": "../../etc/passwd/aaaaaaaaaa"}', {}, 400),
        (f'token={TOKEN_A}'.encode(), {"Content-Type": "application/x-www-form-urlencoded"}, 415),
        (f'{{"token": "{TOKEN_A}"}}'.encode(), {"Content-Type": "text/plain"}, 415),
        (b'\xff\xfe{"token"', {}, 400),
    ):
        reply = await public.post("/p/api/open", body, headers=headers)
        assert reply.status == status, (body[:40], reply.status, reply.body[:200])
    bad_code = await public.post("/p/api/verify", f'{{"token": "{TOKEN_A}", "code": "{"9" * 500}"}}'.encode())
    assert bad_code.status == 400


# -- the download: ranges ------------------------------------------------------------------------------------

async def test_range_requests_on_the_download(public: Public) -> None:
    cookie, _ = await public.sign_in(TOKEN_A)
    size = len(ZIP)

    async def get(range_: str | None, **extra: str) -> Reply:
        headers = {**({"Range": range_} if range_ is not None else {}), **extra}
        return await public.get("/p/download/images.zip", cookie=cookie, headers=headers)

    whole = await get(None)
    assert whole.status == 200 and whole.body == ZIP
    assert whole.headers["accept-ranges"] == "bytes" and whole.headers["etag"] == '"media-v1"'
    assert whole.headers["content-disposition"].startswith("attachment")
    assert whole.headers["cache-control"] == "no-store"
    for header, status, start, stop in (
        ("bytes=0-99", 206, 0, 100),
        ("bytes=100-", 206, 100, size),
        ("bytes=-5", 206, size - 5, size),
        ("bytes=-99999999999999999999999999", 206, 0, size),  # a suffix longer than the file: all of it
        (f"bytes=10-{size + 1000}", 206, 10, size),
        ("bytes=0-99999999999999999999999999999", 206, 0, size),  # huge last: clamped, no int() of huge text
        (" bytes = 7 - 8 ", 206, 7, 9),
        ("bytes=0-0,5-9", 200, 0, size),  # several ranges: ignored, the whole file
        ("bytes=5-1", 200, 0, size),  # last before first: invalid, ignored
        ("bytes=-5-10", 200, 0, size),  # negative: invalid, ignored
        ("bytes=+5-10", 200, 0, size),
        ("bytes=0x10-20", 200, 0, size),
        ("bytes=\uff11-2", 200, 0, size),  # non-ASCII digits
        ("items=0-10", 200, 0, size),
        ("bytes 0-10", 200, 0, size),
        ("bytes=", 200, 0, size),
        ("bytes=-", 200, 0, size),
        ("bytes=" + "1" * 300 + "-", 200, 0, size),  # over-long header: ignored
    ):
        reply = await get(header)
        assert reply.status == status and reply.body == ZIP[start:stop], (header, reply.status)
        assert reply.headers["content-length"] == str(stop - start)
        if status == 206:
            assert reply.headers["content-range"] == f"bytes {start}-{stop - 1}/{size}", header
        else:
            assert "content-range" not in reply.headers
    for header in ("bytes=-0", f"bytes={size}-", f"bytes={size + 5}-{size + 10}", "bytes=99999999999999999999999-"):
        reply = await get(header)
        assert reply.status == 416, header
        assert reply.headers["content-range"] == f"bytes */{size}"
    # If-Range: the current ETag keeps the range; another (or a date) gets the whole current file
    assert (await get("bytes=0-9", **{"If-Range": '"media-v1"'})).status == 206
    assert (await get("bytes=0-9", **{"If-Range": '"media-v0"'})).body == ZIP
    assert (await get("bytes=0-9", **{"If-Range": "Wed, 21 Oct 2015 07:28:00 GMT"})).status == 200


async def test_a_download_is_recorded_once_not_per_range(public: Public) -> None:
    cookie, _ = await public.sign_in(TOKEN_A)
    for header in ("bytes=0-999", "bytes=1000-4999", "bytes=5000-", "bytes=-10"):
        await public.get("/p/download/images.zip", cookie=cookie, headers={"Range": header})
    downloads = [r for r in public.links.records if r[1] == "downloaded"]
    assert len(downloads) == 1 and downloads[0][0] == "link-a"
    await public.get("/p/download/images.zip", cookie=cookie)  # a new whole download: recorded again
    assert len([r for r in public.links.records if r[1] == "downloaded"]) == 2


async def test_the_download_name_is_checked(public: Public) -> None:
    cookie, _ = await public.sign_in(TOKEN_A)
    for name in ("images.tar", "..%2F..%2Fnode.db", "a" * 200 + ".zip", ".zip%00.txt"):
        assert (await public.get(f"/p/download/{name}", cookie=cookie)).status == 404, name


# -- static paths --------------------------------------------------------------------------------------------

async def test_static_path_tricks_find_nothing(public: Public) -> None:
    for path in ("/p/static/../ui.py", "/p/static/..%2F..%2Fui.py", "/p/static/viewer/../../ui.py",
                 "/p/static/.hidden.js", "/p/static//etc/passwd", "/p/static/viewer/../login.js",
                 "/p/static/../static/app.js", "/p/static/portal.js", "/p/static/index.html",
                 "/p/static/viewer/%2e%2e/app.js", "/p/static/a/b/c/d/e/f/g.js", "/p/static/x.py"):
        reply = await public.get(path)
        assert reply.status == 404, (path, reply.status)
    assert (await public.get("/p/static/viewer/viewer.js")).status == 200  # the same bundle as the portal's


# -- rate limits ---------------------------------------------------------------------------------------------

async def test_the_rate_limit_answers_429_per_address_and_the_rest_of_the_app_is_unaffected(public: Public) -> None:
    mono = Clock(0.0)
    limiter = RateLimiter(5, clock=mono)
    app = limited(public.app.app, replace(public.config, requests_per_minute=5), limiter)
    body = f'{{"token": "{TOKEN_A}", "code": "000000"}}'.encode()
    for _ in range(5):
        assert (await call(app, "POST", "/p/api/verify", headers=JSON, body=body, client="203.0.113.9")).status == 403
    refused = await call(app, "POST", "/p/api/verify", headers=JSON, body=body, client="203.0.113.9")
    assert refused.status == 429 and refused.json()["error"] == "rate-limited"
    assert int(refused.headers["retry-after"]) >= 1 and refused.headers["cache-control"] == "no-store"
    assert all(r.path.startswith("/p/") for r in public.web.routes())  # all behind the limiter's prefix
    for path in ("/p/", "/p/api/share", "/p/static/viewer/viewer.js"):  # every route, pages included
        assert (await call(app, "GET", path, client="203.0.113.9")).status == 429, path
    assert (await call(app, "GET", "/p/", client="198.51.100.7")).status == 200  # another address
    assert (await call(app, "GET", "/health", client="203.0.113.9")).status == 200  # not the patient pages
    mono.now += 60
    assert (await call(app, "GET", "/p/", client="203.0.113.9")).status == 200  # refilled


async def test_the_limiter_believes_forwarded_for_only_from_a_trusted_proxy(public: Public) -> None:
    limiter = RateLimiter(2, clock=Clock(0.0))
    config = replace(public.config, trusted_proxies=("10.0.0.1",))
    app = limited(public.app.app, config, limiter)
    # behind the proxy, each client is counted on its own
    for client in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
        for _ in range(2):
            reply = await call(app, "GET", "/p/", client="10.0.0.1", headers={"X-Forwarded-For": client})
            assert reply.status == 200
    # a client that is not the proxy cannot escape its bucket by claiming other addresses
    statuses = [(await call(app, "GET", "/p/", client="198.51.100.9",
                            headers={"X-Forwarded-For": f"192.0.2.{i}"})).status for i in range(10, 14)]
    assert statuses == [200, 200, 429, 429]


def test_the_limiter_stays_bounded_under_many_addresses() -> None:
    clock = Clock(0.0)
    limiter = RateLimiter(1, clock=clock, max_clients=1000)
    assert limiter.take("198.51.100.1") == 0 and limiter.take("198.51.100.1") > 0
    for i in range(20_000):
        limiter.take(f"2001:db8::{i:x}")
    assert len(limiter) == 1000


# -- the public listener --------------------------------------------------------------------------------------

async def test_the_public_listener_serves_nothing_but_the_patient_pages(public: Public) -> None:
    config = replace(public.config, listen="127.0.0.1:0")

    async def audit(event: AuditEvent) -> None:
        pass

    app = public_app(public.web.routes(), public.auth, config, audit)
    auth = {"Authorization": f"Bearer {public.staff_token}"}
    for path in ("/", "/ui/", "/ui/api/inbox", "/dicomweb/studies", f"/dicomweb/studies/{public.studies[0]}",
                 "/metrics", "/health", "/ui/static/app.js", "/api/status"):
        for headers in ({}, auth):
            reply = await call(app, "GET", path, headers=headers)
            assert reply.status == 404, (path, reply.status)
    page = await call(app, "GET", "/p/")
    assert page.status == 200 and "content-security-policy" in page.headers
    assert page.headers["referrer-policy"] == "no-referrer" and page.headers["cache-control"] == "no-store"
    with pytest.raises(ValueError):
        public_app([*public.web.routes(), *Wado(public.web.s).routes()], public.auth, config, audit)


def test_an_exposed_listener_needs_tls_or_a_proxy() -> None:
    base = PatientAccessConfig(enabled=True, public_url="https://x.example", listen="0.0.0.0:8443")
    with pytest.raises(ConfigError):
        check_exposure(base)
    check_exposure(replace(base, tls_certificate="c.pem", tls_key="k.pem"))
    check_exposure(replace(base, trusted_proxies=("10.0.0.1",)))
    check_exposure(replace(base, listen="127.0.0.1:8443"))


# -- what is recorded ------------------------------------------------------------------------------------------

async def test_views_and_key_images_are_recorded(public: Public) -> None:
    cookie, _ = await public.sign_in(TOKEN_A)
    mine = public.studies[0]
    await public.get(meta(mine), cookie=cookie)
    r = public.web.s.storage.metadata.instances(mine)[0]
    reply = await public.get("/p/api/key-image", cookie=cookie,
                             query=f"study={mine}&series={r.series_uid}&instance={r.sop_instance_uid}&format=jpeg")
    assert reply.status == 200 and reply.headers["content-type"] == "image/jpeg"
    for q in (f"study={mine}&series={r.series_uid}&instance={r.sop_instance_uid}&format=gif",
              f"study={mine}&series={r.series_uid}&instance={r.sop_instance_uid}&frame=0",
              f"study={mine}&series={r.series_uid}&instance={r.sop_instance_uid}&frame=99999999999",
              f"study={mine}&series=x'--&instance={r.sop_instance_uid}", "study=&series=&instance="):
        assert (await public.get("/p/api/key-image", cookie=cookie, query=q)).status == 400, q
    actions = [a for _, a, _ in public.links.records]
    assert actions.count("viewed") == 1 and actions.count("key image") == 1


async def test_the_pages_have_a_policy_and_never_take_the_token_from_the_url(public: Public) -> None:
    page = await public.get("/p/")
    assert page.status == 200
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    script = (await public.get("/p/static/patient.js")).body.decode()
    assert "location.hash" in script and "location.search" not in script
    assert "innerHTML" not in script


async def test_an_upload_links_session_cannot_view_or_download(public: Public) -> None:
    public.links.add("U" * 43, "link-u", (), kind="upload")
    cookie, csrf = await public.sign_in("U" * 43)
    for path in ("/p/api/share", meta(public.studies[0]), "/p/download/images.zip"):
        assert (await public.get(path, cookie=cookie)).status == 401, path
    reply = await public.post("/p/api/forward", b'{"email": "a@example.org", "code_to": "b@example.org"}',
                              cookie=cookie, csrf=csrf)
    assert reply.status == 401 and public.links.forwards == []


async def test_a_websocket_handshake_on_the_patient_pages_is_refused(public: Public) -> None:
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await public.app({"type": "websocket", "path": "/p/api/share", "headers": [], "client": ("127.0.0.1", 1)},
                     receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008}]


# -- the hostile review of the public pages (notes/i14/reviews/public.md) ----------------------------------------

async def test_a_download_from_byte_1_is_never_recorded(public: Public) -> None:
    """Major 1: a copy fetched as `bytes=1-` (byte 0 is always "P") is still a recorded download."""
    cookie, _ = await public.sign_in(TOKEN_A)
    reply = await public.get("/p/download/images.zip", cookie=cookie, headers={"Range": "bytes=1-"})
    assert reply.status == 206 and ZIP[:1] + reply.body == ZIP
    assert [r for r in public.links.records if r[1] == "downloaded"]


async def test_the_whole_study_is_not_served_over_p_dicomweb_and_images_are_audited_as_the_share(
        public: Public) -> None:
    """Majors 1 and 2: /p/dicomweb serves only what the viewer asks (study metadata, one instance); a whole
    study or series in bulk is the ZIP's job (recorded, full rate cost); WADO's audit names the share."""
    cookie, _ = await public.sign_in(TOKEN_A)
    mine = public.studies[0]
    r = public.web.s.storage.metadata.instances(mine)[0]
    for path in (f"/p/dicomweb/studies/{mine}", f"/p/dicomweb/studies/{mine}/series/{r.series_uid}",
                 f"/p/dicomweb/studies/{mine}/series/{r.series_uid}/metadata"):
        assert (await public.get(path, cookie=cookie, headers={"Accept": "*/*"})).status == 404, path
    one = await public.get(f"/p/dicomweb/studies/{mine}/series/{r.series_uid}/instances/{r.sop_instance_uid}",
                           cookie=cookie, headers={"Accept": "*/*"})
    assert one.status == 200 and one.body.count(b"DICM") == 1
    wado = [e for e in public.audit if e.action.startswith("wado-")]
    assert wado and all(e.actor == "share:link-a" for e in wado)


async def test_study_metadata_costs_a_whole_request_and_is_recorded_once_per_session(public: Public) -> None:
    """Major 2: the study metadata reads every header: full cost; "viewed" once per session and study."""
    cookie, _ = await public.sign_in(TOKEN_A)
    mine = public.studies[0]
    app = limited(public.web_app, replace(public.config, requests_per_minute=10), RateLimiter(10, clock=Clock(0.0)))
    h = {"Cookie": f"{COOKIE}={cookie}", "Accept": "*/*"}
    statuses = [(await call(app, "GET", meta(mine), headers=h, client="203.0.113.5")).status for _ in range(30)]
    assert statuses.count(200) == 10
    assert [a for _, a, _ in public.links.records].count("viewed") == 1


async def test_planned_media_sets_are_reused_and_built_once_for_concurrent_requests(
        public: Public, monkeypatch: pytest.MonkeyPatch) -> None:
    """Major 3: a resumed download does not build the set again (no header read per series for a 1-byte
    range); concurrent requests build it once; other records (a study changed) build a new one."""
    import trio

    from meshnode.web import patient_web
    built: list[int] = []
    real = patient_web.media_set_from_records

    def counting(*args: Any, **kw: Any) -> Any:
        built.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(patient_web, "media_set_from_records", counting)
    plan = patient_web.media_planner(public.web.s.db, public.web.s.storage, "Royal Example", keep=1)
    mine, theirs = public.studies
    results: list[object] = []

    async def one(studies: tuple[str, ...]) -> None:
        results.append(await trio.to_thread.run_sync(plan, studies))

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(one, (mine,))
    await one((mine,))
    assert len(built) == 1 and all(r is results[0] for r in results)
    await one((theirs,))  # other records: another set (and the LRU of one forgets the first)
    await one((mine,))
    assert len(built) == 3 and results[-1] is not results[0] and results[-1].etag == results[0].etag  # type: ignore[attr-defined]


async def test_the_public_side_has_its_own_block_readers(public: Public) -> None:
    """Major 3: patients cannot starve staff WADO/QIDO/STOW of the shared CapacityLimiter."""
    assert public.web.readers is not public.web.s.block_readers
    assert public.web.readers.total_tokens < public.web.s.block_readers.total_tokens


async def test_one_ipv6_64_is_one_client(public: Public) -> None:
    """Major 4: an IPv6 /64 is one client (one host usually holds a whole /64)."""
    app = limited(public.web_app, replace(public.config, requests_per_minute=2), RateLimiter(2, clock=Clock(0.0)))
    statuses = [(await call(app, "POST", "/p/api/open", headers=JSON, body=b'{"token": "' + b"Z" * 43 + b'"}',
                            client=f"2001:db8:1:2::{i:x}")).status for i in range(1, 41)]
    assert statuses.count(429) >= 38
    other = await call(app, "POST", "/p/api/open", headers=JSON, body=b'{"token": "' + b"Z" * 43 + b'"}',
                       client="2001:db8:1:3::1")
    assert other.status != 429
    v4 = [(await call(app, "POST", "/p/api/open", headers=JSON, body=b"{}", client=f"198.51.100.{i}")).status
          for i in range(1, 5)]
    assert 429 not in v4  # IPv4 stays per address


async def test_key_images_read_the_catalogue_on_the_database_thread(public: Public) -> None:
    """Major 5: the key image's record is looked up under the DatabaseThread's lock and among the shown
    instances; the renderer gets the record."""
    cookie, _ = await public.sign_in(TOKEN_A)
    mine = public.studies[0]
    store = public.web.s.storage.metadata
    db = public.web.s.db
    seen: list[bool] = []
    original = store.instances

    def instances(*args: Any, **kw: Any) -> Any:
        seen.append(db._lock.locked())
        return original(*args, **kw)

    store.instances = instances  # type: ignore[method-assign]
    try:
        r = original(mine)[0]
        reply = await public.get("/p/api/key-image", cookie=cookie,
                                 query=f"study={mine}&series={r.series_uid}&instance={r.sop_instance_uid}")
    finally:
        del store.instances
    assert reply.status == 200 and reply.body.endswith(r.sop_instance_uid.encode())
    assert seen and all(seen)


async def test_the_zip_is_not_kept_by_the_browser(public: Public) -> None:
    """Minor 6: personal data: no-store."""
    cookie, _ = await public.sign_in(TOKEN_A)
    reply = await public.get("/p/download/images.zip", cookie=cookie)
    assert reply.headers["cache-control"] == "no-store"


def test_an_http_public_url_is_refused_off_loopback_even_behind_a_proxy() -> None:
    """Minor 7: behind a proxy the public URL must be https (else the cookie has no Secure)."""
    base = PatientAccessConfig(enabled=True, public_url="http://x.example", listen="0.0.0.0:8443",
                               trusted_proxies=("10.0.0.1",))
    with pytest.raises(ConfigError):
        check_exposure(base)
    check_exposure(replace(base, public_url="https://x.example"))


def test_the_shared_listener_refuses_two_proxy_lists() -> None:
    """Minor 8: on the [http] listener the limiter and WebApp must believe the same proxies."""
    patient = PatientAccessConfig(enabled=True, public_url="https://x.example", trusted_proxies=("10.0.0.1",))
    with pytest.raises(ConfigError):
        check_shared(patient, HttpConfig(listen="127.0.0.1:0", trusted_proxies=("10.0.0.2",)))
    check_shared(patient, HttpConfig(listen="127.0.0.1:0", trusted_proxies=("10.0.0.1",)))
    check_shared(replace(patient, trusted_proxies=()), HttpConfig(listen="127.0.0.1:0"))


async def test_error_answers_on_the_patient_pages_cannot_be_framed(public: Public) -> None:
    """Minor 11: JSON errors and the 429 carry the framing/CSP headers; pages have COOP."""
    page = await public.get("/p/")
    assert page.headers["cross-origin-opener-policy"] == "same-origin"
    error = await public.get("/p/api/share")
    assert error.status == 401
    app = limited(public.web_app, replace(public.config, requests_per_minute=1), RateLimiter(1, clock=Clock(0.0)))
    await call(app, "GET", "/p/api/share", client="192.0.2.9")
    limited_reply = await call(app, "GET", "/p/api/share", client="192.0.2.9")
    assert limited_reply.status == 429
    for reply in (error, limited_reply):
        assert reply.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in reply.headers["content-security-policy"]
    # a page of another origin holds no reference to the patient page (COOP above), so it cannot change its
    # fragment; a new link in the same tab reloads the page rather than restarting a half-done flow
    script = (await public.get("/p/static/patient.js")).body.decode()
    assert "start();\n  });" not in script and "location.reload()" in script


def test_one_patient_prefix() -> None:
    """Minor 12: "/p/" is defined once."""
    import meshnode.web.patient_listener as listener
    import meshnode.web.patient_web as web
    assert not hasattr(listener, "PREFIX") and not hasattr(web, "PREFIX") and not hasattr(web, "log")


async def test_a_session_sends_a_bounded_number_of_downloads_at_once(public: Public) -> None:
    """Major 3: one session cannot hold every public worker with parallel downloads."""
    from meshnode.web.patient_web import DOWNLOADS_PER_SESSION
    cookie, _ = await public.sign_in(TOKEN_A)
    [session] = [s for s in public.web.sessions._by_hash.values() if s.link_id == "link-a"]
    session.downloads = DOWNLOADS_PER_SESSION  # as if that many were being sent now
    busy = await public.get("/p/download/images.zip", cookie=cookie)
    assert busy.status == 429 and busy.headers["retry-after"]
    session.downloads = DOWNLOADS_PER_SESSION - 1
    reply = await public.get("/p/download/images.zip", cookie=cookie)
    assert reply.status == 200 and reply.body == ZIP
    assert session.downloads == DOWNLOADS_PER_SESSION - 1  # the finished one counted out again


async def test_the_own_listener_over_tls_uses_a_host_only_cookie(public: Public) -> None:
    """Minor 10: on a listener of its own over TLS the cookie is __Host- (Path=/, Secure, no Domain): a sibling
    subdomain cannot plant it; a plain-named cookie there opens nothing."""
    public.web.config = replace(public.config, listen="127.0.0.1:0")
    original = public.app.app

    async def over_tls(scope, receive, send):  # type: ignore[no-untyped-def]
        await original({**scope, "scheme": "https"}, receive, send)

    public.app.app = over_tls
    reply = await call(public.app, "POST", "/p/api/verify", headers=JSON,
                       body=f'{{"token": "{TOKEN_A}", "code": "{CODE}"}}'.encode())
    set_cookie = reply.headers["set-cookie"]
    assert set_cookie.startswith(f"__Host-{COOKIE}=") and "Path=/;" in set_cookie and "Secure" in set_cookie
    assert "Domain" not in set_cookie
    value = set_cookie.split(";")[0].split("=", 1)[1]
    mine = public.studies[0]
    host = await call(public.app, "GET", meta(mine), headers={"Cookie": f"__Host-{COOKIE}={value}"})
    plain = await call(public.app, "GET", meta(mine), headers={"Cookie": f"{COOKIE}={value}"})
    assert host.status == 200 and plain.status == 401
