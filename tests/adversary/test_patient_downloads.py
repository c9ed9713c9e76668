"""The public patient pages (/p/): the download, the limiter and the listener. Byte ranges are parsed strictly,
a download is recorded once, media sets are planned once and read on the public side's own threads; the
limiter answers 429 per address (IPv6 per /64) without touching the rest of the app; the public listener
serves /p/ and nothing else and needs TLS off localhost.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from meshnode.patient.config import PatientAccessConfig
from meshnode.storage.audit import AuditEvent
from meshnode.web.config import HttpConfig
from meshnode.web.patient_listener import (
    check_exposure,
    check_shared,
    limited,
    public_app,
)
from meshnode.web.patient_session import COOKIE
from meshnode.web.rate_limit import RateLimiter
from meshnode.web.wado import Wado
from protocol.errors import ConfigError
from tests.adversary.patient_public import (
    JSON,
    TOKEN_A,
    ZIP,
    Clock,
    Public,
    meta,
)
from tests.meshnode.web.asgi import Reply, call

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
    real = patient_web.media_set_from_records  # type: ignore[attr-defined]  # (imported there, patched here)

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
