"""Single sign-on against a real OpenID Connect provider (node-oidc-provider, started by the test): the
portal's OIDC client (in process, the real WebApp) signs users in through the provider's own pages, creates
their local record with roles from the claims, and refuses forged, replayed and injected callbacks."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from meshnode.storage.audit import EventCode, Outcome
from meshnode.storage.sqlite_users import SqliteUserStore
from meshnode.storage.users import User
from meshnode.web.oidc import OidcClient
from meshnode.web.oidc_config import OidcConfig
from meshnode.web.signin_web import OIDC_COOKIE
from tests.e2e.oidc import CLIENT_ID, SECRET, Provider, oidc_provider, sign_in_at_provider
from tests.meshnode.web.asgi import Reply, call
from tests.meshnode.web.portal_app import NOW, Portal, make_portal

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REDIRECT = "http://127.0.0.1:8731/ui/oidc/callback"


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    with oidc_provider(REDIRECT) as p:
        yield p


def config(issuer: str, client_id: str = CLIENT_ID) -> OidcConfig:
    return OidcConfig(issuer=issuer, client_id=client_id, client_secret=SECRET, redirect_url=REDIRECT,
                      role_claim="roles", scopes=("openid", "profile", "email", "roles"),
                      roles=(("imaging-clinicians", ("clinician",)), ("imaging-pacs", ("pacs",)),
                             ("mesh-admins", ("admin",))))


def portal_for(provider: Provider, tmp_path: Path) -> Portal:
    # the OIDC client checks the provider's tokens against real time (its own clock); the portal's is NOW
    return make_portal(SqliteUserStore(tmp_path / "node.db"), OidcClient(config(provider.issuer)))


async def start(portal: Portal) -> tuple[str, str]:
    """(the provider's authorization URL, the state cookie the node set)."""
    reply = await portal.call("GET", "/ui/oidc/start")
    assert reply.status == 302, reply.body
    cookie = reply.headers["set-cookie"]
    assert cookie.startswith(f"{OIDC_COOKIE}=") and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    return reply.headers["location"], cookie.split(";", 1)[0].split("=", 1)[1]


async def callback(portal: Portal, url: str, state_cookie: str) -> Reply:
    query = urllib.parse.urlsplit(url).query
    headers = {"Cookie": f"{OIDC_COOKIE}={state_cookie}"} if state_cookie else {}
    return await call(portal.app, "GET", "/ui/oidc/callback", query=query, headers=headers)


async def at_provider(authorize: str, login: str) -> str:
    return await trio.to_thread.run_sync(sign_in_at_provider, authorize, login, REDIRECT)


def session_cookie(reply: Reply) -> str:
    name, _, value = reply.headers["set-cookie"].split(";", 1)[0].partition("=")
    assert name == "meshnode_session"
    return value


async def test_sign_on_creates_the_user_with_roles_from_claims(provider: Provider, tmp_path: Path) -> None:
    portal = portal_for(provider, tmp_path)
    authorize, state = await start(portal)
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(authorize).query)
    assert query["code_challenge_method"] == ["S256"] and query["nonce"] and query["state"] == [state]
    reply = await callback(portal, await at_provider(authorize, "pacs.lead"), state)
    assert reply.status == 200, reply.body
    assert b"/ui/" in reply.body
    user = portal.store.user("pacs.lead")
    assert user is not None and user.source == "oidc" and set(user.roles) == {"pacs", "admin"}
    assert user.display_name == "Sam Patel" and user.email == "sam.patel@example.nhs.uk"
    signed_in = [e for e in portal.events if e.action == "ui-login"]
    assert signed_in[-1].actor == "user:pacs.lead" and signed_in[-1].detail.startswith("oidc")
    # the session works and is an OIDC one
    cookie = session_cookie(reply)
    who = await portal.call("GET", "/ui/api/whoami", session=cookie)
    assert who.json()["user"] == "pacs.lead" and who.json()["method"] == "oidc" and "admin" in who.json()["permissions"]
    # roles come from the claims each time: an admin's local change is overwritten at the next sign-on
    portal.store.set_roles("pacs.lead", ("auditor",))
    authorize, state = await start(portal)
    assert (await callback(portal, await at_provider(authorize, "pacs.lead"), state)).status == 200
    user = portal.store.user("pacs.lead")
    assert user is not None and set(user.roles) == {"pacs", "admin"}


