"""The gateway's durable state: studies waiting to be announced (the PACS forward queue is in the node's
shared retry queue: meshnode.gateway.pacs_queue).

Implementations: SQLite (sqlite_gateway.py, tables in node.db, migration 3)
and memory (memory_gateway.py, for tests). Like MetadataStore, every method
is synchronous and is called from the node's one database thread.

Announcements, one row per (study, route): the data the announcer keeps (instances arrived since the
last announcement, the last manifest shared and its revision). Whether an announcement is pending, being
attempted or done, its attempts and error, are its item in the node's shared retry queue
(meshnode.gateway.announcer: queue `gateway-announce`, states protocol.outbox.DeliveryState).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from protocol.cid import CID


@dataclass(frozen=True)
class Announcement:
    study_uid: str
    route: str
    instances: int  # instances arrived on this route that no announcement covered yet
    first_ms: int  # first of those instances
    last_instance_ms: int
    revision: int  # revision of the last manifest shared for it (0: none yet)
    manifest_id: CID | None
    announced_ms: int | None


@dataclass(frozen=True)
class Arrival:
    """`count` new instances of `study_uid` arrived on `route`."""

    study_uid: str
    route: str
    count: int


class GatewayStore(Protocol):
    # -- announcements ---------------------------------------------------------------------
    def note_arrivals(self, arrivals: Sequence[Arrival], now_ms: int) -> None:
        """Record instances arrived (creates the row, or counts them in)."""
        ...

    def announcements(self) -> list[Announcement]: ...

    def announcement(self, study_uid: str, route: str) -> Announcement | None: ...

    def mark_announced(self, study_uid: str, route: str, manifest_id: CID, revision: int, covered_ms: int,
                       now_ms: int) -> bool:
        """The study was shared with every instance that arrived up to `covered_ms`.

        Its instances count restarts unless an instance arrived after covered_ms (then the
        count stays, for the next revision). Returns whether everything arrived was covered.
        """
        ...

    def forget_announcement(self, study_uid: str, route: str) -> None:
        """Drop the row (the study is gone, or its route is no longer configured)."""
        ...

    def writes_with(self, store: object) -> bool:
        """Do this store's writes join `store.atomic()` (the metadata store's transaction), so that both
        commit together? (SQLite: when it shares that store's connection.)"""
        ...

    def close(self) -> None: ...
