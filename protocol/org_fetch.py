"""Which node of a recipient organisation fetches a study from its sender (one decision, node and simulator).

An organisation may run several nodes (each its own key and certificate under the same org code); the sender
announces a manifest to every one of them that is up. Only one should fetch the study from the sender and
send the organisation's receipt:

1. Ranking: the organisation's nodes are ranked per manifest by rendezvous hashing (highest SHA-256 of
   manifest id + peer id first), so every node computes the same order without talking, and studies spread
   evenly over the nodes.
2. The first-ranked node fetches. Every other node stands by, asking its siblings what they hold (the
   availability bitmap, HAVE) and watching the count grow.
3. A standing-by node takes over (fetches from the sender itself) when no sibling is still doing the job:
   every higher-ranked sibling is unreachable or made no progress for `takeover_seconds`, and no sibling of
   any rank is making progress (one that took over, say, while this node was down).
4. Once a sibling holds the whole study, a standing-by node copies it from that sibling when the
   organisation's `[replication] mode` covers the study (all; urgent: stat and urgent studies; nothing),
   or keeps only the manifest otherwise. A copy sends no receipt: the sibling that fetched it sent the
   organisation's one.

A decision to fetch is final for the node that made it (the driver stops asking). Pure: time is `now`.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from protocol.manifest import Priority


class OrgRole(enum.Enum):
    """What this node does with an announced study (the outcome of `decide`)."""

    FETCH = "fetch"  # fetch from the sender; this node sends the organisation's receipt
    STAND_BY = "stand-by"  # a sibling fetches: watch it
    COPY = "copy"  # a sibling holds it all: copy from it, no receipt
    KEEP_MANIFEST = "keep-manifest"  # a sibling holds it all, and the replication mode leaves it there

    @property
    def sends_receipt(self) -> bool:
        """Only the node that fetched from the sender sends the organisation's receipt."""
        return self is OrgRole.FETCH

    @property
    def final(self) -> bool:
        return self is not OrgRole.STAND_BY


def rendezvous_key(manifest_id: str, peer_id: str) -> bytes:
    return hashlib.sha256(f"dicom-mesh/org-fetch/v1\x00{manifest_id}\x00{peer_id}".encode()).digest()


def rank(manifest_id: str, peer_ids: Iterable[str]) -> list[str]:
    """The organisation's nodes in the order they fetch this manifest (first: the fetcher)."""
    return sorted(set(peer_ids), key=lambda p: (rendezvous_key(manifest_id, p), p), reverse=True)


def replicates(mode: str, priority: Priority) -> bool:
    """Whether `[replication] mode` (all | urgent | nothing) has a node copy a study of this priority."""
    if mode == "all":
        return True
    if mode == "urgent":
        return priority in (Priority.STAT, Priority.URGENT)
    return False


@dataclass(frozen=True)
class SiblingView:
    """What a standing-by node has seen of one sibling: whether its last HAVE answered, how many blocks it
    held then, and when that count last grew (or when watching started, if it never did)."""

    reachable: bool
    held: int
    progressed_at: float


def observe(previous: SiblingView | None, *, reachable: bool, held: int, now: float) -> SiblingView:
    """Fold one HAVE answer (or a failure to get one: `reachable=False`) into the view of a sibling."""
    if previous is None:
        return SiblingView(reachable, held if reachable else 0, now)
    if not reachable:
        return replace(previous, reachable=False)
    if held > previous.held:
        return SiblingView(True, held, now)
    return SiblingView(True, max(held, previous.held), previous.progressed_at)


def decide(*, me: str, ranking: list[str], siblings: Mapping[str, SiblingView], total: int, now: float,
           takeover_seconds: float, mode: str, priority: Priority) -> OrgRole:
    """This node's role for one manifest. `ranking` is `rank(...)` over the organisation's nodes (this one
    included); `siblings` what it has seen of the others (a sibling not in it is not known to be up);
    `total` the manifest's block count."""
    if any(v.reachable and v.held >= total > 0 for v in siblings.values()):
        return OrgRole.COPY if replicates(mode, priority) else OrgRole.KEEP_MANIFEST
    higher = ranking[:ranking.index(me)] if me in ranking else list(ranking)

    def alive(peer: str) -> bool:
        v = siblings.get(peer)
        return v is not None and v.reachable and now - v.progressed_at < takeover_seconds

    def progressing(peer: str) -> bool:
        v = siblings.get(peer)
        return v is not None and v.reachable and v.held > 0 and now - v.progressed_at < takeover_seconds

    if any(alive(p) for p in higher if p != me):
        return OrgRole.STAND_BY
    if any(progressing(p) for p in siblings if p != me and p not in higher):
        return OrgRole.STAND_BY  # a lower-ranked sibling took over (while this node was down): let it finish
    return OrgRole.FETCH
