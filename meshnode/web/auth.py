"""Who is calling: API tokens (Bearer, or Basic with the token as password) and web UI sessions.

A token is looked up by its SHA-256 in the user store; answers are cached for
CACHE_S seconds, so a revocation or a disabled user takes effect within that
time on a running node. UI sessions are random IDs in an HttpOnly cookie,
held in memory (a restart logs everyone out). A session ends at its absolute
expiry ([http] session_hours), after `session_idle_seconds` without a request,
at sign-out, and within CACHE_S of its user being disabled, their roles
changing, their password being reset, or (a session opened with a token) the
token being revoked.

At most MAX_SESSIONS sessions are held, at most MAX_SESSIONS_PER_USER per user (a new sign-in beyond it ends
that user's oldest). When the node is full, ended (expired or idle) sessions make room; another user's live
session never does: the sign-in is refused (SessionsFull) rather than one token holder signing everyone
else out by signing in again and again.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import Callable
from typing import TypeVar
from dataclasses import dataclass, field

import trio

from meshnode.storage.users import ApiToken, User, UserStore, check_roles, check_user_name, permissions
from protocol.errors import LocalProtocolError

T = TypeVar("T")
TOKEN_PREFIX = "mnt_"
CACHE_S = 5.0
TOUCH_EVERY_MS = 60_000
SESSION_COOKIE = "meshnode_session"
MAX_SESSIONS = 10_000
MAX_SESSIONS_PER_USER = 20


class SessionsFull(Exception):
    """Every session place is held by a live session of someone else: a new one is refused."""


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
    #: how the session was opened: token, password+totp or oidc (audited)
    method: str = "token"

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


@dataclass
class Session:
    principal: Principal
    opened: float
    expires: float
    last_seen: float
    checked: float
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))


IDLE_S = 30 * 60


class Authenticator:
    def __init__(self, store: UserStore, clock: Callable[[], float] = time.time, idle_s: float = IDLE_S) -> None:
        self.store = store
        self.clock = clock
        self.idle_s = idle_s
        self._limiter = trio.CapacityLimiter(1)
        self._cache: dict[bytes, tuple[float, Principal | None]] = {}
        self._touched: dict[str, int] = {}
        self._sessions: dict[str, Session] = {}

    async def run_sync(self, fn: Callable[[], T]) -> T:
        """`fn` on the user store's thread (one at a time)."""
        return await trio.to_thread.run_sync(fn, limiter=self._limiter)

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
        """A new session (SessionsFull when every place is held by someone else's live session)."""
        now = self.clock()
        own = self.sessions_of(principal.user)  # oldest first (the dict keeps the order they were opened in)
        for session_id in own[:max(0, len(own) - MAX_SESSIONS_PER_USER + 1)]:
            self.close_session(session_id)  # this user's oldest
        if len(self._sessions) >= MAX_SESSIONS:
            self._sessions = {k: v for k, v in self._sessions.items() if self._alive(v, now)}
            if len(self._sessions) >= MAX_SESSIONS:
                raise SessionsFull()
        session_id = secrets.token_urlsafe(32)
        self._sessions[session_id] = Session(
            Principal(principal.user, principal.roles, "session", principal.token_id, principal.method),
            now, now + hours * 3600, now, now)
        return session_id

    def _alive(self, s: Session, now: float) -> bool:
        return s.expires > now and s.last_seen + self.idle_s > now

    def csrf(self, session_id: str) -> str | None:
        """The session's anti-CSRF token: every state-changing request made with the session cookie must
        carry it in the X-CSRF-Token header (WebApp checks; the page reads it from /ui/api/session)."""
        entry = self._sessions.get(session_id)
        return entry.csrf if entry is not None else None

    def csrf_ok(self, session_id: str, presented: str) -> bool:
        expected = self.csrf(session_id)
        return expected is not None and bool(presented) and secrets.compare_digest(expected.encode(),
                                                                                  presented.encode())

    async def session(self, session_id: str, *, touch: bool = True) -> Principal | None:
        """The session's principal, or None (unknown, expired, idle too long, or its user changed). `touch`:
        this request counts as activity (a page's live-update stream checking itself does not)."""
        entry = self._sessions.get(session_id)
        now = self.clock()
        if entry is None:
            return None
        if not self._alive(entry, now):
            self.close_session(session_id)
            return None
        if entry.checked + CACHE_S <= now:
            # the user (and the token behind a token session) must still be as they were when it opened
            if not await self._still_valid(entry):
                self.close_session(session_id)
                return None
            entry.checked = now
        if touch:
            entry.last_seen = now
        return entry.principal

    def sessions_of(self, user: str) -> list[str]:
        return [k for k, v in self._sessions.items() if v.principal.user == user]

    def end_sessions(self, user: str) -> int:
        """End every session of `user` now (disabled, roles changed, password reset from this node)."""
        ended = self.sessions_of(user)
        for session_id in ended:
            self.close_session(session_id)
        return len(ended)

    async def _still_valid(self, entry: Session) -> bool:
        principal = entry.principal

        def check() -> bool:
            user = self.store.user(principal.user)
            if user is None or user.disabled or user.roles != principal.roles:
                return False
            if principal.method == "password+totp":
                credentials = self.store.credentials(principal.user)
                return credentials is not None and credentials.changed_ms <= int(entry.opened * 1000)
            if principal.method != "token":
                return True
            record = next((t for t in self.store.tokens(principal.user) if t.token_id == principal.token_id), None)
            return record is not None and record.usable(int(self.clock() * 1000))

        return await self.run_sync(check)

    def close_session(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)
