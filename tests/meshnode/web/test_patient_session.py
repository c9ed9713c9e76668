"""Patient sessions (meshnode.web.patient_session) and the per-address limiter (meshnode.web.rate_limit)."""

from __future__ import annotations

from meshnode.web.patient_session import PatientSessions
from meshnode.web.rate_limit import RateLimiter


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_only_the_hash_is_kept_and_the_cookie_is_256_bits() -> None:
    sessions = PatientSessions(60, Clock(0), Clock(0))
    cookie, session = sessions.start("link-1", 100)
    assert len(cookie) >= 43 and cookie not in repr(sessions._by_hash)
    assert sessions.get(cookie) is session
    assert sessions.csrf_ok(session, session.csrf) and not sessions.csrf_ok(session, "") \
        and not sessions.csrf_ok(session, session.csrf + "x")


def test_idle_expiry_link_expiry_end_and_end_link() -> None:
    wall, mono = Clock(0), Clock(0)
    sessions = PatientSessions(60, wall, mono)
    a, _ = sessions.start("link-1", 1000)
    b, _ = sessions.start("link-1", 1000)
    c, _ = sessions.start("link-2", 1000)
    mono.now = 59
    assert sessions.get(a) is not None and sessions.get(c) is not None
    mono.now = 61
    assert sessions.get(a) is not None and sessions.get(b) is None  # a and c were used at 59
    sessions.end_link("link-1")
    assert sessions.get(a) is None and sessions.get(c) is not None
    wall.now = 1000
    assert sessions.get(c) is None  # never outlives the link
    d, _ = sessions.start("link-3", 2000)
    sessions.end(d)
    assert sessions.get(d) is None and len(sessions) == 0


def test_sessions_stay_bounded() -> None:
    sessions = PatientSessions(60, Clock(0), Clock(0), max_sessions=100)
    cookies = [sessions.start(f"link-{i}", 10)[0] for i in range(1000)]
    assert len(sessions) == 100
    assert sessions.get(cookies[-1]) is not None and sessions.get(cookies[0]) is None


def test_the_bucket_refills_at_the_rate_and_caps_at_the_burst() -> None:
    clock = Clock(0)
    limiter = RateLimiter(60, clock=clock)
    assert all(limiter.take("a") == 0 for _ in range(60))
    assert limiter.take("a") == 1.0  # one token a second
    clock.now = 10
    assert all(limiter.take("a") == 0 for _ in range(10)) and limiter.take("a") > 0
    clock.now = 10_000
    assert all(limiter.take("a") == 0 for _ in range(60)) and limiter.take("a") > 0  # no more than the burst
    assert limiter.take("b") == 0
    assert limiter.take("c", cost=0.1) == 0
