"""The OIDC client's ID token checks, with tokens signed here: the provider's key set is the client's (set
directly, no HTTP), every token is well formed, and each one breaks one rule: signature by another key,
'none' algorithm, wrong issuer, wrong audience, several audiences without azp, expired, issued in the future,
another nonce, no nonce. (The whole flow against a real provider: tests/e2e/test_oidc_signon.py.)"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

from meshnode.web.oidc import MAX_PENDING_PER_CLIENT, OidcClient, Pending, SignOnRefused
from meshnode.web.oidc_config import OidcConfig

ISSUER = "https://login.example.nhs.uk"
NOW = 1_767_225_600
KEY = RSAKey.generate_key(2048, parameters={"kid": "k1"})
OTHER = RSAKey.generate_key(2048, parameters={"kid": "k1"})  # same kid, another key: a forger's


def client() -> OidcClient:
    config = OidcConfig(issuer=ISSUER, client_id="meshnode", client_secret="s", redirect_url="https://n/cb",
                        roles=(("x", ("clinician",)),))
    c = OidcClient(config, clock=lambda: float(NOW))
    c._metadata = {"issuer": ISSUER, "authorization_endpoint": ISSUER + "/auth", "token_endpoint": ISSUER + "/t",
                   "jwks_uri": ISSUER + "/jwks"}
    c._keys = KeySet([RSAKey.import_key(KEY.as_dict(private=False))])
    c._keys_at = float(NOW)
    return c


def token(key: RSAKey = KEY, **changes: Any) -> str:
    claims = {"iss": ISSUER, "aud": "meshnode", "sub": "u1", "iat": NOW - 10, "exp": NOW + 300, "nonce": "n1",
              "preferred_username": "alice"}
    claims.update(changes)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode({"alg": "RS256", "kid": "k1"}, claims, key)


async def test_a_good_token_is_accepted() -> None:
    claims = await client().verify_id_token(token(), "n1")
    assert claims["preferred_username"] == "alice"


@pytest.mark.parametrize("bad, why", [
    (dict(iss="https://evil.example"), "Invalid claim: 'iss'"),
    (dict(aud="another-client"), "Invalid claim: 'aud'"),
    (dict(aud=["meshnode", "another-client"]), "without this client as azp"),
    (dict(exp=NOW - 120), "expired"),
    (dict(iat=NOW + 3600), "issued in the future"),
    (dict(nonce="n2"), "Invalid claim: 'nonce'"),
    (dict(nonce=None), "Missing claim: 'nonce'"),
    (dict(sub=None), "Missing claim: 'sub'"),
])
async def test_claims_that_break_a_rule_are_refused(bad: dict[str, Any], why: str) -> None:
    with pytest.raises(SignOnRefused) as refused:
        await client().verify_id_token(token(**bad), "n1")
    assert why in str(refused.value)


async def test_a_signature_by_another_key_is_refused() -> None:
    c = client()
    c._keys_at = float(NOW)  # no JWKS refresh within JWKS_REFRESH_S: the forged key is not fetched for
    with pytest.raises(SignOnRefused, match="signature"):
        await c.verify_id_token(token(OTHER), "n1")


async def test_unsigned_and_malformed_tokens_are_refused() -> None:
    header = "eyJhbGciOiJub25lIn0"  # {"alg":"none"}
    body = base64.urlsafe_b64encode(json.dumps({"iss": ISSUER, "aud": "meshnode", "sub": "u", "nonce": "n1",
                                                "exp": NOW + 300, "iat": NOW}).encode()).rstrip(b"=").decode()
    for bad in (f"{header}.{body}.", "not.a.jwt", "x" * 20000, ""):
        with pytest.raises(SignOnRefused):
            await client().verify_id_token(bad, "n1")


def test_state_must_match_the_browser_and_be_fresh() -> None:
    c = client()
    c._pending["s1"] = Pending("n", "v", float(NOW))
    with pytest.raises(SignOnRefused):
        c.take("s1", "s2")
    with pytest.raises(SignOnRefused):
        c.take("s1", "")
    assert c.take("s1", "s1").nonce == "n"
    with pytest.raises(SignOnRefused):
        c.take("s1", "s1")  # used
    c._pending["s2"] = Pending("n", "v", float(NOW - 601))
    with pytest.raises(SignOnRefused, match="expired"):
        c.take("s2", "s2")


async def test_a_flood_of_starts_from_one_address_does_not_push_out_others() -> None:
    c = client()
    _, theirs = await c.start("10.0.0.5")
    for _ in range(MAX_PENDING_PER_CLIENT * 3):
        await c.start("10.6.6.6")
    assert sum(1 for p in c._pending.values() if p.client == "10.6.6.6") == MAX_PENDING_PER_CLIENT
    assert c.take(theirs, theirs).client == "10.0.0.5"
