"""The gateway's durable state: studies waiting to be announced (the PACS forward queue is in the node's
shared retry queue: meshnode.gateway.pacs_queue).

Implementations: SQLite (sqlite_gateway.py, tables in node.db, migration 3)
and memory (memory_gateway.py, for tests). Like MetadataStore, every method
is synchronous and is called from the node's one database thread.

Announcements, one row per (study, route):
    pending    instances arrived; announce once `quiet period` passed since the last one
    announced  shared (manifest_id, revision); a later instance makes it pending again
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

    def close(self) -> None: ...