async def test_forged_replayed_and_injected_callbacks_are_refused(provider: Provider, tmp_path: Path) -> None:
    portal = portal_for(provider, tmp_path)
    authorize, state = await start(portal)
    back = await at_provider(authorize, "dr.jones")
    # no state cookie (a callback URL planted in another browser), or another flow's cookie: refused
    assert (await callback(portal, back, "")).status == 403
    other_authorize, other_state = await start(portal)
    assert (await callback(portal, back, other_state)).status == 403
    # a forged state value with a matching cookie: not one this node issued
    forged = back.replace(f"state={state}", "state=forged-state-value")
    assert (await callback(portal, forged, "forged-state-value")).status == 403
    # code injection: the code of one flow with another flow's state (another nonce and PKCE verifier)
    injected = back.replace(f"state={state}", f"state={other_state}")
    assert (await callback(portal, injected, other_state)).status == 403
    assert portal.store.user("dr.jones") is None
    # the genuine callback, once; replayed, refused
    authorize, state = await start(portal)
    back = await at_provider(authorize, "dr.jones")
    assert (await callback(portal, back, state)).status == 200
    assert (await callback(portal, back, state)).status == 403
    # an error the "provider" sends back is shown as text, never as markup
    page = await call(portal.app, "GET", "/ui/oidc/callback", query="error=%3Cscript%3Ealert(1)%3C/script%3E",
                      headers={"Accept": "text/html"})
    assert page.status == 403 and b"<script>" not in page.body and b"&lt;script&gt;" in page.body
    refusals = [e for e in portal.events if e.code is EventCode.USER_AUTHENTICATION and e.outcome is Outcome.MINOR_FAILURE]
    assert len(refusals) == 6 and all("oidc" in e.detail for e in refusals)


async def test_no_role_disabled_and_local_accounts_are_refused(provider: Provider, tmp_path: Path) -> None:
    portal = portal_for(provider, tmp_path)
    authorize, state = await start(portal)
    back = await at_provider(authorize, "visitor")
    reply = await callback(portal, back, state)
    assert reply.status == 403 and "no role" in reply.json()["message"]
    # a browser gets a page saying so (the text escaped), with the way back
    page = await call(portal.app, "GET", "/ui/oidc/callback", query=urllib.parse.urlsplit(back).query + "&x=<b>",
                      headers={"Accept": "text/html", "Cookie": f"{OIDC_COOKIE}={state}"})
    assert page.status == 403 and page.headers["content-type"].startswith("text/html")
    assert b"Sign-in refused" in page.body and b'href="/ui/login"' in page.body
    assert portal.store.user("visitor") is None
    authorize, state = await start(portal)
    assert (await callback(portal, await at_provider(authorize, "dr.jones"), state)).status == 200
    # another identity at the provider (another sub) given the same user name: refused, audited, nothing changed
    before = portal.store.user("dr.jones")
    authorize, state = await start(portal)
    reply = await callback(portal, await at_provider(authorize, "impostor"), state)
    assert reply.status == 403 and "another identity" in reply.json()["message"]
    assert portal.store.user("dr.jones") == before and before is not None and before.roles == ("clinician",)
    assert [e.actor for e in portal.events if e.code is EventCode.SECURITY_ALERT] == ["user:dr.jones"]
    portal.store.disable_user("dr.jones")
    authorize, state = await start(portal)
    assert (await callback(portal, await at_provider(authorize, "dr.jones"), state)).status == 403
    # a local password account is never taken over by a provider account of the same name
    portal.store.add_user(User("pacs.lead", ("clinician",), int(NOW * 1000)))
    authorize, state = await start(portal)
    reply = await callback(portal, await at_provider(authorize, "pacs.lead"), state)
    assert reply.status == 403 and "local account" in reply.json()["message"]


async def test_wrong_client_secret_is_refused_by_the_real_provider(provider: Provider, tmp_path: Path) -> None:
    bad = OidcConfig(**{**config(provider.issuer).__dict__, "client_secret": "not-the-secret"})
    portal = make_portal(SqliteUserStore(tmp_path / "node.db"), OidcClient(bad))
    authorize, state = await start(portal)
    reply = await callback(portal, await at_provider(authorize, "dr.jones"), state)
    assert reply.status == 403 and "HTTP 401" in reply.json()["message"]
