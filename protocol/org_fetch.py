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
   every higher-ranked sibling is down or holding the study up, and no sibling of any rank is making
   progress (one that took over, say, while this node was down).
   - Down: its HAVE failed DOWN_AFTER_FAILURES times in a row, over at least half the study's takeover time.
     One missed answer is load (a busy sibling, a queued stream), not death: taking over on it would have
     every node of a busy organisation fetch everything.
   - Holding up: its count did not grow for the study's takeover time (`takeover_for`: a quarter of
     `takeover_seconds` for stat, half for urgent, all of it for routine), or, for a stat or urgent study,
     the rate it has shown since this node started watching does not finish the study by the priority's
     DEADLINE (a sibling drip-feeding one block at a time must not hold a stroke CT). A large stat study
     on a healthy but slow path may then be fetched twice: the organisation pays bytes, not minutes.
   - A directory that does not answer (no sibling known at all) is waited for the study's takeover time.
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
from protocol.replication import copies


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


#: consecutive failed HAVE polls before a sibling may count as down (and DOWN_GRACE of the takeover time)
DOWN_AFTER_FAILURES = 3
DOWN_GRACE = 0.5
#: the takeover time of a study, as a fraction of `[replication] takeover_seconds`, by priority
TAKEOVER_FRACTION = {Priority.STAT: 0.25, Priority.URGENT: 0.5, Priority.ROUTINE: 1.0}
#: seconds (from when this node started watching) by which a sibling's shown rate must finish a study of
#: this priority, or this node takes over; routine has none (any progress within takeover time will do).
#: Stat: a stroke CT is wanted in minutes; urgent: within the quarter hour.
DEADLINE: dict[Priority, float] = {Priority.STAT: 120.0, Priority.URGENT: 900.0}


#: seconds between two HAVE rounds of a standing-by node: a quarter of takeover_seconds, within these bounds
#: (thousands of studies may stand by at once: each round asks every sibling about each)
WATCH_INTERVAL = (0.25, 5.0)


def watch_interval(takeover_seconds: float) -> float:
    """Seconds between two rounds of asking the siblings (the node's OrgFetcher, and the simulator's)."""
    low, high = WATCH_INTERVAL
    return max(low, min(high, takeover_seconds / 4))


def takeover_for(priority: Priority, takeover_seconds: float) -> float:
    """Seconds without progress after which a sibling is taken over for a study of this priority."""
    return takeover_seconds * TAKEOVER_FRACTION.get(priority, 1.0)


@dataclass(frozen=True)
class SiblingView:
    """What a standing-by node has seen of one sibling: whether its last HAVE answered, how many blocks it
    held (last known), when that count last grew (or when watching started, if it never did), when watching
    started and what it held then (its rate), and its HAVE failures in a row (since `failing_since`)."""

    reachable: bool
    held: int
    progressed_at: float
    watched_since: float = 0.0
    held_then: int = 0
    failures: int = 0
    failing_since: float | None = None


def observe(previous: SiblingView | None, *, reachable: bool, held: int, now: float) -> SiblingView:
    """Fold one HAVE answer (or a failure to get one: `reachable=False`) into the view of a sibling."""
    if previous is None:
        if not reachable:
            return SiblingView(False, 0, now, now, 0, 1, now)
        return SiblingView(True, held, now, now, held)
    if not reachable:
        return replace(previous, reachable=False, failures=previous.failures + 1,
                       failing_since=previous.failing_since if previous.failures else now)
    if held > previous.held:
        return replace(previous, reachable=True, held=held, progressed_at=now, failures=0, failing_since=None)
    return replace(previous, reachable=True, failures=0, failing_since=None)


def down(view: SiblingView, *, now: float, takeover_seconds: float, priority: Priority) -> bool:
    """The sibling's HAVE failed DOWN_AFTER_FAILURES times in a row, over DOWN_GRACE of the takeover time."""
    return (view.failures >= DOWN_AFTER_FAILURES and view.failing_since is not None
            and now - view.failing_since >= DOWN_GRACE * takeover_for(priority, takeover_seconds))


def holding_up(view: SiblingView, *, now: float, total: int, takeover_seconds: float, priority: Priority) -> bool:
    """The count (a sibling's, or this node's own copy's) did not grow for the study's takeover time, or the
    rate shown since watching started does not finish it by the priority's DEADLINE."""
    takeover = takeover_for(priority, takeover_seconds)
    if now - view.progressed_at >= takeover:
        return True
    deadline = DEADLINE.get(priority)
    remaining = total - view.held
    elapsed = now - view.watched_since
    if deadline is None or remaining <= 0 or elapsed < takeover:
        return False
    rate = (view.held - view.held_then) / elapsed
    return rate <= 0 or elapsed + remaining / rate > deadline


def without_siblings(*, lookup_failed_since: float | None, now: float, takeover_seconds: float,
                     priority: Priority) -> OrgRole:
    """No sibling known: resolved as none (`lookup_failed_since` None: a single-node organisation) fetches;
    a directory that has not answered since then is waited for the study's takeover time."""
    if lookup_failed_since is None or now - lookup_failed_since >= takeover_for(priority, takeover_seconds):
        return OrgRole.FETCH
    return OrgRole.STAND_BY


def decide(*, me: str, ranking: list[str], siblings: Mapping[str, SiblingView], total: int, now: float,
           takeover_seconds: float, mode: str, priority: Priority) -> OrgRole:
    """This node's role for one manifest. `ranking` is `rank(...)` over the organisation's nodes (this one
    included); `siblings` what it has seen of the others (a sibling not in it is not known to be up);
    `total` the manifest's block count."""
    if any(v.reachable and v.held >= total > 0 for v in siblings.values()):
        return OrgRole.COPY if copies(mode, priority) else OrgRole.KEEP_MANIFEST
    higher = ranking[:ranking.index(me)] if me in ranking else list(ranking)

    def alive(peer: str) -> bool:
        v = siblings.get(peer)
        return (v is not None and not down(v, now=now, takeover_seconds=takeover_seconds, priority=priority)
                and not holding_up(v, now=now, total=total, takeover_seconds=takeover_seconds, priority=priority))

    def progressing(peer: str) -> bool:
        v = siblings.get(peer)
        return v is not None and v.held > 0 and alive(peer)

    if any(alive(p) for p in higher if p != me):
        return OrgRole.STAND_BY
    if any(progressing(p) for p in siblings if p != me and p not in higher):
        return OrgRole.STAND_BY  # a lower-ranked sibling took over (while this node was down): let it finish
    return OrgRole.FETCH
