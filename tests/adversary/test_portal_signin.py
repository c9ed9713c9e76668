"""Hostile sign-ins against the portal (in process, the real WebApp and both user stores): wrong and replayed
second factors, guessing beyond the rate limit, bodies that are too big or not what they claim, requests
without the session's anti-CSRF token, a clinician calling the admin API, sessions that should have ended."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pyotp
import pytest
import trio
import trio.testing

from meshnode.storage.audit import EventCode, Outcome
from meshnode.storage.sqlite_users import SqliteUserStore
from meshnode.storage.users import MemoryUserStore, UserStore
from meshnode.web import auth as auth_module
from meshnode.web.auth import MAX_SESSIONS_PER_USER, add_user, issue_token
from meshnode.web import signin
from meshnode.web.login_limit import MAX_IN_FLIGHT, PER_CLIENT, PER_USER, WINDOW_S
from tests.meshnode.web.portal_app import NOW, PASSWORD, cheap_hashing, make_portal, session_of

__all__ = ["cheap_hashing"]
pytestmark = pytest.mark.usefixtures("cheap_hashing")


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> UserStore:
    return MemoryUserStore() if request.param == "memory" else SqliteUserStore(tmp_path / "node.db")


async def test_wrong_password_wrong_code_unknown_user_all_look_alike_and_are_audited(store: UserStore) -> None:
    portal = make_portal(store)
    portal.user("alice", "clinician")
    wrong_password = await portal.login("alice", password="not the password at all")
    wrong_code = await portal.login("alice", code="000000" if portal.code("alice") != "000000" else "111111")
    unknown = await portal.login("mallory", code="123456")
    short_code = await portal.login("alice", code="12345")
    assert [r.status for r in (wrong_password, wrong_code, unknown, short_code)] == [401] * 4
    assert len({r.json()["message"] for r in (wrong_password, wrong_code, unknown)}) == 1  # nothing to enumerate
    failures = [e for e in portal.events if e.code is EventCode.USER_AUTHENTICATION]
    assert [e.outcome for e in failures] == [Outcome.MINOR_FAILURE] * 4
    assert [e.actor for e in failures] == ["user:alice", "user:alice", "user:mallory", "user:alice"]
    assert "wrong password" in failures[0].detail and "wrong TOTP code" in failures[1].detail
    assert all(PASSWORD not in e.detail for e in portal.events)
    assert (await portal.call("GET", "/ui/api/whoami")).json()["user"] is None


async def test_a_totp_code_is_good_once(store: UserStore) -> None:
    portal = make_portal(store)
    portal.user("alice", "clinician")
    code = portal.code("alice")
    first = await portal.login("alice", code=code)
    assert first.status == 200 and first.json()["user"] == "alice"
    cookie = first.headers["set-cookie"]
    assert "; HttpOnly" in cookie and "; SameSite=Strict" in cookie and "Secure" not in cookie  # plain http
    portal.clock.now += 5  # same 30 s step: an observer replays the code with the password
    replay = await portal.login("alice", code=code)
    assert replay.status == 401
    assert "replay" in portal.events[-1].detail
    # the code of the previous step (still inside the drift window) is refused too: it is older than one used
    previous = pyotp.TOTP(portal.secrets["alice"]).at(portal.clock.now - 30)
    assert (await portal.login("alice", code=previous)).status == 401
    portal.clock.now += 30
    assert (await portal.login("alice")).status == 200


async def test_guessing_is_rate_limited_per_user_and_per_address(store: UserStore) -> None:
    portal = make_portal(store)
    portal.user("alice", "clinician")
    portal.user("bob", "clinician")
    for _ in range(PER_USER):
        assert (await portal.login("alice", password="guess-guess-guess", client="10.0.0.1")).status == 401
    # even the right password is not checked now, from anywhere
    limited = await portal.login("alice", client="10.0.0.2")
    assert limited.status == 429 and int(limited.headers["retry-after"]) > 0
    assert limited.json()["error"] == "rate-limited"
    assert (await portal.login("bob", client="10.0.0.1")).status == 200  # another user is not locked
    portal.clock.now += WINDOW_S + 1
    assert (await portal.login("alice", client="10.0.0.2")).status == 200
    # one address trying many names
    for i in range(PER_CLIENT):
        await portal.login(f"user{i}", code="123456", client="10.0.0.9")
    assert (await portal.login("bob", client="10.0.0.9")).status == 429
    portal.clock.now += 30
    assert (await portal.login("bob", client="10.0.0.3")).status == 200


async def test_oversized_and_malformed_login_bodies(store: UserStore) -> None:
    portal = make_portal(store)
    portal.user("alice", "clinician")
    huge = await portal.call("POST", "/ui/login", raw=b'{"user": "' + b"a" * 100_000 + b'"}',
                             content_type="application/json")
    assert huge.status == 413
    not_json = await portal.call("POST", "/ui/login", raw=b"{not json", content_type="application/json")
    assert not_json.status == 400 and "not JSON" in not_json.json()["message"]
    bad_json = await portal.call("POST", "/ui/login", json=["alice", PASSWORD])
    assert bad_json.status == 400
    missing = await portal.call("POST", "/ui/login", json={"user": "alice", "password": PASSWORD})
    assert missing.status == 400
    long_name = await portal.call("POST", "/ui/login", json={"user": "a" * 3000, "password": "x", "code": "1"})
    assert long_name.status == 401
    assert "'aaaa" in portal.events[-1].actor and len(portal.events[-1].actor) < 120


async def test_state_changing_requests_need_the_csrf_token(store: UserStore) -> None:
    portal = make_portal(store)
    portal.user("root", "admin")
    session, csrf = await portal.signed_in("root")
    body = {"name": "carol", "roles": ["clinician"]}
    assert (await portal.call("POST", "/ui/api/users", session=session, json=body)).status == 403
    assert (await portal.call("POST", "/ui/api/users", session=session, csrf="forged", json=body)).status == 403
    assert (await portal.call("POST", "/ui/logout", session=session)).status == 403
    assert store.user("carol") is None
    assert (await portal.call("POST", "/ui/api/users", session=session, csrf=csrf, json=body)).status == 200
    assert (await portal.call("POST", "/ui/logout", session=session, csrf=csrf)).status == 200
    assert (await portal.call("GET", "/ui/api/whoami", session=session)).json()["user"] is None


async def test_a_clinician_cannot_use_the_admin_api(store: UserStore) -> None:
    portal = make_portal(store)
    portal.user("alice", "clinician")
    session, csrf = await portal.signed_in("alice")
    assert (await portal.call("GET", "/ui/api/users", session=session)).status == 403
    for path, body in (("/ui/api/users", {"name": "eve", "roles": ["admin"]}),
                       ("/ui/api/users/alice/roles", {"roles": ["admin"]}),
                       ("/ui/api/users/alice/reset", {})):
        assert (await portal.call("POST", path, session=session, csrf=csrf, json=body)).status == 403
    assert store.user("eve") is None
    user = store.user("alice")
    assert user is not None and user.roles == ("clinician",)
    forbidden = [e for e in portal.events if e.action == "http-forbidden"]
    assert forbidden and forbidden[0].actor == "user:alice"


async def test_sessions_end_idle_expired_disabled_role_changed_password_reset(store: UserStore) -> None:
    portal = make_portal(store, session_idle_seconds=60, session_hours=1)

    async def who(session: str) -> object:
        return (await portal.call("GET", "/ui/api/whoami", session=session)).json()["user"]

    portal.user("alice", "clinician")
    portal.user("root", "admin")
    session, _ = await portal.signed_in("alice")
    portal.clock.now += 59
    assert await who(session) == "alice"
    portal.clock.now += 61  # idle longer than session_idle_seconds
    assert await who(session) is None
    session, _ = await portal.signed_in("alice")
    for _ in range(80):  # active all the time, but not past session_hours
        portal.clock.now += 50
        await who(session)
    assert await who(session) is None
    # changed behind the session's back (the CLI): within seconds, the session ends
    for change in (lambda: store.set_roles("alice", ("pacs",)), lambda: store.disable_user("alice")):
        session, _ = await portal.signed_in("alice")
        change()
        portal.clock.now += 6
        assert await who(session) is None
        store.set_disabled("alice", False)
    session, _ = await portal.signed_in("alice")
    admin, csrf = await portal.signed_in("root")
    reset = await portal.call("POST", "/ui/api/users/alice/reset", session=admin, csrf=csrf)
    assert reset.status == 200 and reset.json()["sessions_ended"] == 1 and reset.json()["password"]
    assert await who(session) is None
    assert (await portal.login("alice", code="123456")).status == 401  # the old password is gone


async def test_sign_in_replaces_any_session_id_the_browser_brought(store: UserStore) -> None:
    portal = make_portal(store)
    portal.user("alice", "clinician")
    planted, _ = await portal.signed_in("alice")
    portal.clock.now += 30
    reply = await portal.call("POST", "/ui/login", session=planted,
                              json={"user": "alice", "password": PASSWORD, "code": portal.code("alice")})
    assert reply.status == 200 and session_of(reply) != planted
    assert (await portal.call("GET", "/ui/api/whoami", session=planted)).json()["user"] is None


async def test_disabled_users_and_revoked_tokens_cannot_sign_in(store: UserStore) -> None:
    portal = make_portal(store)
    portal.user("alice", "clinician")
    store.disable_user("alice")
    assert (await portal.login("alice")).status == 401
    assert "disabled" in portal.events[-1].detail
    add_user(store, "robot", ("read",), int(NOW * 1000))
    token, record = issue_token(store, "robot", "", int(NOW * 1000))
    store.revoke_token(record.token_id)
    assert (await portal.call("POST", "/ui/login", json={"token": token})).status == 401


async def test_a_cross_site_form_cannot_sign_the_browser_in(store: UserStore) -> None:
    """Login CSRF: another site's HTML form (urlencoded: no CORS preflight) posting the attacker's own
    credentials would sign the victim's browser in as the attacker. Only a JSON body (which a cross-site page
    can send only after a preflight the node never grants) is accepted."""
    portal = make_portal(store)
    portal.user("mallory", "clinician")
    form = f"user=mallory&password={PASSWORD.replace(' ', '+')}&code={portal.code('mallory')}".encode()
    reply = await portal.call("POST", "/ui/login", raw=form, content_type="application/x-www-form-urlencoded")
    assert reply.status == 415 and "set-cookie" not in reply.headers
    text = await portal.call("POST", "/ui/login", raw=form, content_type="text/plain")
    assert text.status == 415
    assert (await portal.login("mallory")).status == 200  # the same credentials as JSON


async def test_bad_tokens_are_limited_per_address_without_locking_out_others(store: UserStore) -> None:
    portal = make_portal(store)
    add_user(store, "robot", ("read",), int(NOW * 1000))
    token, _ = issue_token(store, "robot", "", int(NOW * 1000))
    for i in range(PER_CLIENT):
        assert (await portal.call("POST", "/ui/login", json={"token": f"mnt_guess{i}"},
                                  client="10.0.0.66")).status == 401
    assert (await portal.call("POST", "/ui/login", json={"token": token}, client="10.0.0.66")).status == 429
    for i in range(PER_USER + 1):  # from many addresses: no shared "token user" to lock
        await portal.call("POST", "/ui/login", json={"token": "mnt_x"}, client=f"10.1.0.{i}")
    assert (await portal.call("POST", "/ui/login", json={"token": token}, client="10.2.0.1")).status == 200


async def test_the_cookie_is_secure_behind_a_tls_proxy(store: UserStore) -> None:
    portal = make_portal(store, public_url="https://pacs-gw.example.nhs.uk")
    portal.user("alice", "clinician")
    reply = await portal.login("alice")
    assert reply.status == 200 and "; Secure" in reply.headers["set-cookie"]


async def test_the_limits_come_from_the_config(store: UserStore) -> None:
    portal = make_portal(store, login_failures_per_user=2, login_failures_per_address=1000)
    portal.user("alice", "clinician")
    for _ in range(2):
        assert (await portal.login("alice", code="123456")).status == 401
    assert (await portal.login("alice")).status == 429


async def test_saving_the_same_roles_keeps_the_sessions(store: UserStore) -> None:
    portal = make_portal(store)
    portal.user("alice", "clinician")
    portal.user("root", "admin")
    session, _ = await portal.signed_in("alice")
    admin, csrf = await portal.signed_in("root")
    same = await portal.call("POST", "/ui/api/users/alice/roles", session=admin, csrf=csrf, json={"roles": ["clinician"]})
    assert same.status == 200 and same.json()["sessions_ended"] == 0
    assert (await portal.call("GET", "/ui/api/whoami", session=session)).json()["user"] == "alice"
    changed = await portal.call("POST", "/ui/api/users/alice/roles", session=admin, csrf=csrf,
                                json={"roles": ["clinician", "auditor"]})
    assert changed.json()["sessions_ended"] == 1
    assert (await portal.call("GET", "/ui/api/whoami", session=session)).json()["user"] is None
    bad = await portal.call("POST", "/ui/api/users/alice/roles", session=admin, csrf=csrf, json={"roles": "admin"})
    assert bad.status == 400
    unknown = await portal.call("POST", "/ui/api/users/alice/roles", session=admin, csrf=csrf, json={"roles": ["god"]})
    assert unknown.status == 400
    evil = await portal.call("POST", "/ui/api/users/..%2Fetc/roles", session=admin, csrf=csrf, json={"roles": ["admin"]})
    assert evil.status in (400, 404)


async def _concurrently(portal: Any, monkeypatch: pytest.MonkeyPatch,
                        attempts: list[tuple[str, str, str]]) -> tuple[int, Counter[int]]:
    """Run the sign-ins (user, code, client) all at once; every password check waits until no task can move
    on, so every attempt has passed the rate limit's check (or been refused) before the first one is decided.
    Returns (password checks performed, statuses)."""
    gate = threading.Event()
    checks = 0
    real = signin.password_ok

    def counted(credentials: Any, password: str) -> bool:
        nonlocal checks
        checks += 1
        gate.wait(30)
        return real(credentials, password)

    monkeypatch.setattr(signin, "password_ok", counted)
    statuses: Counter[int] = Counter()

    async def one(user: str, code: str, address: str) -> None:
        statuses[(await portal.login(user, code=code, client=address)).status] += 1

    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for user, code, address in attempts:
                    nursery.start_soon(one, user, code, address)
                await trio.testing.wait_all_tasks_blocked()
                gate.set()
    finally:
        gate.set()
    return checks, statuses


async def test_concurrent_guesses_get_no_more_checks_than_the_limit(store: UserStore,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """/tmp/review1/race_totp.py: 1000 parallel TOTP guesses with the right password got 1000 checks."""
    portal = make_portal(store)
    portal.user("root", "admin")
    n = 60
    # one name from many addresses: the per-user limit
    checks, statuses = await _concurrently(portal, monkeypatch,
                                           [("root", f"{i:06d}", f"10.3.{i // 200}.{i % 200}") for i in range(n)])
    assert checks <= PER_USER and statuses[429] == n - checks and statuses[401] + statuses[200] == checks
    # many names from one address: the per-address limit
    checks, statuses = await _concurrently(portal, monkeypatch,
                                           [(f"user{i}", "123456", "10.4.0.1") for i in range(n)])
    assert checks <= PER_CLIENT and statuses[429] == n - checks


async def test_sign_ins_in_flight_are_capped_overall(store: UserStore, monkeypatch: pytest.MonkeyPatch) -> None:
    portal = make_portal(store)
    n = MAX_IN_FLIGHT + 8  # every one a different name from a different address
    checks, statuses = await _concurrently(portal, monkeypatch,
                                           [(f"user{i}", "123456", f"10.5.{i // 200}.{i % 200}") for i in range(n)])
    assert checks == MAX_IN_FLIGHT and statuses[503] == n - MAX_IN_FLIGHT and statuses[401] == MAX_IN_FLIGHT
    # nothing stays reserved: the next attempt is checked
    assert (await portal.login("user0", code="123456", client="10.5.0.0")).status == 401


async def test_one_token_holder_cannot_push_out_other_sessions(store: UserStore,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """/tmp/review1/sessions_misc.py (b): 2000 token sign-ins by one user ended the admin's session."""
    monkeypatch.setattr(auth_module, "MAX_SESSIONS", 40)
    portal = make_portal(store)
    portal.user("root", "admin")
    admin, _ = await portal.signed_in("root")
    add_user(store, "mallory", ("read",), int(NOW * 1000))
    token, _ = issue_token(store, "mallory", "", int(NOW * 1000))
    hers = []
    for _ in range(100):
        reply = await portal.call("POST", "/ui/login", json={"token": token}, client="10.0.0.66")
        assert reply.status == 200
        hers.append(session_of(reply))
    assert (await portal.call("GET", "/ui/api/whoami", session=admin)).json()["user"] == "root"
    assert len(portal.app.auth.sessions_of("mallory")) == MAX_SESSIONS_PER_USER  # her oldest ended
    assert (await portal.call("GET", "/ui/api/whoami", session=hers[0])).json()["user"] is None
    assert (await portal.call("GET", "/ui/api/whoami", session=hers[-1])).json()["user"] == "mallory"


