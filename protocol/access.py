"""Who may read which block: authorisation by provenance (one decision, for the node and the simulator).

A node serves block b under manifest M to a peer of org P only if

1. P is one of M's recipients and is not M's sender;
2. M is live at this node: not failed, recalled, superseded by a newer revision of the same share (one
   naming every org M names), nor expired;
3. b is listed in M; and
4. either this node signed M itself, or this node holds b because it obtained b under M: fetched it
   under M (or under an earlier revision of the same share: same sender, same study) from M's sender or
   another of its recipients, or, for a manifest a sibling (another node of this org) signed, copied it
   under M from a node of this org (the sibling path, protocol.replication).

Rule 4 goes by this node's provenance, not by its org: a manifest another node of this org signed lets
this node serve only the blocks it copied under that very manifest, never blocks it holds under other
manifests (a study it received, say for research only) or from local ingest. So one node of an org
cannot make a sibling serve what the sibling holds by signing a manifest that lists it.

Nothing the requester authored (its own manifest, its own announcement, its request) can widen what it
reads: a manifest the requester signed fails (1), and a manifest it made a third party accept lists
blocks that party never fetched under it, so it fails (4). The same rule answers availability (`have`):
a block that may not be served is reported as absent, so the answer says nothing about what else the
node stores.

The decision also says whether a refusal is hostile. A request about a manifest the node has not
received yet is merely early (fellow recipients race the sender's announcement), and one about a
manifest that failed, expired or was recalled here is a normal race too: neither raises a security
alert. Only a request from an org that is not entitled to the manifest, or for blocks it does not list,
does.

A third decision keeps fetching from being an existence oracle: a block the node already holds is
reused for a new manifest only if that manifest's sender already knows the node holds it (it sent or
received it under an earlier manifest); otherwise it is fetched again, so the requests a node makes
never reveal what else it stores.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from protocol.lifecycle import ManifestState
from protocol.replication import is_sibling

#: Manifest states (protocol.lifecycle) in which a manifest is never served.
DEAD_STATES = frozenset({ManifestState.FAILED, ManifestState.RECALLED})


class Verdict(enum.Enum):
    ALLOWED = "allowed"
    UNKNOWN_MANIFEST = "unknown-manifest"  # not received (yet): early, not hostile
    NOT_LIVE = "not-live"  # failed, recalled, superseded or expired here: a race, not hostile
    NOT_ENTITLED = "not-entitled"  # the requester's org is not a recipient, or is the sender: hostile
    UNLISTED = "unlisted"  # asks for blocks the manifest does not list: hostile

    @property
    def allowed(self) -> bool:
        return self is Verdict.ALLOWED

    @property
    def hostile(self) -> bool:
        """Raise a security alert for this refusal (the requester is asking for what is not its own)."""
        return self in (Verdict.NOT_ENTITLED, Verdict.UNLISTED)


@dataclass(frozen=True)
class Share:
    """What this node knows of one manifest, as far as access is concerned."""

    sender_org: str
    recipients: frozenset[str]
    state: ManifestState
    expires_at: int
    #: a newer revision of the same share replaces it here (`superseded`)
    superseded: bool = False

    def is_live(self, now: float) -> bool:
        return self.state not in DEAD_STATES and not self.superseded and self.expires_at >= now


def superseded(revision: int, recipients: Iterable[str], others: Iterable[tuple[int, Iterable[str]]]) -> bool:
    """Whether a newer revision of the same share (same sender, same study: `others`, as (revision,
    recipients)) replaces this one: a higher revision naming every org this one names. A later manifest
    for the same study to other orgs is another share, not a correction of this one, so it does not stop
    this one's recipients from serving each other."""
    mine = frozenset(recipients)
    return any(r > revision and mine <= frozenset(rs) for r, rs in others)


def entitled(share: Share, requester_org: str) -> bool:
    """Whether an org may ask about this manifest at all (rule 1)."""
    return requester_org in share.recipients and requester_org != share.sender_org


def decide(share: Share | None, requester_org: str, now: float, *, unlisted: int = 0,
           own_org: str = "") -> Verdict:
    """May `requester_org` ask this node about the manifest (rules 1-3)? `share` is None when the node has
    not received it; `unlisted` counts the requested blocks the manifest does not list.

    `own_org` (this node's org) opens one more door, the sibling path (protocol.replication): a node of
    the org that signed the manifest, asking a node of that same org, may copy it (rules 2 and 3 still
    apply). Without it (the default) the rules are as above."""
    if share is None:
        return Verdict.UNKNOWN_MANIFEST
    if not entitled(share, requester_org) and not is_sibling(own_org, requester_org, share.sender_org):
        return Verdict.NOT_ENTITLED
    if unlisted:
        return Verdict.UNLISTED
    if not share.is_live(now):
        return Verdict.NOT_LIVE
    return Verdict.ALLOWED


def servable(share: Share, own_org: str, obtained: bool, *, signed: bool | None = None) -> bool:
    """Rule 4 for one block of an allowed manifest: this node signed the manifest (`signed`), or it
    obtained the block under it (fetched it under it or an earlier revision of the same share, or copied
    it under it from a sibling: `obtained`). A manifest another node of this org signed serves only what
    this node obtained under it.

    `signed` None: one node per org (the simulator), where this node signed the manifest exactly when
    its org did."""
    if signed is None:
        signed = share.sender_org == own_org
    return (signed and share.sender_org == own_org) or obtained


def may_serve(share: Share | None, own_org: str, requester_org: str, now: float, *, listed: bool,
              obtained: bool, signed: bool | None = None) -> bool:
    """The whole rule for one block."""
    return (decide(share, requester_org, now, unlisted=0 if listed else 1, own_org=own_org).allowed
            and share is not None and servable(share, own_org, obtained, signed=signed))


@dataclass(frozen=True)
class Holding:
    """One manifest under which this node holds a block: who took part in it, and how the node got it."""

    sender_org: str
    recipients: frozenset[str]
    #: this node's org signed the manifest, or this node fetched the block under it
    first_hand: bool


def may_reuse(holdings: Iterable[Holding], sender_org: str) -> bool:
    """Whether a block already on disk may count as fetched for a new manifest from `sender_org`: only when
    that org already knows this node holds it (it took part in a manifest under which this node obtained
    it first hand). A block held only from local ingest, or from a third party's share, is fetched again,
    so a manifest listing other people's block IDs learns nothing from what the node asks for."""
    return any(h.first_hand and (sender_org == h.sender_org or sender_org in h.recipients) for h in holdings)
