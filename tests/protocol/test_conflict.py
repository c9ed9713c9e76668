"""protocol.conflict: the one decision for a SOP Instance UID that arrives again with other bytes."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.conflict import (
    DEFAULT_POLICY,
    ConflictAction,
    ConflictError,
    ConflictPolicy,
    ConflictState,
    Decision,
    check_decision,
    decide,
    lineage_policy,
    new_instance_uid,
    parse_policy,
)

A, B, C = b"a" * 32, b"b" * 32, b"c" * 32

TABLE = [
    # policy, existing, newcomer, held, action
    (ConflictPolicy.REJECT, [], A, [], ConflictAction.ADD),
    (ConflictPolicy.REJECT, [A], A, [], ConflictAction.DUPLICATE),
    (ConflictPolicy.REJECT, [A], B, [], ConflictAction.HOLD),
    (ConflictPolicy.REJECT, [A], B, [B], ConflictAction.DUPLICATE),  # the same newcomer again: one queue entry
    (ConflictPolicy.REJECT, [A], C, [B], ConflictAction.HOLD),
    (ConflictPolicy.KEEP_BOTH, [A], B, [], ConflictAction.HOLD),
    (ConflictPolicy.KEEP_BOTH, [], B, [], ConflictAction.ADD),
    (ConflictPolicy.REPLACE, [A], B, [], ConflictAction.SUPERSEDE),
    (ConflictPolicy.REPLACE, [A], A, [], ConflictAction.DUPLICATE),
    (ConflictPolicy.REPLACE, [], A, [], ConflictAction.ADD),
    (ConflictPolicy.REPLACE, [A, B], C, [], ConflictAction.SUPERSEDE),
]


@pytest.mark.parametrize(("policy", "existing", "newcomer", "held", "action"), TABLE)
def test_decide_table(policy: ConflictPolicy, existing: list[bytes], newcomer: bytes, held: list[bytes],
                      action: ConflictAction) -> None:
    assert decide(policy, existing, newcomer, held) is action


def test_default_is_the_safe_one() -> None:
    assert DEFAULT_POLICY is ConflictPolicy.REJECT


digests = st.binary(min_size=32, max_size=32)


@given(st.sampled_from(ConflictPolicy), st.lists(digests, max_size=4), digests, st.lists(digests, max_size=3))
def test_decide_properties(policy: ConflictPolicy, existing: list[bytes], newcomer: bytes, held: list[bytes]) -> None:
    action = decide(policy, existing, newcomer, held)
    if newcomer in existing or newcomer in held:
        assert action is ConflictAction.DUPLICATE
    elif not existing:
        assert action is ConflictAction.ADD
    else:
        # never silently added beside another version; only REPLACE lets the newcomer in without a human
        assert action is (ConflictAction.SUPERSEDE if policy is ConflictPolicy.REPLACE else ConflictAction.HOLD)


@pytest.mark.parametrize("decision", list(Decision))
def test_a_pending_conflict_moves_once(decision: Decision) -> None:
    after = check_decision(ConflictState.PENDING, decision)
    assert after is not ConflictState.PENDING
    for again in Decision:  # a replayed (or any later) decision is refused
        with pytest.raises(ConflictError, match="decided already"):
            check_decision(after, again)


@given(st.uuids())
def test_new_uid_is_a_valid_2_25_uid(u: uuid.UUID) -> None:
    uid = new_instance_uid(u)
    assert uid.startswith("2.25.") and len(uid) <= 64
    assert all(part.isdigit() and (part == "0" or not part.startswith("0")) for part in uid.split("."))


def test_parse_policy() -> None:
    assert parse_policy("keep-both", "x") is ConflictPolicy.KEEP_BOTH
    with pytest.raises(ConflictError, match="route.on_conflict"):
        parse_policy("overwrite-everything", "route.on_conflict")


@given(st.sampled_from(ConflictPolicy), st.booleans(), st.lists(digests, min_size=1, max_size=4), digests,
       st.lists(digests, max_size=3), st.lists(digests, max_size=3))
def test_nothing_replaces_another_lineage(policy: ConflictPolicy, same_lineage: bool, existing: list[bytes],
                                          newcomer: bytes, held: list[bytes], decided: list[bytes]) -> None:
    """Review finding 1: whatever the policy, a newcomer of another lineage (another origin or study) never
    supersedes; KEEP_BOTH and REJECT stay as they are. Finding 8: a newcomer decided before is a duplicate."""
    effective = lineage_policy(policy, same_lineage)
    assert effective is (ConflictPolicy.REJECT if policy is ConflictPolicy.REPLACE and not same_lineage else policy)
    action = decide(effective, existing, newcomer, held, decided)
    if not same_lineage:
        assert action is not ConflictAction.SUPERSEDE
    if newcomer in decided:
        assert action is ConflictAction.DUPLICATE