async def test_a_full_node_refuses_new_sessions_but_makes_room_from_ended_ones(store: UserStore,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth_module, "MAX_SESSIONS", 3)
    portal = make_portal(store, session_idle_seconds=600)
    for name in ("ann", "bob", "cat", "dan"):
        portal.user(name, "clinician")
    for name in ("ann", "bob", "cat"):
        await portal.signed_in(name)
    portal.clock.now += 30
    full = await portal.login("dan")
    assert full.status == 503 and full.headers["retry-after"]
    portal.clock.now += 600  # the three are idle past the limit: their places are free again
    assert (await portal.login("dan")).status == 200


async def test_background_refreshes_do_not_keep_a_session_alive(store: UserStore) -> None:
    """/tmp/review1/sessions_misc.py (a): an unattended page polling every few seconds kept its session for hours."""
    portal = make_portal(store, session_idle_seconds=60)
    portal.user("carol", "clinician")
    session, _ = await portal.signed_in("carol")
    background = {"X-Meshnode-Background": "1"}
    for _ in range(2):  # the page's timer: answered while the session lives, but not counted as activity
        portal.clock.now += 25
        reply = await portal.call("GET", "/ui/api/whoami", session=session, headers=background)
        assert reply.json()["user"] == "carol"
    portal.clock.now += 25  # 75 s after the person's last request: ended
    assert (await portal.call("GET", "/ui/api/whoami", session=session, headers=background)).json()["user"] is None
    # the person's own requests do count
    session, _ = await portal.signed_in("carol")
    for _ in range(4):
        portal.clock.now += 25
        assert (await portal.call("GET", "/ui/api/whoami", session=session)).json()["user"] == "carol"


