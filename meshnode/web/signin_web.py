"""The portal's sign-in routes: password + TOTP, an API token (machines, tests), OpenID Connect; sign-out.

    GET  /ui/login            the sign-in page (static/login.html)
    GET  /ui/api/signin       which methods this node offers (the single sign-on button's label)
    POST /ui/login            JSON {user, password, code} or {token} -> session cookie (HttpOnly, SameSite=Strict,
                              Secure on https) and the session's anti-CSRF token
    POST /ui/logout           ends the session (needs the anti-CSRF token like every session POST)
    GET  /ui/oidc/start       -> 302 to the identity provider (state, nonce, PKCE)
    GET  /ui/oidc/callback    the provider's answer -> session, then the portal

Every sign-in and sign-out is audited (110114) with the user's identity and the method; every failure
with the attempted user name and the client address. Failures are rate-limited per user name and per
address (meshnode.web.login_limit): beyond the limit, 429 with Retry-After, before any password is checked.
An attempt takes its place in the count before its password, code, token or provider answer is checked and
gives it back when decided, so concurrent attempts cannot all slip past the limit (at most the limit's
number of checks, however many arrive at once); at most login_limit.MAX_IN_FLIGHT attempts are checked at
once overall (beyond: 503 with Retry-After).
"""

from __future__ import annotations

import html
import logging
import math
from typing import Any

import trio
from starlette.requests import Request
from starlette.responses import Response

from meshnode.storage.audit import AuditEvent, EventCode, Outcome
from meshnode.storage.users import User, check_display_name, check_email, check_user_name
from meshnode.web import signin
from meshnode.web.app import Route, route
from meshnode.web.auth import SESSION_COOKIE, Authenticator, Principal, SessionsFull
from meshnode.web.http import HttpError, bytes_response, client, form, json_response, principal, query
from meshnode.web.login_limit import Busy, LoginLimiter
from meshnode.web.oidc import OidcClient, SignOnRefused
from meshnode.web.services import WebServices, actor
from protocol.errors import LocalProtocolError, MeshError

log = logging.getLogger(__name__)

OIDC_COOKIE = "meshnode_oidc"
MAX_LOGIN_BODY = 4096
#: Argon2 verifications at once (each takes tens of ms and 64 MiB)
HASHING_THREADS = 2
#: after the provider's redirect (a cross-site navigation the SameSite=Strict cookie is not sent on), this
#: same-site page moves the browser on, so the first portal request carries the new session cookie
_ONWARD = (b'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="0;url=/ui/">'
           b"<title>Signed in</title></head><body><main><p>Signed in. <a href=\"/ui/\">Continue to the portal</a>"
           b"</p></main></body></html>")


def _safe_name(name: str) -> str:
    """The attempted user name as it may appear in the audit log."""
    try:
        return check_user_name(name)
    except LocalProtocolError:
        return repr(name[:64])


