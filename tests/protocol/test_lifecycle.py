"""The manifest lifecycle: every (side, state, event) is either one of the moves written out below or refused."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import LocalProtocolError, MeshError
from protocol.lifecycle import TRANSITIONS, ManifestEvent, ManifestState, Side, advance, may, parse_state

S, E = ManifestState, ManifestEvent
RECEIVING = (S.ANNOUNCED, S.FETCHING, S.COMPLETE, S.RECEIPTED, S.FAILED)

#: The moves as the node makes them (written out independently of protocol.lifecycle's table).
LEGAL: dict[tuple[Side, ManifestState | None, ManifestEvent], ManifestState] = {
    (Side.SENDER, None, E.SIGNED): S.SENT,
    (Side.SENDER, S.SENT, E.RECALLED): S.RECALLED,
    (Side.RECIPIENT, None, E.ACCEPTED): S.ANNOUNCED,
    **{(Side.RECIPIENT, s, E.FETCH_STARTED): S.FETCHING
       for s in (S.ANNOUNCED, S.FETCHING, S.FAILED, S.COMPLETE, S.RECEIPTED)},
    (Side.RECIPIENT, S.FETCHING, E.VERIFIED): S.COMPLETE,
    (Side.RECIPIENT, S.COMPLETE, E.VERIFIED): S.COMPLETE,
    (Side.RECIPIENT, S.COMPLETE, E.RECEIPT_DELIVERED): S.RECEIPTED,
    (Side.RECIPIENT, S.FETCHING, E.VERIFICATION_FAILED): S.FAILED,
    (Side.RECIPIENT, S.COMPLETE, E.VERIFICATION_FAILED): S.FAILED,
    **{(Side.RECIPIENT, s, E.RECALLED): S.RECALLED for s in RECEIVING},
}

EVERY = list(itertools.product(Side, [None, *ManifestState], ManifestEvent))


def test_the_table_is_exactly_the_moves_the_node_makes() -> None:
    assert dict(TRANSITIONS) == LEGAL


@pytest.mark.parametrize(("side", "state", "event"), [k for k in EVERY if k in LEGAL])
def test_legal_move(side: Side, state: ManifestState | None, event: ManifestEvent) -> None:
    assert advance(side, state, event) is LEGAL[(side, state, event)]
    assert may(side, state, event)


@pytest.mark.parametrize(("side", "state", "event"), [k for k in EVERY if k not in LEGAL])
def test_illegal_move_is_refused(side: Side, state: ManifestState | None, event: ManifestEvent) -> None:
    with pytest.raises(LocalProtocolError) as info:
        advance(side, state, event)
    assert event.value in str(info.value)
    assert not may(side, state, event)


def test_hostile_moves_are_refused() -> None:
    # a recalled manifest never comes back: not by a late completion, a late receipt, or a fetch
    for event in ManifestEvent:
        for side in Side:
            with pytest.raises(LocalProtocolError):
                advance(side, S.RECALLED, event)
    # a recipient cannot complete what it never fetched, nor receipt what it has not verified
    with pytest.raises(LocalProtocolError):
        advance(Side.RECIPIENT, S.ANNOUNCED, E.VERIFIED)
    with pytest.raises(LocalProtocolError):
        advance(Side.RECIPIENT, S.FETCHING, E.RECEIPT_DELIVERED)
    with pytest.raises(LocalProtocolError):
        advance(Side.RECIPIENT, S.FAILED, E.RECEIPT_DELIVERED)
    # the two sides never share a move: a sender does not fetch its own manifest, a recipient signs nothing
    with pytest.raises(LocalProtocolError):
        advance(Side.SENDER, S.SENT, E.FETCH_STARTED)
    with pytest.raises(LocalProtocolError):
        advance(Side.RECIPIENT, None, E.SIGNED)
    # a manifest is accepted once
    with pytest.raises(LocalProtocolError):
        advance(Side.RECIPIENT, S.ANNOUNCED, E.ACCEPTED)


def test_stored_values_are_the_databases() -> None:
    # the SQLite column keeps the text values it always had (no migration)
    assert {s.value for s in ManifestState} == {
        "sent", "announced", "fetching", "complete", "receipted", "failed", "recalled"}
    assert parse_state("receipted") is S.RECEIPTED
    for bad in ("verifying", "RECALLED", "", "expired"):
        with pytest.raises(LocalProtocolError):
            parse_state(bad)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(Side), st.lists(st.sampled_from(ManifestEvent), max_size=12))
def test_any_event_sequence(side: Side, events: list[ManifestEvent]) -> None:
    """Feeding any events: each is applied or refused (leaving the state as it was); the sides stay apart and
    a recall is final."""
    state: ManifestState | None = None
    for event in events:
        before = state
        try:
            state = advance(side, state, event)
        except MeshError:
            assert state is before
            continue
        if side is Side.SENDER:
            assert state in (S.SENT, S.RECALLED)
        else:
            assert state is not S.SENT
        if before is S.RECALLED:
            pytest.fail("a recalled manifest moved")
        if event is E.RECALLED:
            assert state is S.RECALLED
