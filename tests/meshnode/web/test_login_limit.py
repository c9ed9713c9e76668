"""The login rate limiter against a naive model: any sequence of failures, successes and time steps."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from meshnode.web.login_limit import LoginLimiter

USERS = st.sampled_from(["alice", "bob", ""])
CLIENTS = st.sampled_from(["10.0.0.1", "10.0.0.2"])
STEPS = st.lists(st.tuples(st.sampled_from(["fail", "ok", "wait"]), USERS, CLIENTS, st.integers(0, 600)),
                 max_size=60)


@settings(max_examples=300, deadline=None)
@given(STEPS)
def test_the_limiter_agrees_with_a_naive_model(steps: list[tuple[str, str, str, int]]) -> None:
    limiter = LoginLimiter(per_user=3, per_client=5, window_s=900)
    user_failures: dict[str, list[float]] = {}
    client_failures: dict[str, list[float]] = {}
    now = 1000.0
    for action, user, client, wait in steps:
        if action == "wait":
            now += wait
        elif action == "fail":
            limiter.failed(user, client, now)
            if user:
                user_failures.setdefault(user, []).append(now)
            client_failures.setdefault(client, []).append(now)
        else:
            limiter.succeeded(user)
            user_failures.pop(user, None)
        for u in ("alice", "bob", ""):
            for c in ("10.0.0.1", "10.0.0.2"):
                recent_u = [t for t in user_failures.get(u, []) if t > now - 900] if u else []
                recent_c = [t for t in client_failures.get(c, []) if t > now - 900]
                blocked = len(recent_u) >= 3 or len(recent_c) >= 5
                wait_s = limiter.retry_after(u, c, now)
                assert (wait_s > 0) == blocked, (u, c, now)
                later = now + wait_s  # Retry-After is exactly long enough, and not longer
                assert not (len([t for t in recent_u if t > later - 900]) >= 3
                            or len([t for t in recent_c if t > later - 900]) >= 5)
                if wait_s > 0:
                    earlier = later - 0.5
                    assert (len([t for t in recent_u if t > earlier - 900]) >= 3
                            or len([t for t in recent_c if t > earlier - 900]) >= 5)
