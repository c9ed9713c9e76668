"""A manifest's lifecycle at one node: its states, the events that move it, and every legal move in one table.

A node sees a manifest from one of two sides, and each side is its own machine over the same states (the
node stores a manifest's state as the state's value, whichever side it is on):

The sender's view of a manifest it signed::

    (none) --SIGNED--> sent --RECALLED--> recalled

The recipient's view of a manifest announced to it::

    (none) --ACCEPTED--> announced --FETCH_STARTED--> fetching --VERIFIED--> complete --RECEIPT_DELIVERED--> receipted

A fetch starts again from `fetching` (a restart resumes it), from `failed` (an operator asks again), and
from `complete` or `receipted` (a quarantined block is fetched again, or bit rot is found when a restart
re-verifies the study); such a repair ends with VERIFIED and, when the receipt was delivered before,
RECEIPT_DELIVERED again. A restart before the receipt went re-verifies a complete study (VERIFIED
again). Verification fails from `fetching`, or from `complete` when a restart re-verifies
the study. A recall ends every state but itself. Anything not in the table is refused with a
LocalProtocolError: a node that tries it has lost track of its own state (or lost a race with a recall,
which its driver must expect).

Expiry and supersession are not states: a manifest expires at its `expires_at` and is superseded by a
newer revision of the same share (protocol.access); both are decided from the manifest, not recorded.

The node (meshnode/node) and the simulator (simulations/engine) both move manifests with `advance`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

from protocol.errors import LocalProtocolError


class ManifestState(enum.Enum):
    """Where a manifest is at this node (the values are what the node's database stores)."""

    SENT = "sent"  # sender: signed, announced (or being announced) to its recipients
    ANNOUNCED = "announced"  # recipient: verified and recorded, nothing fetched yet
    FETCHING = "fetching"  # recipient: blocks are being fetched (or will be, after a restart)
    COMPLETE = "complete"  # recipient: every instance verified and recorded; the receipt is on its way
    RECEIPTED = "receipted"  # recipient: its signed receipt reached the sender
    FAILED = "failed"  # recipient: the study does not match its manifest (fetching again cannot help)
    RECALLED = "recalled"  # either side: withdrawn by its sender


class ManifestEvent(enum.Enum):
    SIGNED = "signed"  # the sender signed it
    ACCEPTED = "accepted"  # a recipient verified and recorded its announcement
    FETCH_STARTED = "fetch-started"
    VERIFIED = "verified"  # every block durable and every instance verified
    RECEIPT_DELIVERED = "receipt-delivered"
    VERIFICATION_FAILED = "verification-failed"
    RECALLED = "recalled"  # the sender recalled it (sent, or received and verified)


class Side(enum.Enum):
    """Whose view of the manifest (the values are the node's `direction` of a manifest row)."""

    SENDER = "sent"
    RECIPIENT = "received"


S, E = ManifestState, ManifestEvent

#: Every legal move: (side, state before (None: not recorded yet), event) -> state after.
TRANSITIONS: Mapping[tuple[Side, ManifestState | None, ManifestEvent], ManifestState] = MappingProxyType({
    # the sender's machine
    (Side.SENDER, None, E.SIGNED): S.SENT,
    (Side.SENDER, S.SENT, E.RECALLED): S.RECALLED,
    # the recipient's machine
    (Side.RECIPIENT, None, E.ACCEPTED): S.ANNOUNCED,
    (Side.RECIPIENT, S.ANNOUNCED, E.FETCH_STARTED): S.FETCHING,
    (Side.RECIPIENT, S.FETCHING, E.FETCH_STARTED): S.FETCHING,  # resumed after a restart
    (Side.RECIPIENT, S.FAILED, E.FETCH_STARTED): S.FETCHING,  # asked for again
    (Side.RECIPIENT, S.COMPLETE, E.FETCH_STARTED): S.FETCHING,  # a repair, or bit rot found on restart
    (Side.RECIPIENT, S.RECEIPTED, E.FETCH_STARTED): S.FETCHING,  # a repair
    (Side.RECIPIENT, S.FETCHING, E.VERIFIED): S.COMPLETE,
    (Side.RECIPIENT, S.COMPLETE, E.VERIFIED): S.COMPLETE,  # verified again by a restart before its receipt went
    (Side.RECIPIENT, S.COMPLETE, E.RECEIPT_DELIVERED): S.RECEIPTED,
    (Side.RECIPIENT, S.FETCHING, E.VERIFICATION_FAILED): S.FAILED,
    (Side.RECIPIENT, S.COMPLETE, E.VERIFICATION_FAILED): S.FAILED,  # re-verified on restart
    (Side.RECIPIENT, S.ANNOUNCED, E.RECALLED): S.RECALLED,
    (Side.RECIPIENT, S.FETCHING, E.RECALLED): S.RECALLED,
    (Side.RECIPIENT, S.COMPLETE, E.RECALLED): S.RECALLED,
    (Side.RECIPIENT, S.RECEIPTED, E.RECALLED): S.RECALLED,
    (Side.RECIPIENT, S.FAILED, E.RECALLED): S.RECALLED,
})

del S, E


def advance(side: Side, state: ManifestState | None, event: ManifestEvent) -> ManifestState:
    """The state after `event` happens to a manifest in `state` (None: not recorded yet) seen from `side`.

    Raises LocalProtocolError for a move the table does not list."""
    try:
        return TRANSITIONS[(side, state, event)]
    except KeyError:
        where = "no manifest" if state is None else f"a {state.value} manifest"
        raise LocalProtocolError(f"{event.value} cannot happen to {where} ({side.name.lower()}'s view)") from None


def may(side: Side, state: ManifestState | None, event: ManifestEvent) -> bool:
    """Whether `event` is a legal move from `state` (for a driver that must expect a race, such as a recall)."""
    return (side, state, event) in TRANSITIONS


def parse_state(value: str) -> ManifestState:
    """A stored state's value back as a state; LocalProtocolError for a value no version wrote."""
    try:
        return ManifestState(value)
    except ValueError:
        raise LocalProtocolError(f"unknown manifest state {value!r}") from None
