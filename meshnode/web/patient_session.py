"""Patient sessions: after the right code, a cookie for the public pages (meshnode.web.patient_web).

The cookie value is 256 random bits; only its SHA-256 is kept, in memory (a restart signs everyone out:
they open the link and enter a new code). A session ends after `idle_s` without a request, at the link's
expiry (never later), on sign-out, and when the link is revoked or expires (the public app re-reads the
grant on every request). Each session has its own anti-CSRF token, required on every later POST.

Bounded: at most MAX_SESSIONS; a new one beyond that drops the expired ones, then the least recently used.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

COOKIE = "meshnode_patient"
MAX_SESSIONS = 20_000
#: a cookie value longer than this is not looked up
MAX_COOKIE = 100


@dataclass
class PatientSession:
    link_id: str
    csrf: str
    expires_at: float  # wall clock (the link's expiry)
    last_used: float  # monotonic
    #: what this session has had recorded once already ("viewed" per study, "downloaded" per media set ETag)
    recorded: set[str] = field(default_factory=set)
    #: downloads of this session being sent now
    downloads: int = 0


def _key(cookie: str) -> str:
    return hashlib.sha256(cookie.encode("utf-8", "surrogatepass")).hexdigest()


class PatientSessions:
    def __init__(self, idle_s: float, wall: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic, max_sessions: int = MAX_SESSIONS) -> None:
        self.idle_s = idle_s
        self.wall = wall
        self.monotonic = monotonic
        self.max_sessions = max_sessions
        self._by_hash: OrderedDict[str, PatientSession] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_hash)

    def start(self, link_id: str, expires_at: float) -> tuple[str, PatientSession]:
        """A new session for this link: (cookie value, session)."""
        cookie = secrets.token_urlsafe(32)
        session = PatientSession(link_id, secrets.token_urlsafe(32), expires_at, self.monotonic())
        self._by_hash[_key(cookie)] = session
        if len(self._by_hash) > self.max_sessions:
            self._sweep()
            while len(self._by_hash) > self.max_sessions:
                self._by_hash.popitem(last=False)
        return cookie, session

    def get(self, cookie: str) -> PatientSession | None:
        """The live session of this cookie (its idle clock restarted), or None."""
        if not cookie or len(cookie) > MAX_COOKIE:
            return None
        key = _key(cookie)
        session = self._by_hash.get(key)
        if session is None:
            return None
        now = self.monotonic()
        if now - session.last_used > self.idle_s or self.wall() >= session.expires_at:
            del self._by_hash[key]
            return None
        session.last_used = now
        self._by_hash.move_to_end(key)
        return session

    def end(self, cookie: str) -> None:
        if cookie and len(cookie) <= MAX_COOKIE:
            self._by_hash.pop(_key(cookie), None)

    def end_link(self, link_id: str) -> None:
        """Every session of a link (revoked or expired)."""
        for key in [k for k, s in self._by_hash.items() if s.link_id == link_id]:
            del self._by_hash[key]

    @staticmethod
    def csrf_ok(session: PatientSession, presented: str) -> bool:
        return bool(presented) and hmac.compare_digest(session.csrf.encode(), presented.encode("utf-8", "replace"))

    def _sweep(self) -> None:
        now, wall = self.monotonic(), self.wall()
        for key in [k for k, s in self._by_hash.items() if now - s.last_used > self.idle_s or wall >= s.expires_at]:
            del self._by_hash[key]
