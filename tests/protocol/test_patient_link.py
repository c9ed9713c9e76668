"""protocol.patient_link: the link record's state machine (every state x input, Hypothesis)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import patient_link as pl
from protocol.patient_link import (
    CodeLimitReached,
    CodeRefused,
    LinkGone,
    LinkLocked,
    LinkPolicy,
    LinkState,
    PatientAccessError,
)

POLICY = LinkPolicy()
NOW = 1_000_000.0
STUDY = "1.2.826.0.1.3680043.8.498.1"


def make(**kw: object) -> tuple[pl.PatientLink, str]:
    kind = kw.get("kind", pl.SHARE)
    args: dict[str, object] = dict(kind=kind, studies=[STUDY] if kind == pl.SHARE else None, person="Ann Smith",
                                   email="ann@example.org", code_to="+447700900123", created_by="user:alice",
                                   days=None, policy=POLICY, now=NOW, draw=os.urandom)
    args.update(kw)
    return pl.create(**args)  # type: ignore[arg-type]


def test_token_is_128_bits_or_more_and_only_its_hash_is_kept() -> None:
    link, token = make()
    assert len(token) == 43 and link.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert token not in repr(link) and pl.token_matches(link, token)
    assert not pl.token_matches(link, token[:-1] + ("A" if token[-1] != "A" else "B"))
    assert len(link.link_id) == 32 and link.expires_at == NOW + 14 * pl.DAY


@pytest.mark.parametrize("bad", ["", "x" * 42, "x" * 44, "!" * 43, "a/" * 21 + "a", None, 5])
def test_malformed_tokens_are_just_unknown(bad: object) -> None:
    with pytest.raises(LinkGone):
        pl.token_hash(bad)  # type: ignore[arg-type]


def test_code_has_no_modulo_bias() -> None:
    # 4 bytes at the top of the range (>= the largest multiple of 10^6) are rejected, not folded
    draws = iter([b"\xff\xff\xff\xff", (123456).to_bytes(4, "big")])
    assert pl.new_code(lambda n: next(draws)) == "123456"
    with pytest.raises(PatientAccessError):
        pl.new_code(lambda n: b"\xff" * n)


@pytest.mark.parametrize(("code_to", "channel"), [("+447700900123", pl.SMS), ("+44 7700 900123", pl.SMS),
                                                  ("gp@example.org", pl.EMAIL)])
def test_code_channels(code_to: str, channel: str) -> None:
    assert make(code_to=code_to)[0].code_channel == channel


@pytest.mark.parametrize("kw", [dict(code_to="ann@example.org"), dict(code_to="ANN@example.org"),
                                dict(code_to="07700900123"), dict(code_to="+0123"), dict(email="not-an-email"),
                                dict(email="a@b.org\r\nBcc: x@evil.org"), dict(email='"a b"@x.org'),
                                dict(email="a@b.org>, c@d.org"), dict(code_to="gp@x.org\nBcc: y@z.org"),
                                dict(person=""), dict(person="a\nb"), dict(person="x" * 200), dict(days=0),
                                dict(days=91), dict(days=True), dict(days="3"), dict(studies=[]),
                                dict(studies=["1.2.x"]), dict(studies=["1." * 40]), dict(studies="1.2"),
                                dict(kind="other")])
def test_bad_input_is_refused(kw: dict[str, object]) -> None:
    with pytest.raises(PatientAccessError):
        make(**kw)


def test_upload_days_and_no_studies() -> None:
    link, _ = make(kind=pl.UPLOAD)
    assert link.studies == () and link.expires_at == NOW + 14 * pl.DAY
    with pytest.raises(PatientAccessError):
        make(kind=pl.UPLOAD, studies=[STUDY])
    with pytest.raises(PatientAccessError):
        make(kind=pl.UPLOAD, days=15)


def test_right_code_grants_once() -> None:
    link, _ = make()
    link, code = pl.issue_code(link, policy=POLICY, now=NOW, draw=os.urandom)
    assert link.state(NOW) is LinkState.CODE_SENT
    link, ok = pl.check_code(link, code, policy=POLICY, now=NOW + 1)
    assert ok
    with pytest.raises(CodeRefused):  # used up: a replay is refused
        pl.check_code(link, code, policy=POLICY, now=NOW + 2)


@pytest.mark.parametrize("bad", ["12345", "1234567", "12a456", "١٢٣٤٥٦", "123456\x00", "1" * 10_000, None, 123456])
def test_malformed_codes_are_refused_and_not_counted(bad: object) -> None:
    link, _ = make()
    link, code = pl.issue_code(link, policy=POLICY, now=NOW, draw=os.urandom)
    with pytest.raises(PatientAccessError):
        pl.check_code(link, bad, policy=POLICY, now=NOW)
    assert pl.check_code(link, f" {code[:3]} {code[3:]} ", policy=POLICY, now=NOW)[1]


def test_expired_code_is_refused_and_not_counted() -> None:
    link, _ = make()
    link, code = pl.issue_code(link, policy=POLICY, now=NOW, draw=os.urandom)
    with pytest.raises(CodeRefused) as info:
        pl.check_code(link, code, policy=POLICY, now=NOW + 600)
    assert info.value.attempts_left == 3


def test_resend_limit() -> None:
    link, _ = make()
    for _ in range(1 + POLICY.code_resends):
        link, _ = pl.issue_code(link, policy=POLICY, now=NOW, draw=os.urandom)
    with pytest.raises(CodeLimitReached):
        pl.issue_code(link, policy=POLICY, now=NOW, draw=os.urandom)


def test_forward_rules() -> None:
    parent, _ = make(days=3)
    parent2, child, token = pl.forward(parent, email="gp@example.org", code_to="+447700900999", days=None,
                                       policy=POLICY, now=NOW + 10, draw=os.urandom)
    assert parent2.forwards == 1 and child.parent_id == parent.link_id
    assert child.created_by == f"share:{parent.link_id}" and child.studies == parent.studies
    assert child.expires_at == parent.expires_at  # 14 days asked, capped at the parent's 3
    with pytest.raises(PatientAccessError, match="again"):
        pl.forward(child, email="x@example.org", code_to="+447700900998", days=None, policy=POLICY, now=NOW,
                   draw=os.urandom)
    with pytest.raises(PatientAccessError):
        pl.forward(parent, email="gp@example.org", code_to="+447700900999", days=None,
                   policy=replace(POLICY, allow_forward=False), now=NOW, draw=os.urandom)
    used = replace(parent, forwards=POLICY.max_forwards)
    with pytest.raises(PatientAccessError, match="most"):
        pl.forward(used, email="gp@example.org", code_to="+447700900999", days=None, policy=POLICY, now=NOW,
                   draw=os.urandom)
    with pytest.raises(LinkGone):
        pl.forward(pl.revoke(parent, reason="wrong person", now=NOW), email="gp@example.org",
                   code_to="+447700900999", days=None, policy=POLICY, now=NOW + 1, draw=os.urandom)
    upload, _ = make(kind=pl.UPLOAD)
    with pytest.raises(PatientAccessError):
        pl.forward(upload, email="gp@example.org", code_to="+447700900999", days=None, policy=POLICY, now=NOW,
                   draw=os.urandom)


# -- the state machine under every sequence of inputs ---------------------------------------------------------

ACTIONS = st.lists(st.tuples(st.sampled_from(["issue", "right", "wrong", "malformed", "revoke", "unlock", "wait"]),
                             st.integers(0, 900)), max_size=40)


@settings(max_examples=300, deadline=None)
@given(ACTIONS, st.integers(1, 5), st.integers(0, 3))
def test_state_machine_invariants(actions: list[tuple[str, int]], attempts: int, resends: int) -> None:
    policy = replace(POLICY, code_attempts=attempts, code_resends=resends)
    link, _ = make(policy=policy, days=1)
    now = NOW
    code = ""
    wrong_in_a_row = 0
    sent_since_unlock = 0
    revoked = False
    for action, dt in actions:
        now += dt
        before = link
        try:
            if action == "issue":
                link, code = pl.issue_code(link, policy=policy, now=now, draw=os.urandom)
                sent_since_unlock += 1
            elif action in ("right", "wrong", "malformed"):
                guess = {"right": code or "000000", "wrong": "x", "malformed": "12ab56"}[action]
                if action == "wrong":
                    guess = f"{(int(code or '0') + 1) % 10**6:06d}"
                link, ok = pl.check_code(link, guess, policy=policy, now=now)
                assert before.state(now) is LinkState.CODE_SENT  # only a live code is ever compared
                if ok:
                    assert action == "right" and not revoked and not before.locked_at
                    wrong_in_a_row = 0
                else:
                    wrong_in_a_row += 1
            elif action == "revoke":
                link = pl.revoke(link, reason="staff", now=now)
                revoked = True
            elif action == "unlock":
                link = pl.unlock(link, now=now)
                wrong_in_a_row = 0
                sent_since_unlock = 0
        except (LinkGone, LinkLocked, CodeLimitReached, CodeRefused, PatientAccessError):
            assert link == before  # a refusal changes nothing
        assert link.wrong_attempts <= attempts
        assert (link.locked_at != 0) == (link.wrong_attempts >= attempts)
        assert sent_since_unlock <= 1 + resends
        if revoked:
            assert link.state(now) is LinkState.REVOKED
        if link.state(now) in (LinkState.LOCKED, LinkState.REVOKED, LinkState.EXPIRED):
            for guess in (code or "000000", "123456"):
                with pytest.raises((LinkGone, LinkLocked)):
                    pl.check_code(link, guess, policy=policy, now=now)
            with pytest.raises((LinkGone, LinkLocked)):
                pl.issue_code(link, policy=policy, now=now, draw=os.urandom)
