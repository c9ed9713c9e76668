"""The gateway's durable state: studies waiting to be announced, and the forward queue.

Implementations: SQLite (sqlite_gateway.py, tables in node.db, migration 3)
and memory (memory_gateway.py, for tests). Like MetadataStore, every method
is synchronous and is called from the node's one database thread.

Announcements, one row per (study, route):
    pending    instances arrived; announce once `quiet period` passed since the last one
    announced  shared (manifest_id, revision); a later instance makes it pending again
Forward items, one row per (manifest, destination PACS, instance):
    waiting    the study is verified, its receipt not yet sent
    pending    to be stored into the PACS (next_attempt_ms says when)
    sent       the PACS answered C-STORE success (or warning)
    failed     the PACS refused it max_attempts times (`meshnode forward retry` re-queues)
    cancelled  the manifest was recalled before it was forwarded
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from protocol.cid import CID


class AnnouncementState(str, Enum):
    PENDING = "pending"
    ANNOUNCED = "announced"


@dataclass(frozen=True)
class Announcement:
    study_uid: str
    route: str
    state: AnnouncementState
    instances: int  # instances arrived on this route since the last announcement
    first_ms: int  # first of those instances
    last_instance_ms: int
    revision: int  # revision of the last manifest shared for it (0: none yet)
    manifest_id: CID | None
    announced_ms: int | None
    attempts: int  # failed share attempts since the last success
    next_attempt_ms: int  # earliest retry after a failed share
    last_error: str


@dataclass(frozen=True)
class Arrival:
    """`count` new instances of `study_uid` arrived on `route`."""

    study_uid: str
    route: str
    count: int


class ForwardState(str, Enum):
    WAITING = "waiting"
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class ForwardInstance:
    sop_instance_uid: str
    digest: bytes


@dataclass(frozen=True)
class ForwardItem:
    manifest_id: CID
    destination: str
    seq: int  # order within the manifest
    sop_instance_uid: str
    digest: bytes
    study_uid: str
    priority: int  # Priority.rank: 0 stat, 1 urgent, 2 routine
    state: ForwardState
    attempts: int
    next_attempt_ms: int
    last_error: str
    status: int | None  # the PACS's DIMSE status, once it answered
    updated_ms: int


@dataclass(frozen=True)
class ForwardResult:
    """What one C-STORE attempt of one item came to."""

    manifest_id: CID
    destination: str
    sop_instance_uid: str
    state: ForwardState
    attempts: int
    next_attempt_ms: int
    last_error: str
    status: int | None


@dataclass(frozen=True)
class ForwardProgress:
    """One manifest's forwarding to one destination."""

    total: int
    waiting: int
    pending: int
    sent: int
    failed: int
    cancelled: int
    last_error: str
    updated_ms: int

    @property
    def state(self) -> str:
        if self.cancelled == self.total:
            return "cancelled"
        if self.waiting:
            return "waiting-for-receipt"
        if self.pending:
            return "forwarding"
        return "failed" if self.failed else "forwarded"


class GatewayStore(Protocol):
    # -- announcements ---------------------------------------------------------------------
    def note_arrivals(self, arrivals: Sequence[Arrival], now_ms: int) -> None:
        """Record instances arrived: creates or re-opens (after an announcement) a pending row."""
        ...

    def announcements(self, state: AnnouncementState | None = None) -> list[Announcement]: ...

    def announcement(self, study_uid: str, route: str) -> Announcement | None: ...

    def mark_announced(self, study_uid: str, route: str, manifest_id: CID, revision: int, covered_ms: int,
                       now_ms: int) -> bool:
        """The study was shared with every instance that arrived up to `covered_ms`.

        Becomes `announced` unless an instance arrived after covered_ms (then it
        stays pending, for the next revision). Returns whether it became announced.
        """
        ...

    def announce_failed(self, study_uid: str, route: str, error: str, next_attempt_ms: int) -> None: ...

    def forget_announcement(self, study_uid: str, route: str) -> None:
        """Drop the row (the study is gone, or its route is no longer configured)."""
        ...

    # -- forward queue -------------------------------------------------------------------------
    def enqueue_forward(self, manifest_id: CID, study_uid: str, destination: str, priority: int,
                        instances: Sequence[ForwardInstance], now_ms: int) -> int:
        """Queue a verified study for a destination, `waiting` for its receipt. Idempotent.

        An instance this destination already holds (sent earlier, same bytes) is
        recorded as sent at once. Returns how many items are new and to be sent.
        """
        ...

    def release_forward(self, manifest_id: CID, now_ms: int) -> int:
        """The receipt was sent: its waiting items become pending. Returns how many."""
        ...

    def waiting_manifests(self) -> list[CID]: ...

    def forward_due(self, destination: str, now_ms: int, limit: int) -> list[ForwardItem]:
        """Pending items of a destination whose next attempt is due: most urgent, oldest first."""
        ...

    def next_forward_ms(self, destination: str) -> int | None:
        """When the earliest pending item of a destination is due (None: nothing pending)."""
        ...

    def record_forward(self, results: Sequence[ForwardResult], now_ms: int) -> None: ...

    def defer_forward(self, destination: str, next_attempt_ms: int, error: str, now_ms: int) -> None:
        """The destination is unreachable: every pending item waits until next_attempt_ms."""
        ...

    def cancel_forward(self, manifest_id: CID, now_ms: int) -> int:
        """The manifest was recalled: items not yet sent are cancelled. Returns how many."""
        ...

    def retry_forward(self, manifest_id: CID | None, destination: str | None, now_ms: int) -> int:
        """Failed items (of one manifest / destination, or all) become pending again."""
        ...

    def forward_items(self, manifest_id: CID) -> list[ForwardItem]: ...

    def forward_progress(self, manifest_id: CID) -> dict[str, ForwardProgress]: ...

    def forward_counts(self) -> dict[str, dict[str, int]]:
        """Per destination: how many items are in each state."""
        ...

    def close(self) -> None: ...
