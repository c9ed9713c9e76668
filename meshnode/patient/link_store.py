"""Where patient links and their history are kept: the LinkStore Protocol, and the in-memory implementation
(SQLite: meshnode.patient.sqlite_links, tables in meshnode/storage/schema.py).

Every change of a link is a compare-and-set on its `version` (protocol.patient_link bumps it on every
transition): of two requests that read the same version, one writes and the other reads again and retries.
So two wrong codes at once both count, and a revoke that lands first makes every later request see it. The
history events of a change are written in the same transaction as the change, and only if it was written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from protocol.patient_link import PatientLink

#: history actions (what the staff see)
ACTIONS = ("created", "email sent", "email failed", "code sent", "code wrong", "locked", "unlocked", "opened",
           "verified", "viewed", "downloaded", "key image", "uploaded", "forwarded", "revoked")


@dataclass(frozen=True)
class LinkEvent:
    link_id: str
    at: float
    action: str
    #: "user:NAME" (staff) or "share:<id>" (the person holding the link)
    actor: str
    #: the client address for the person's actions ("" for staff and the node)
    client: str = ""
    #: nothing clinical, no patient identifiers
    detail: str = ""


class LinkStore(Protocol):
    def insert_link(self, link: PatientLink, events: tuple[LinkEvent, ...] = ()) -> bool:
        """A new link; False (nothing written) when its ID or token hash exists."""
        ...

    def link(self, link_id: str) -> PatientLink | None: ...

    def link_by_token(self, token_hash: str) -> PatientLink | None: ...

    def update_link(self, link: PatientLink, expected_version: int, events: tuple[LinkEvent, ...] = ()) -> bool:
        """Replace the link while its stored version is `expected_version`, with its events; True if written."""
        ...

    def forward_link(self, parent: PatientLink, expected_version: int, child: PatientLink,
                     events: tuple[LinkEvent, ...] = ()) -> bool:
        """The parent's update and the child's insert in one transaction (compare-and-set on the parent)."""
        ...

    def links(self, kind: str | None = None, created_by: str | None = None, limit: int = 200) -> list[PatientLink]:
        """Newest first (links made at the same time: the last made first)."""
        ...

    def children(self, link_id: str) -> list[PatientLink]:
        """The shares forwarded from this one."""
        ...

    def add_events(self, events: tuple[LinkEvent, ...]) -> None: ...

    def events(self, link_id: str, limit: int = 1000) -> list[LinkEvent]:
        """Oldest first."""
        ...


class MemoryLinkStore:
    def __init__(self) -> None:
        self._links: dict[str, PatientLink] = {}
        self._order: list[str] = []
        self._events: list[LinkEvent] = []

    def insert_link(self, link: PatientLink, events: tuple[LinkEvent, ...] = ()) -> bool:
        if link.link_id in self._links or any(x.token_hash == link.token_hash for x in self._links.values()):
            return False
        self._links[link.link_id] = link
        self._order.append(link.link_id)
        self._events.extend(events)
        return True

    def link(self, link_id: str) -> PatientLink | None:
        return self._links.get(link_id)

    def link_by_token(self, token_hash: str) -> PatientLink | None:
        return next((x for x in self._links.values() if x.token_hash == token_hash), None)

    def update_link(self, link: PatientLink, expected_version: int, events: tuple[LinkEvent, ...] = ()) -> bool:
        stored = self._links.get(link.link_id)
        if stored is None or stored.version != expected_version:
            return False
        self._links[link.link_id] = link
        self._events.extend(events)
        return True

    def forward_link(self, parent: PatientLink, expected_version: int, child: PatientLink,
                     events: tuple[LinkEvent, ...] = ()) -> bool:
        stored = self._links.get(parent.link_id)
        if stored is None or stored.version != expected_version or child.link_id in self._links:
            return False
        self._links[parent.link_id] = parent
        self._links[child.link_id] = child
        self._order.append(child.link_id)
        self._events.extend(events)
        return True

    def links(self, kind: str | None = None, created_by: str | None = None, limit: int = 200) -> list[PatientLink]:
        rows = [self._links[i] for i in reversed(self._order)]  # newest first, ties by the order made
        rows = [x for x in rows if (kind is None or x.kind == kind) and (created_by is None or
                                                                         x.created_by == created_by)]
        rows.sort(key=lambda x: x.created_at, reverse=True)  # stable
        return rows[:limit]

    def children(self, link_id: str) -> list[PatientLink]:
        return [self._links[i] for i in self._order if self._links[i].parent_id == link_id]

    def add_events(self, events: tuple[LinkEvent, ...]) -> None:
        self._events.extend(events)

    def events(self, link_id: str, limit: int = 1000) -> list[LinkEvent]:
        return [e for e in self._events if e.link_id == link_id][:limit]