class SignInWeb:
    def __init__(self, services: WebServices, auth: Authenticator, oidc: OidcClient | None = None,
                 limiter: LoginLimiter | None = None, pages: Any = None) -> None:
        self.s = services
        self.auth = auth
        self.oidc = oidc
        self.limiter = limiter or LoginLimiter(services.config.login_failures_per_user,
                                               services.config.login_failures_per_address)
        self.pages = pages  # the Ui, for serving login.html
        self._hashing = trio.CapacityLimiter(HASHING_THREADS)

    def routes(self) -> list[Route]:
        return [
            route("GET", "/ui/login", self._page, "public", "ui-login-page"),
            route("GET", "/ui/api/signin", self._methods, "public", "ui-signin-methods"),
            route("POST", "/ui/login", self._login, "public", "ui-login"),
            route("POST", "/ui/logout", self._logout, "public", "ui-logout"),
            route("GET", "/ui/oidc/start", self._oidc_start, "public", "ui-oidc-start"),
            route("GET", "/ui/oidc/callback", self._oidc_callback, "public", "ui-oidc-callback"),
        ]

    async def _page(self, request: Request) -> Response:
        if self.pages is None:
            raise HttpError(404, "no sign-in page")
        response: Response = self.pages.html("login.html")
        return response

    async def _methods(self, request: Request) -> Response:
        return json_response(200, {"password": True, "oidc": self.oidc.config.label if self.oidc else None})

    # -- helpers ----------------------------------------------------------------------------
    def _secure(self, request: Request) -> str:
        """Secure on https, and behind a TLS-terminating proxy ([http] public_url https://...)."""
        https = request.url.scheme == "https" or self.s.config.public_url.startswith("https://")
        return "; Secure" if https else ""

    def _cookie(self, request: Request, session: str) -> str:
        secure = self._secure(request)
        return (f"{SESSION_COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict; "
                f"Max-Age={self.s.config.session_hours * 3600}{secure}")

    async def _refuse(self, request: Request, name: str, method: str, reason: str, status: int = 401,
                      message: str = "wrong user name, password or code") -> HttpError:
        self.limiter.failed(name, client(request), self.s.clock())
        await self.s.audit(AuditEvent(EventCode.USER_AUTHENTICATION, "ui-login", Outcome.MINOR_FAILURE,
                                      actor=f"user:{_safe_name(name)}" if name else f"http:{client(request)}",
                                      detail=f"{method} from {client(request)} refused: {reason}"[:300]))
        return HttpError(status, message)

    def _reserve(self, request: Request, name: str) -> None:
        """Take this attempt's place in the rate limit before checking anything (`release` it afterwards)."""
        try:
            wait = self.limiter.reserve(name, client(request), self.s.clock())
        except Busy:
            raise HttpError(503, "too many sign-ins at once; try again in a moment",
                            headers={"retry-after": "1"}, code="rate-limited") from None
        if wait > 0:
            raise HttpError(429, f"too many failed sign-ins; try again in {math.ceil(wait)} s",
                            headers={"retry-after": str(math.ceil(wait))}, code="rate-limited")

    def _throttle(self, request: Request, name: str) -> None:
        wait = self.limiter.retry_after(name, client(request), self.s.clock())
        if wait > 0:
            raise HttpError(429, f"too many failed sign-ins; try again in {math.ceil(wait)} s",
                            headers={"retry-after": str(math.ceil(wait))}, code="rate-limited")

    async def _signed_in(self, request: Request, p: Principal, detail: str) -> str:
        old = request.cookies.get(SESSION_COOKIE)
        if old:
            self.auth.close_session(old)  # never carry a session ID over a sign-in (fixation)
        try:
            session = self.auth.open_session(p, self.s.config.session_hours)
        except SessionsFull:
            log.warning("sign-in of %s refused: every session place is in use", p.user)
            raise HttpError(503, "too many people are signed in to this node; try again later",
                            headers={"retry-after": "60"}) from None
        self.limiter.succeeded(p.user)
        await self.s.audit(AuditEvent(EventCode.USER_AUTHENTICATION, "ui-login", actor=f"user:{p.user}",
                                      detail=f"{p.method} from {client(request)}{detail}"[:300]))
        return session

    # -- password + TOTP, or token ----------------------------------------------------------
    async def _login(self, request: Request) -> Response:
        # JSON only: another site's HTML form (urlencoded or text/plain, no CORS preflight) must not be able to
        # sign a browser in as the attacker (login CSRF); a cross-site JSON request needs a preflight never granted
        if request.headers.get("content-type", "").split(";", 1)[0].strip().lower() != "application/json":
            raise HttpError(415, "send the sign-in as JSON (Content-Type: application/json)")
        fields = await form(request, MAX_LOGIN_BODY)
        token = fields.get("token", "").strip()
        name = fields.get("user", "").strip().lower()
        who = "" if token else name
        self._reserve(request, who)
        try:
            return await self._check_login(request, fields, token, name)
        finally:
            self.limiter.release(who, client(request))

    async def _check_login(self, request: Request, fields: dict[str, str], token: str, name: str) -> Response:
        if token:
            p = await self.auth.token(token)
            if p is None:
                raise await self._refuse(request, "", "token", "unknown, revoked or expired token",
                                         message="unknown, revoked or expired token")
            detail = f" (token {p.token_id})"
        else:
            password, code = fields.get("password", ""), fields.get("code", "").strip()
            if not name or not password or not code:
                raise HttpError(400, "give user, password and code (or a token)")
            now = self.s.clock()
            store = self.auth.store
            try:
                known = name if len(name) <= 64 else ""
                found, credentials = await self.auth.run_sync(
                    lambda: (store.user(known), store.credentials(known)) if known else (None, None))
                # Argon2 on its own threads: sign-ins never hold up the user store's thread (token checks)
                matched = await trio.to_thread.run_sync(signin.password_ok, credentials, password,
                                                        limiter=self._hashing)
                step = signin.decide(found, credentials, matched, code, now)
                user = await self.auth.run_sync(lambda: signin.use_step(store, found, step))
            except signin.SignInRefused as exc:
                raise await self._refuse(request, name, "password+totp", exc.reason) from None
            p = Principal(user.name, user.roles, "session", method="password+totp")
            detail = ""
        session = await self._signed_in(request, p, detail)
        return json_response(200, {"user": p.user, "roles": list(p.roles), "csrf": self.auth.csrf(session)},
                             headers={"set-cookie": self._cookie(request, session)})

    async def _logout(self, request: Request) -> Response:
        session = request.cookies.get(SESSION_COOKIE)
        p = principal(request)
        if session:
            self.auth.close_session(session)
        if p is not None:
            await self.s.audit(AuditEvent(EventCode.USER_AUTHENTICATION, "ui-logout", actor=actor(request),
                                          detail=f"{p.method} session from {client(request)}"))
        return json_response(200, {"user": None}, headers={
            "set-cookie": f"{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"})

    # -- OpenID Connect ---------------------------------------------------------------------
    def _oidc_client(self) -> OidcClient:
        if self.oidc is None:
            raise HttpError(404, "single sign-on is not configured on this node ([http.oidc])")
        return self.oidc

    async def _oidc_start(self, request: Request) -> Response:
        oidc = self._oidc_client()
        self._throttle(request, "")
        try:
            url, state = await oidc.start(client(request))
        except MeshError as exc:
            log.warning("single sign-on cannot start: %s", exc)
            raise HttpError(503, "the identity provider cannot be reached; try again or sign in with a password")
        secure = self._secure(request)
        # SameSite=Lax: it must come back on the provider's top-level redirect to the callback
        return bytes_response(302, b"", "text/plain", {
            "location": url, "cache-control": "no-store",
            "set-cookie": f"{OIDC_COOKIE}={state}; Path=/ui/oidc/; HttpOnly; SameSite=Lax; Max-Age=600{secure}"})

    async def _oidc_callback(self, request: Request) -> Response:
        oidc = self._oidc_client()
        params = {k: v[-1] for k, v in query(request).items() if v}
        self._reserve(request, "")
        try:
            return await self._check_oidc(request, oidc, params)
        finally:
            self.limiter.release("", client(request))

    async def _check_oidc(self, request: Request, oidc: OidcClient, params: dict[str, str]) -> Response:
        try:
            try:
                if "error" in params:
                    raise SignOnRefused(f"the provider answered {params['error'][:60]!r}")
                pending = oidc.take(params.get("state", ""), request.cookies.get(OIDC_COOKIE, ""))
                claims = await oidc.finish(params.get("code", ""), pending)
                user = await self._oidc_user(claims)
            except (SignOnRefused, LocalProtocolError) as exc:
                raise await self._refuse(request, "", "oidc", str(exc), 403,
                                         f"single sign-on refused: {exc}") from None
            except MeshError as exc:
                raise await self._refuse(request, "", "oidc", str(exc), 502, "the identity provider's answer "
                                         "is not usable; see the node's log") from None
        except HttpError as refusal:
            if "text/html" in request.headers.get("accept", ""):  # a person's browser: a page, not JSON
                return _refusal_page(refusal)
            raise
        p = Principal(user.name, user.roles, "session", method="oidc")
        session = await self._signed_in(request, p, f" (sub {str(claims.get('sub'))[:80]})")
        # (the state cookie is left to expire: its state is used up here)
        return bytes_response(200, _ONWARD, "text/html; charset=utf-8", {
            "cache-control": "no-store", "set-cookie": self._cookie(request, session),
            "content-security-policy": "default-src 'none'; frame-ancestors 'none'"})

    async def _oidc_user(self, claims: dict[str, Any]) -> User:
        """The local user of a verified ID token: created on the first sign-in, roles from the claims each
        time; a disabled user, one with no mapped role, or a local password account of that name is refused.

        The account belongs to the provider's identity (issuer and `sub`, stored on its first sign-on), not
        to the user name claim, which a provider may give to someone else later (a name reused after a
        leaver): a sign-on with another `sub` for the name is refused and audited as a security alert. The
        email claim is taken only when the provider says it is verified (`email_verified` true)."""
        config = self._oidc_client().config
        raw = claims.get(config.username_claim)
        if not isinstance(raw, str):
            raise SignOnRefused(f"the ID token has no {config.username_claim!r} claim")
        name = check_user_name(raw.strip().lower())
        roles = config.roles_for(claims.get(config.role_claim))
        if not roles:
            raise SignOnRefused(f"no role for {name!r}: the {config.role_claim!r} claim maps to none")
        display = check_display_name(str(claims.get(config.display_name_claim) or ""))
        try:
            email = check_email(str(claims.get(config.email_claim) or "")) \
                if claims.get("email_verified") is True else ""
        except LocalProtocolError:
            email = ""
        subject = f"{claims.get('iss')} {claims.get('sub')}"  # both essential claims, checked by OidcClient
        now_ms = int(self.s.clock() * 1000)

        def update() -> User:
            store = self.auth.store
            user = store.user(name)
            if user is None:
                store.add_user(User(name, roles, now_ms, display_name=display, email=email, source="oidc"))
            elif user.source != "oidc":
                raise SignOnRefused(f"{name!r} is a local account (password): not taken over by single sign-on")
            elif user.disabled:
                raise SignOnRefused(f"user {name!r} is disabled")
            if store.bind_subject(name, subject) != subject:
                raise _OtherSubject(name)
            if user is not None:
                if user.roles != roles:
                    store.set_roles(name, roles)
                if (user.display_name, user.email) != (display, email):
                    store.set_profile(name, display, email)
            found = store.user(name)
            if found is None:
                raise SignOnRefused(f"user {name!r} vanished")
            return found

        try:
            return await self.auth.run_sync(update)
        except _OtherSubject:
            await self.s.audit(AuditEvent(
                EventCode.SECURITY_ALERT, "ui-oidc-other-subject", Outcome.SERIOUS_FAILURE, actor=f"user:{name}",
                detail=f"single sign-on for {name!r} with sub {str(claims.get('sub'))[:80]!r}, not the identity "
                       "the account was created by: refused"[:300]))
            raise SignOnRefused(f"{name!r} belongs to another identity at the provider") from None


class _OtherSubject(Exception):
    """A sign-on for an existing single sign-on account by another identity (issuer and sub)."""


def _refusal_page(refusal: HttpError) -> Response:
    body = ('<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Sign-in refused</title></head>'
            f"<body><main><h1>Sign-in refused</h1><p>{html.escape(refusal.message)}</p>"
            '<p><a href="/ui/login">Back to the sign-in page</a></p></main></body></html>')
    return bytes_response(refusal.status, body.encode(), "text/html; charset=utf-8", {
        "cache-control": "no-store", "content-security-policy": "default-src 'none'; frame-ancestors 'none'"})
