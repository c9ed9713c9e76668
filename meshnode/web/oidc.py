"""OpenID Connect sign-on (authorization code + PKCE, state, nonce) against the trust's identity provider.

The flow, driven by meshnode.web.signin_web:
    start()     -> the provider's authorization URL (state, nonce, S256 code challenge) and the state; the
                   pending sign-in is kept here (at most MAX_PENDING, each PENDING_S) and bound to the browser
                   by a cookie holding the state
    finish()    -> exchanges the code (with the PKCE verifier and the client secret) at the token endpoint,
                   verifies the ID token: signature by a key of the provider's JWKS, iss, aud (and azp),
                   exp/iat, nonce; returns its claims
The HTTP calls (discovery, JWKS, token) are blocking httpx calls in a worker thread with a timeout. Authlib
builds the authorization request and the PKCE challenge; its JOSE library (joserfc) checks the ID token.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import trio
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri  # type: ignore[import-untyped]
from authlib.oauth2.rfc7636 import create_s256_code_challenge  # type: ignore[import-untyped]
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from meshnode.web.oidc_config import OidcConfig
from protocol.errors import LocalProtocolError, RemoteProtocolError

PENDING_S = 600.0
MAX_PENDING = 10_000
#: sign-ons in progress from one client address: more evicts that address's oldest (a flood of starts from
#: one address cannot push out everyone else's)
MAX_PENDING_PER_CLIENT = 50
HTTP_TIMEOUT_S = 10.0
MAX_RESPONSE = 1 << 20
ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
LEEWAY_S = 60
JWKS_REFRESH_S = 60.0


class SignOnRefused(LocalProtocolError):
    """The provider's answer (or the browser's callback) is not acceptable; the message says why."""

    code = 971
    name = "sign-on-refused"


@dataclass(frozen=True)
class Pending:
    nonce: str
    verifier: str
    created: float
    client: str = ""


def _get_json(url: str, **kwargs: Any) -> dict[str, Any]:
    with httpx.Client(timeout=HTTP_TIMEOUT_S, follow_redirects=False) as http:
        response = http.request(kwargs.pop("method", "GET"), url, **kwargs)
    if len(response.content) > MAX_RESPONSE:
        raise RemoteProtocolError(f"{url}: answer too large")
    if response.status_code != 200:
        raise SignOnRefused(f"the identity provider answered HTTP {response.status_code} at {url}")
    try:
        value = response.json()
    except ValueError:
        raise RemoteProtocolError(f"{url}: answer is not JSON") from None
    if not isinstance(value, dict):
        raise RemoteProtocolError(f"{url}: answer is not a JSON object")
    return value


class OidcClient:
    def __init__(self, config: OidcConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self._pending: dict[str, Pending] = {}
        self._metadata: dict[str, Any] | None = None
        self._keys: KeySet | None = None
        self._keys_at = 0.0

    async def metadata(self) -> dict[str, Any]:
        if self._metadata is None:
            url = self.config.issuer + "/.well-known/openid-configuration"
            try:
                meta = await trio.to_thread.run_sync(_get_json, url)
            except httpx.HTTPError as exc:
                raise SignOnRefused(f"the identity provider cannot be reached: {exc}") from None
            if meta.get("issuer") != self.config.issuer:
                raise SignOnRefused(f"the provider's discovery document names issuer {meta.get('issuer')!r}")
            for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                if not isinstance(meta.get(key), str):
                    raise SignOnRefused(f"the provider's discovery document has no {key}")
            self._metadata = meta
        return self._metadata

    async def _key_set(self, refresh: bool) -> KeySet:
        now = self.clock()
        if self._keys is None or (refresh and now - self._keys_at > JWKS_REFRESH_S):
            meta = await self.metadata()
            try:
                jwks = await trio.to_thread.run_sync(_get_json, str(meta["jwks_uri"]))
                self._keys = KeySet.import_key_set(jwks)  # type: ignore[arg-type]
            except (httpx.HTTPError, JoseError, ValueError, TypeError) as exc:
                raise SignOnRefused(f"the provider's keys (JWKS) cannot be read: {exc}") from None
            self._keys_at = now
        return self._keys

    async def start(self, client: str = "") -> tuple[str, str]:
        """(the authorization URL to send the browser to, the state that binds it)."""
        meta = await self.metadata()
        now = self.clock()
        mine = [k for k, v in self._pending.items() if v.client == client]
        for key in mine[:max(0, len(mine) - MAX_PENDING_PER_CLIENT + 1)]:
            del self._pending[key]
        if len(self._pending) >= MAX_PENDING:
            self._pending = {k: v for k, v in self._pending.items() if v.created + PENDING_S > now}
            while len(self._pending) >= MAX_PENDING:
                self._pending.pop(next(iter(self._pending)))
        state, nonce, verifier = (secrets.token_urlsafe(32) for _ in range(3))
        self._pending[state] = Pending(nonce, verifier + secrets.token_urlsafe(16), now, client)
        url = prepare_grant_uri(str(meta["authorization_endpoint"]), self.config.client_id, "code",
                                redirect_uri=self.config.redirect_url, scope=" ".join(self.config.scopes),
                                state=state, nonce=nonce,
                                code_challenge=create_s256_code_challenge(self._pending[state].verifier),
                                code_challenge_method="S256")
        return str(url), state

    def take(self, state: str, cookie_state: str) -> Pending:
        """The pending sign-in of a callback: its state must be one this node issued, unused, recent, and the
        one this browser's cookie holds (so a callback URL planted in someone else's browser does nothing)."""
        if not state or not cookie_state or not secrets.compare_digest(state.encode(), cookie_state.encode()):
            raise SignOnRefused("the sign-on state does not match this browser's (start again)")
        pending = self._pending.pop(state, None)
        if pending is None or pending.created + PENDING_S <= self.clock():
            raise SignOnRefused("unknown, used or expired sign-on state (start again)")
        return pending

    async def finish(self, code: str, pending: Pending) -> dict[str, Any]:
        """Exchange the code and return the verified ID token's claims."""
        if not code or len(code) > 2048:
            raise SignOnRefused("no authorization code")
        meta = await self.metadata()
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": self.config.redirect_url,
                "code_verifier": pending.verifier}
        try:
            tokens = await trio.to_thread.run_sync(lambda: _get_json(
                str(meta["token_endpoint"]), method="POST", data=form,
                auth=(self.config.client_id, self.config.client_secret)))
        except httpx.HTTPError as exc:
            raise SignOnRefused(f"the token endpoint cannot be reached: {exc}") from None
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str):
            raise SignOnRefused("the token response has no ID token")
        return await self.verify_id_token(id_token, pending.nonce)

    async def verify_id_token(self, id_token: str, nonce: str) -> dict[str, Any]:
        if len(id_token) > 16384:
            raise SignOnRefused("ID token too large")
        decoded = None
        for refresh in (False, True):  # an unknown key: the provider may have rotated; read its JWKS again
            try:
                decoded = jwt.decode(id_token, await self._key_set(refresh), algorithms=ALGORITHMS)
                break
            except JoseError as exc:
                if refresh:
                    raise SignOnRefused(f"ID token signature not verified: {exc.error}") from None
            except ValueError as exc:
                raise SignOnRefused(f"malformed ID token: {exc}") from None
        if decoded is None:
            raise SignOnRefused("ID token not verified")
        claims = dict(decoded.claims)
        registry = jwt.JWTClaimsRegistry(now=int(self.clock()), leeway=LEEWAY_S,
                                         iss={"essential": True, "value": self.config.issuer},
                                         aud={"essential": True, "value": self.config.client_id},
                                         exp={"essential": True}, iat={"essential": True},
                                         sub={"essential": True}, nonce={"essential": True, "value": nonce})
        try:
            registry.validate(claims)
        except JoseError as exc:
            raise SignOnRefused(f"ID token refused: {exc.error} {exc.description or ''}".strip()) from None
        aud = claims.get("aud")
        if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != self.config.client_id:
            raise SignOnRefused("ID token for several audiences without this client as azp")
        return claims
