"""Same SOP Instance UID, different bytes: what the node does with the newcomer (pure: no I/O, no clock).

A DICOM instance is named by its SOP Instance UID, and a UID names one thing for ever (PS3.5 9.1).
A second instance with a UID already stored and other bytes is a modality or PACS error, a
correction sent without a new UID, or an attack; the node never guesses silently. Per route, per
[[pacs]] destination and for file ingest, a policy says what happens:

- REJECT (the default, the safe one): the newcomer waits in the conflict queue for a human; it is
  part of no manifest until decided;
- REPLACE: the newcomer supersedes the stored instance (the study's next manifest revision carries
  the new bytes only);
- KEEP_BOTH: the newcomer is held, then re-encoded under a new UID (2.25.<uuid as integer>) with the
  mapping recorded; the stored instance stays as it is.

REPLACE applies within one lineage only: the same origin (this node's own ingest, or one sender
organisation's signed manifests) and the same study. A newcomer whose UID is held here from another
lineage (a received instance with the UID of one ingested here, of another organisation's, or of another
study) is never a replacement, whatever the policy: it is held for a human (`lineage_policy`).

`decide` is the one decision; the storage layers (SQLite and memory) and the PACS forwarding call it.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Collection

from protocol.errors import MeshError


class ConflictError(MeshError):
    """A conflict decision that cannot be applied: unknown conflict, already decided, or not applicable."""

    code = 941
    name = "conflict-error"


class ConflictPolicy(str, enum.Enum):
    REJECT = "reject"
    REPLACE = "replace"
    KEEP_BOTH = "keep-both"


DEFAULT_POLICY = ConflictPolicy.REJECT


class ConflictAction(enum.Enum):
    """What to do with one incoming instance."""

    ADD = "add"  # no instance with this UID here: store it
    DUPLICATE = "duplicate"  # these very bytes are stored (or held) already: nothing to do
    HOLD = "hold"  # into the conflict queue, for a human (REJECT), or to be renamed (KEEP_BOTH)
    SUPERSEDE = "supersede"  # the stored instance(s) with this UID go, the newcomer takes their place


class Decision(str, enum.Enum):
    """A human's decision on a held conflict."""

    REPLACE = "replace"  # accept the newcomer as the replacement of the stored instance
    KEEP_BOTH = "keep-both"  # the newcomer is kept under a new SOP Instance UID
    DISCARD = "discard"  # the newcomer is dropped


class ConflictState(str, enum.Enum):
    PENDING = "pending"  # waits for a human
    REPLACED = "replaced"  # the newcomer superseded the stored instance
    KEPT_BOTH = "kept-both"  # the newcomer was stored under a new UID
    DISCARDED = "discarded"  # the newcomer was dropped


DECIDED: dict[Decision, ConflictState] = {Decision.REPLACE: ConflictState.REPLACED,
                                          Decision.KEEP_BOTH: ConflictState.KEPT_BOTH,
                                          Decision.DISCARD: ConflictState.DISCARDED}


def lineage_policy(policy: ConflictPolicy, same_lineage: bool) -> ConflictPolicy:
    """The policy in force for a newcomer: REPLACE only when every stored version of its UID is of the
    newcomer's own lineage (same origin, same study); otherwise REJECT (held for a human). KEEP_BOTH
    leaves the stored version as it is, so it stays."""
    if policy is ConflictPolicy.REPLACE and not same_lineage:
        return ConflictPolicy.REJECT
    return policy


def decide(policy: ConflictPolicy, existing: Collection[bytes], newcomer: bytes,
           held: Collection[bytes] = (), decided: Collection[bytes] = ()) -> ConflictAction:
    """The action for a newcomer with digest `newcomer`, given the digests stored under its UID (`existing`),
    those held in the conflict queue under its UID, still pending (`held`), and the newcomers of this UID a
    decision kept under a new UID or discarded (`decided`): the same bytes again are a duplicate, not
    another copy to rename or to ask about again."""
    if newcomer in existing or newcomer in held or newcomer in decided:
        return ConflictAction.DUPLICATE
    if not existing:
        return ConflictAction.ADD
    if policy is ConflictPolicy.REPLACE:
        return ConflictAction.SUPERSEDE
    return ConflictAction.HOLD


def check_decision(state: ConflictState, decision: Decision) -> ConflictState:
    """The state a pending conflict moves to; ConflictError for one already decided (a replayed decision)."""
    if state is not ConflictState.PENDING:
        raise ConflictError(f"this conflict was decided already ({state.value}); nothing changed")
    return DECIDED[decision]


def new_instance_uid(random_uuid: uuid.UUID) -> str:
    """A new UID under the 2.25 root (PS3.5 B.2): the UUID as an unsigned integer (at most 44 characters)."""
    return f"2.25.{random_uuid.int}"


def parse_policy(value: str, where: str) -> ConflictPolicy:
    try:
        return ConflictPolicy(value)
    except ValueError:
        raise ConflictError(f"{where}: choose one of {', '.join(p.value for p in ConflictPolicy)} "
                            f"(got {value[:40]!r})") from None
