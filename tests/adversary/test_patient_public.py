"""The public patient pages (/p/): sessions and what they reach. A session of one share reaches only its own
studies; staff credentials give nothing on /p/ and a patient cookie nothing off it; forged, expired, garbled
and revoked sessions end; every POST after the code needs the session's CSRF token; bodies are bounded JSON;
static paths cannot escape; what is viewed is recorded; every answer has its page policy.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import replace
from typing import Any

from meshnode.web.patient_listener import (
    limited,
)
from meshnode.web.patient_session import COOKIE
from meshnode.web.rate_limit import RateLimiter
from tests.adversary.patient_public import (
    CODE,
    JSON,
    TOKEN_A,
    TOKEN_B,
    Clock,
    Public,
    meta,
)
from tests.meshnode.web.asgi import call

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


# -- static paths --------------------------------------------------------------------------------------------

async def test_static_path_tricks_find_nothing(public: Public) -> None:
    for path in ("/p/static/../ui.py", "/p/static/..%2F..%2Fui.py", "/p/static/viewer/../../ui.py",
                 "/p/static/.hidden.js", "/p/static//etc/passwd", "/p/static/viewer/../login.js",
                 "/p/static/../static/app.js", "/p/static/portal.js", "/p/static/index.html",
                 "/p/static/viewer/%2e%2e/app.js", "/p/static/a/b/c/d/e/f/g.js", "/p/static/x.py"):
        reply = await public.get(path)
        assert reply.status == 404, (path, reply.status)
    assert (await public.get("/p/static/viewer/viewer.js")).status == 200  # the same bundle as the portal's


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