def test_the_pages_timers_send_the_background_header() -> None:
    static = Path(__file__).parents[2] / "meshnode" / "web" / "static"
    timers = {path.name: path.read_text() for path in (static / "app.js", static / "requests" / "requests.js")}
    assert "setInterval(() => loadConflicts(true), 5000)" in timers["app.js"]
    assert "setInterval(() => refresh(true), REFRESH_MS)" in timers["requests.js"]
    assert 'headers["X-Meshnode-Background"] = "1"' in (static / "portal.js").read_text()
    for path in [*static.glob("*.js"), *static.glob("requests/*.js")]:  # no other timer polls the server
        assert path.read_text().count("setInterval(") == {"app.js": 1, "requests.js": 1}.get(path.name, 0), path


async def test_an_admin_cannot_change_their_own_roles(store: UserStore) -> None:
    """/tmp/review1/admin_self_grant.py: an admin gave themself reidentify and pacs from the page."""
    portal = make_portal(store)
    portal.user("root", "admin")
    portal.user("other", "admin")
    session, csrf = await portal.signed_in("root")
    for roles in (["admin", "pacs", "reidentify"], ["admin"], ["clinician"]):
        reply = await portal.call("POST", "/ui/api/users/root/roles", session=session, csrf=csrf, json={"roles": roles})
        assert reply.status == 403 and reply.json()["error"] == "own-roles"
    user = store.user("root")
    assert user is not None and user.roles == ("admin",)
    assert (await portal.call("GET", "/ui/api/whoami", session=session)).json()["user"] == "root"  # session kept
    alerts = [e for e in portal.events if e.action == "user-roles-self"]
    assert len(alerts) == 3 and alerts[0].actor == "user:root" and alerts[0].code == EventCode.SECURITY_ALERT
    # another admin may (a second person's decision)
    other, other_csrf = await portal.signed_in("other")
    reply = await portal.call("POST", "/ui/api/users/root/roles", session=other, csrf=other_csrf,
                              json={"roles": ["admin", "auditor"]})
    assert reply.status == 200 and store.user("root").roles == ("admin", "auditor")  # type: ignore[union-attr]
