"""Local users of the HTTP listener (DICOMweb, web UI) and their API tokens.

Only a token's SHA-256 is stored (tokens are 256-bit random strings, so a
plain hash is enough: nothing to brute-force). A token is named by its
`token_id` (the first 12 hex digits of that hash) in listings and revocation.
Implementations: SQLite (meshnode.storage.sqlite_users) and memory (below).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, replace
from typing import Protocol

from protocol.errors import LocalProtocolError, NotFoundError

#: read: QIDO-RS, WADO-RS, patient identifiers in the UI; write: STOW-RS; audit: the audit page; reidentify:
#: export a research project's re-link table (pseudonym -> original); deid-release: look at the instances of a
#: research share held for pixel risk and release (with a reason) or refuse it (not `write`: STOW service
#: tokens have that)
ROLES = ("read", "write", "audit", "reidentify", "deid-release", "clinician", "pacs", "admin", "auditor")
#: the staff portal's roles (clinician, pacs = the PACS team, admin, auditor) are bundles of permissions; the
#: older roles (read, write, ...) are permissions of their own. A route names the permission it needs.
#:   send     share, recall, outbox actions from the portal; request  ask another organisation for studies
#:   queues   the PACS queues (held, reconciliation, conflicts) and incoming requests; admin  users, routes,
#:   policies
PERMISSIONS: dict[str, frozenset[str]] = {
    "read": frozenset({"read"}),
    "write": frozenset({"write"}),
    "audit": frozenset({"audit"}),
    "reidentify": frozenset({"reidentify"}),
    "deid-release": frozenset({"deid-release"}),
    "clinician": frozenset({"read", "send", "request"}),
    "pacs": frozenset({"read", "write", "send", "request", "queues", "deid-release"}),
    "admin": frozenset({"admin"}),
    "auditor": frozenset({"audit"}),
}


def permissions(roles: tuple[str, ...]) -> frozenset[str]:
    """Every permission the roles grant (an unknown role grants nothing)."""
    return frozenset().union(*(PERMISSIONS.get(r, frozenset()) for r in roles))


#: where an account comes from: local (password + TOTP, or API tokens only) or oidc (created by single sign-on)
SOURCES = ("local", "oidc")
MAX_DISPLAY_NAME = 100
MAX_EMAIL = 254
_EMAIL = re.compile(r"^[^@\s<>\"',;]{1,64}@[A-Za-z0-9.-]{1,189}\.[A-Za-z]{2,24}$")
SEARCH_LIMIT = 50
_NAME = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,63}$")


def check_user_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise LocalProtocolError(f"user name {name!r}: 1-64 of a-z 0-9 . _ @ -, starting with a letter or digit")
    return name


def check_email(email: str) -> str:
    """'' (none) or one plain address (it goes into an SMTP envelope: no spaces, brackets, quotes or commas)."""
    if email and (len(email) > MAX_EMAIL or not _EMAIL.fullmatch(email)):
        raise LocalProtocolError(f"email {email[:80]!r}: give one plain address like name@example.nhs.uk")
    return email


def check_display_name(display_name: str) -> str:
    cleaned = " ".join(display_name.split())
    if len(cleaned) > MAX_DISPLAY_NAME or any(ord(c) < 32 or ord(c) == 127 for c in cleaned):
        raise LocalProtocolError(f"display name: at most {MAX_DISPLAY_NAME} printable characters")
    return cleaned


def check_roles(roles: tuple[str, ...]) -> tuple[str, ...]:
    bad = sorted(set(roles) - set(ROLES))
    if bad:
        raise LocalProtocolError(f"unknown role(s) {bad}; roles are {', '.join(ROLES)}")
    if not roles:
        raise LocalProtocolError(f"give a user at least one role of {', '.join(ROLES)}")
    return tuple(r for r in ROLES if r in roles)


@dataclass(frozen=True)
class User:
    name: str
    roles: tuple[str, ...]
    created_ms: int
    disabled: bool = False
    display_name: str = ""
    email: str = ""
    source: str = "local"


@dataclass(frozen=True)
class Credentials:
    """A user's sign-in secrets (never listed, never logged): the Argon2 hash of the password, the base32 TOTP
    secret, the last TOTP time step accepted (a code is good once) and when they were last set."""

    password_hash: str = ""
    totp_secret: str = ""
    totp_last_step: int = 0
    changed_ms: int = 0


def search_key(user: User) -> str:
    return f"{user.name}\n{user.display_name.lower()}\n{user.email.lower()}"


#: shorter search text matches only the start of a name, display name or email (a substring of one or two
#: letters says little, and would cost a scan of every user)
MIN_SUBSTRING = 3


def search_text(text: str) -> str:
    """What a search looks for: lower case, without control characters (no name, display name or email has
    them; a NUL would break SQLite's full-text query)."""
    return "".join(ch for ch in text if unicodedata.category(ch) != "Cc").lower()


def matches(user: User, text: str) -> bool:
    """The users page's type-ahead: `text` (lower case) at the start of the name, display name or email, or,
    from MIN_SUBSTRING characters on, anywhere in them."""
    if len(text) < MIN_SUBSTRING:
        return any(part.startswith(text) for part in search_key(user).split("\n"))
    return text in search_key(user)


@dataclass(frozen=True)
class ApiToken:
    token_id: str
    user: str
    label: str
    created_ms: int
    expires_ms: int  # 0: never
    revoked: bool = False
    last_used_ms: int = 0

    def usable(self, now_ms: int) -> bool:
        return not self.revoked and (self.expires_ms == 0 or now_ms < self.expires_ms)


class UserStore(Protocol):
    def add_user(self, user: User) -> None:
        """Refuses a name that exists (LocalProtocolError)."""
        ...

    def user(self, name: str) -> User | None: ...

    def users(self) -> list[User]: ...

    def set_roles(self, name: str, roles: tuple[str, ...]) -> None: ...

    def disable_user(self, name: str) -> int:
        """Disable the user and revoke every token of theirs; returns the tokens revoked."""
        ...

    def user_by_email(self, email: str) -> User | None:
        """The user with this email address (case-insensitive; the first by name if several have it)."""
        ...

    def set_disabled(self, name: str, disabled: bool) -> None:
        """Disable (without touching tokens: see disable_user) or enable again."""
        ...

    def set_profile(self, name: str, display_name: str, email: str) -> None: ...

    def search_users(self, text: str, limit: int = SEARCH_LIMIT) -> list[User]:
        """Users whose name, display name or email starts with `text` or (MIN_SUBSTRING characters or more)
        contains it, case-insensitive; those starting with it first, then by name; at most `limit`."""
        ...

    def credentials(self, name: str) -> Credentials | None: ...

    def bind_subject(self, name: str, subject: str) -> str:
        """The single sign-on identity (issuer and `sub`, as one string) the account `name` belongs to: stored
        on the first call (atomically: of two first sign-ons at once, one wins), returned unchanged after;
        NotFoundError for an unknown name."""
        ...

    def set_credentials(self, name: str, password_hash: str, totp_secret: str, now_ms: int) -> None:
        """Replace the password hash and TOTP secret (the accepted-step memory starts again)."""
        ...

    def use_totp_step(self, name: str, step: int) -> bool:
        """Record that the TOTP code of time step `step` was used, atomically; False if that step or a later
        one was used already (a replayed code)."""
        ...

    def add_token(self, token_hash: bytes, token: ApiToken) -> None: ...

    def tokens(self, user: str | None = None) -> list[ApiToken]: ...

    def revoke_token(self, token_id: str) -> ApiToken:
        """Revoke by token_id (or a unique prefix of at least 6 characters)."""
        ...

    def lookup(self, token_hash: bytes) -> tuple[User, ApiToken] | None: ...

    def touch_token(self, token_id: str, now_ms: int) -> None:
        """Record when a token was last used (callers rate-limit this)."""
        ...

    def close(self) -> None: ...


def match_token_id(tokens: list[ApiToken], prefix: str) -> ApiToken:
    hits = [t for t in tokens if t.token_id == prefix] or (
        [t for t in tokens if t.token_id.startswith(prefix)] if len(prefix) >= 6 else [])
    if not hits:
        raise NotFoundError(f"no token {prefix!r} (see `meshnode users list`)")
    if len(hits) > 1:
        raise LocalProtocolError(f"{len(hits)} tokens start with {prefix!r}; give more of the ID")
    return hits[0]


class MemoryUserStore:
    def __init__(self) -> None:
        self._users: dict[str, User] = {}
        self._tokens: dict[bytes, ApiToken] = {}
        self._credentials: dict[str, Credentials] = {}
        self._subjects: dict[str, str] = {}

    def close(self) -> None:
        """Nothing to release."""

    def add_user(self, user: User) -> None:
        if user.name in self._users:
            raise LocalProtocolError(f"user {user.name!r} exists")
        self._users[user.name] = user

    def user(self, name: str) -> User | None:
        return self._users.get(name)

    def users(self) -> list[User]:
        return sorted(self._users.values(), key=lambda u: u.name)

    def _existing(self, name: str) -> User:
        user = self._users.get(name)
        if user is None:
            raise NotFoundError(f"no user {name!r}")
        return user

    def set_roles(self, name: str, roles: tuple[str, ...]) -> None:
        self._users[name] = replace(self._existing(name), roles=roles)

    def disable_user(self, name: str) -> int:
        self._users[name] = replace(self._existing(name), disabled=True)
        revoked = 0
        for key, token in self._tokens.items():
            if token.user == name and not token.revoked:
                self._tokens[key] = replace(token, revoked=True)
                revoked += 1
        return revoked

    def user_by_email(self, email: str) -> User | None:
        wanted = email.lower()
        return next((u for u in self.users() if email and u.email.lower() == wanted), None)

    def set_disabled(self, name: str, disabled: bool) -> None:
        self._users[name] = replace(self._existing(name), disabled=disabled)

    def set_profile(self, name: str, display_name: str, email: str) -> None:
        self._users[name] = replace(self._existing(name), display_name=display_name, email=email)

    def search_users(self, text: str, limit: int = SEARCH_LIMIT) -> list[User]:
        text = search_text(text)
        hits = [u for u in self._users.values() if matches(u, text)]
        hits.sort(key=lambda u: (not any(part.startswith(text) for part in search_key(u).split("\n")), u.name))
        return hits[:limit]

    def credentials(self, name: str) -> Credentials | None:
        if name not in self._users:
            return None
        return self._credentials.get(name, Credentials())

    def bind_subject(self, name: str, subject: str) -> str:
        self._existing(name)
        return self._subjects.setdefault(name, subject)

    def set_credentials(self, name: str, password_hash: str, totp_secret: str, now_ms: int) -> None:
        self._existing(name)
        self._credentials[name] = Credentials(password_hash, totp_secret, 0, now_ms)

    def use_totp_step(self, name: str, step: int) -> bool:
        current = self._credentials.get(name)
        if current is None or step <= current.totp_last_step:
            return False
        self._credentials[name] = replace(current, totp_last_step=step)
        return True

    def add_token(self, token_hash: bytes, token: ApiToken) -> None:
        self._existing(token.user)
        if token_hash in self._tokens or any(t.token_id == token.token_id for t in self._tokens.values()):
            raise LocalProtocolError("token exists")
        self._tokens[token_hash] = token

    def tokens(self, user: str | None = None) -> list[ApiToken]:
        return sorted((t for t in self._tokens.values() if user is None or t.user == user),
                      key=lambda t: (t.user, t.created_ms, t.token_id))

    def revoke_token(self, token_id: str) -> ApiToken:
        token = match_token_id(self.tokens(), token_id)
        for key, t in self._tokens.items():
            if t.token_id == token.token_id:
                self._tokens[key] = replace(t, revoked=True)
                return self._tokens[key]
        raise NotFoundError(f"no token {token_id!r}")

    def lookup(self, token_hash: bytes) -> tuple[User, ApiToken] | None:
        token = self._tokens.get(token_hash)
        if token is None:
            return None
        return self._users[token.user], token

    def touch_token(self, token_id: str, now_ms: int) -> None:
        for key, t in self._tokens.items():
            if t.token_id == token_id:
                self._tokens[key] = replace(t, last_used_ms=now_ms)
