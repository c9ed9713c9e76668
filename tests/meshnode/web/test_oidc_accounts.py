"""Single sign-on accounts belong to the provider's identity (issuer and sub), not to the user name claim: a
later sign-on with another `sub` for the same preferred_username (a name reused, or an identity renamed to
another's) is refused and audited, and changes nothing; an unverified email claim is ignored. Both stores.
(The whole flow against a real provider: tests/e2e/test_oidc_signon.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from meshnode.storage.audit import AuditEvent, EventCode
from meshnode.storage.sqlite_users import SqliteUserStore
from meshnode.storage.users import MemoryUserStore, UserStore
from meshnode.web.auth import Authenticator
from meshnode.web.config import HttpConfig
from meshnode.web.oidc import OidcClient, SignOnRefused
from meshnode.web.oidc_config import OidcConfig
from meshnode.web.services import WebServices
from meshnode.web.signin_web import SignInWeb

ISSUER = "https://idp.example"


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> UserStore:
    return MemoryUserStore() if request.param == "memory" else SqliteUserStore(tmp_path / "node.db")


def _web(store: UserStore) -> tuple[SignInWeb, list[AuditEvent]]:
    events: list[AuditEvent] = []

    async def audit(e: AuditEvent) -> None:
        events.append(e)

    config = OidcConfig(ISSUER, "mesh", "s", "https://node/ui/oidc/callback",
                        roles=(("imaging-clinicians", ("clinician",)), ("mesh-admins", ("admin",))))
    services = WebServices(HttpConfig(listen="127.0.0.1:0"), "RGT", None, None, audit)  # type: ignore[arg-type]
    return SignInWeb(services, Authenticator(store), OidcClient(config)), events


def _claims(sub: str, **more: Any) -> dict[str, Any]:
    return {"iss": ISSUER, "sub": sub, "preferred_username": "j.smith", "roles": ["mesh-admins"],
            "name": "Jane Smith", "email": "jane.smith@trust.nhs.uk", "email_verified": True, **more}


async def test_another_subject_with_the_same_name_is_refused(store: UserStore) -> None:
    web, events = _web(store)
    first = await web._oidc_user(_claims("11111111-aaaa"))
    assert first.roles == ("admin",) and first.email == "jane.smith@trust.nhs.uk"
    again = await web._oidc_user(_claims("11111111-aaaa", name="Jane Smith-Jones"))  # the same identity: fine
    assert again.display_name == "Jane Smith-Jones"
    with pytest.raises(SignOnRefused, match="another identity"):
        await web._oidc_user(_claims("22222222-bbbb", preferred_username="J.Smith ", roles=["imaging-clinicians"],
                                     name="John Smith", email="john.smith@trust.nhs.uk"))
    assert store.user("j.smith") == again  # nothing changed: roles, name, email
    alert = [e for e in events if e.code == EventCode.SECURITY_ALERT]
    assert len(alert) == 1 and alert[0].actor == "user:j.smith" and "22222222-bbbb" in alert[0].detail
    # the same sub from another issuer is another identity too
    with pytest.raises(SignOnRefused):
        await web._oidc_user(_claims("11111111-aaaa", iss="https://other-idp.example"))


async def test_an_unverified_email_is_ignored(store: UserStore) -> None:
    web, _ = _web(store)
    for verified in (False, "true", None):
        user = await web._oidc_user(_claims("11111111-aaaa", email="ceo@trust.nhs.uk", email_verified=verified))
        assert user.email == ""
    user = await web._oidc_user(_claims("11111111-aaaa", email="jane.smith@trust.nhs.uk", email_verified=True))
    assert user.email == "jane.smith@trust.nhs.uk"


def test_the_first_binding_wins(store: UserStore) -> None:
    from meshnode.storage.users import User
    store.add_user(User("j.smith", ("clinician",), 0, source="oidc"))
    assert store.bind_subject("j.smith", "a 1") == "a 1"
    assert store.bind_subject("j.smith", "a 2") == "a 1"
