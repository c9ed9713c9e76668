"""Who is calling: API tokens (Bearer, or Basic with the token as password) and web UI sessions.

A token is looked up by its SHA-256 in the user store; answers are cached for
CACHE_S seconds, so a revocation or a disabled user takes effect within that
time on a running node. UI sessions are random IDs in an HttpOnly cookie,
held in memory (a restart logs everyone out).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import trio

from meshnode.storage.users import ApiToken, User, UserStore, check_roles, check_user_name, permissions
from protocol.errors import LocalProtocolError

TOKEN_PREFIX = "mnt_"
CACHE_S = 5.0
TOUCH_EVERY_MS = 60_000
SESSION_COOKIE = "meshnode_session"
MAX_SESSIONS = 10_000


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "replace")).digest()


def new_token() -> tuple[str, bytes, str]:
    """(token, its hash, its token_id)."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    digest = token_hash(token)
    return token, digest, digest.hex()[:12]


def add_user(store: UserStore, name: str, roles: tuple[str, ...], now_ms: int) -> User:
    user = User(check_user_name(name), check_roles(roles), now_ms)
    store.add_user(user)
    return user


def issue_token(store: UserStore, user: str, label: str, now_ms: int, expires_days: int = 0) -> tuple[str, ApiToken]:
    """A new token for `user`; the token itself is returned once and never stored."""
    existing = store.user(user)
    if existing is None:
        raise LocalProtocolError(f"no user {user!r}")
    if existing.disabled:
        raise LocalProtocolError(f"user {user!r} is disabled")
    if expires_days < 0:
        raise LocalProtocolError("expires_days must be 0 (never) or more")
    token, digest, token_id = new_token()
    record = ApiToken(token_id, user, label[:100], now_ms, now_ms + expires_days * 86_400_000 if expires_days else 0)
    store.add_token(digest, record)
    return token, record


@dataclass(frozen=True)
class Principal:
    user: str
    roles: tuple[str, ...]
    via: str  # "token" or "session"
    token_id: str = ""

    def may(self, permission: str) -> bool:
        """A permission (or an old-style role of the same name) that one of the principal's roles grants."""
        return permission in permissions(self.roles)


def bearer_or_basic(header: str) -> str | None:
    """The token in an Authorization header: `Bearer TOKEN`, or `Basic base64(user:TOKEN)`."""
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except ValueError:  # binascii.Error, UnicodeDecodeError, and non-ASCII text (plain ValueError)
            return None
        _, sep, password = decoded.partition(":")
        return password if sep and password else None
    return None


class Authenticator:
    def __init__(self, store: UserStore, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        self._limiter = trio.CapacityLimiter(1)
        self._cache: dict[bytes, tuple[float, Principal | None]] = {}
        self._touched: dict[str, int] = {}
        self._sessions: dict[str, tuple[float, Principal]] = {}
        self._checked: dict[str, float] = {}
        self._csrf: dict[str, str] = {}

    async def token(self, token: str) -> Principal | None:
        if len(token) > 256:
            return None
        digest = token_hash(token)
        now = self.clock()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        found = await trio.to_thread.run_sync(self.store.lookup, digest, limiter=self._limiter)
        principal = None
        now_ms = int(now * 1000)
        if found is not None:
            user, record = found
            if not user.disabled and record.usable(now_ms):
                principal = Principal(user.name, user.roles, "token", record.token_id)
                if now_ms - self._touched.get(record.token_id, record.last_used_ms) > TOUCH_EVERY_MS:
                    self._touched[record.token_id] = now_ms
                    await trio.to_thread.run_sync(self.store.touch_token, record.token_id, now_ms,
                                                  limiter=self._limiter)
        if len(self._cache) > MAX_SESSIONS:
            self._cache.clear()
        self._cache[digest] = (now + CACHE_S, principal)
        return principal

    # -- UI sessions ----------------------------------------------------------------
    def open_session(self, principal: Principal, hours: int) -> str:
        now = self.clock()
        if len(self._sessions) >= MAX_SESSIONS:
            self._sessions = {k: v for k, v in self._sessions.items() if v[0] > now}
            while len(self._sessions) >= MAX_SESSIONS:
                self._sessions.pop(next(iter(self._sessions)))
            self._csrf = {k: v for k, v in self._csrf.items() if k in self._sessions}
            self._checked = {k: v for k, v in self._checked.items() if k in self._sessions}
        session_id = secrets.token_urlsafe(32)
        self._sessions[session_id] = (now + hours * 3600, Principal(principal.user, principal.roles, "session",
                                                                    principal.token_id))
        self._checked[session_id] = now
        self._csrf[session_id] = secrets.token_urlsafe(32)
        return session_id

    def csrf(self, session_id: str) -> str | None:
        """The session's anti-CSRF token: every state-changing request made with the session cookie must
        carry it in the X-CSRF-Token header (WebApp checks; the page reads it from /ui/api/session)."""
        return self._csrf.get(session_id)

    def csrf_ok(self, session_id: str, presented: str) -> bool:
        expected = self._csrf.get(session_id)
        return expected is not None and bool(presented) and secrets.compare_digest(expected.encode(),
                                                                                  presented.encode())

    async def session(self, session_id: str) -> Principal | None:
        entry = self._sessions.get(session_id)
        now = self.clock()
        if entry is None:
            return None
        if entry[0] <= now:
            self.close_session(session_id)
            return None
        principal = entry[1]
        if self._checked.get(session_id, 0.0) + CACHE_S <= now:
            # the token behind a session must still be good: revoking it (or the user) ends the session
            if not await self._token_still_valid(principal):
                self.close_session(session_id)
                return None
            self._checked[session_id] = now
        return principal

    async def _token_still_valid(self, principal: Principal) -> bool:
        def check() -> bool:
            user = self.store.user(principal.user)
            if user is None or user.disabled:
                return False
            record = next((t for t in self.store.tokens(principal.user) if t.token_id == principal.token_id), None)
            return record is not None and record.usable(int(self.clock() * 1000))

        return await trio.to_thread.run_sync(check, limiter=self._limiter)

    def close_session(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)
        self._checked.pop(session_id, None)
        self._csrf.pop(session_id, None)
