"""Where patient links and their history are kept: the LinkStore Protocol, and the in-memory implementation
(SQLite: meshnode.patient.sqlite_links, tables in meshnode/storage/schema.py).

Every change of a link is a compare-and-set on its `version` (protocol.patient_link bumps it on every
transition): of two requests that read the same version, one writes and the other reads again and retries.
So two wrong codes at once both count, and a revoke that lands first makes every later request see it. The
history events of a change are written in the same transaction as the change, and only if it was written.
Several links may change in one transaction (`update_links`: a share and its forwards revoked together, all or
nothing). A row the schema refuses (a kind or channel not known) raises ValueError in both stores; a duplicate ID
or token hash is False.

History is read newest-last but only the newest `limit` events (a flood of old events cannot hide a revoke).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from protocol.patient_link import EMAIL, KINDS, SMS, PatientLink

#: history actions (what the staff see)
ACTIONS = ("created", "email sent", "email failed", "code sent", "code not delivered", "code wrong", "locked",
           "unlocked", "opened", "verified", "viewed", "downloaded", "key image", "uploaded", "forwarded",
           "forward notice sent", "forward notice failed", "lock notice sent", "revoked")
Change = tuple[PatientLink, int, tuple["LinkEvent", ...]]


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

    def update_links(self, changes: tuple[Change, ...]) -> bool:
        """Each (link, expected version, events) as update_link, all in one transaction: all written or none."""
        ...

    def links(self, kind: str | None = None, created_by: str | None = None, limit: int = 200,
              offset: int = 0, owner: str | None = None) -> list[PatientLink]:
        """Newest first (links made at the same time: the last made first), skipping `offset`; `owner`: the links
        it made and the shares forwarded from those."""
        ...

    def children(self, link_id: str) -> list[PatientLink]:
        """The shares forwarded from this one."""
        ...

    def add_events(self, events: tuple[LinkEvent, ...]) -> None: ...

    def events(self, link_id: str, limit: int = 1000) -> list[LinkEvent]:
        """The newest `limit` events, oldest first."""
        ...

    def last_event_at(self, link_id: str, action: str, client: str) -> float:
        """When the newest event of this action from this client was written (0.0: never)."""
        ...


def check_row(link: PatientLink) -> None:
    """What the SQLite schema's CHECKs refuse, refused the same way by both stores."""
    if link.kind not in KINDS or link.code_channel not in (SMS, EMAIL):
        raise ValueError(f"patient link {link.link_id}: kind or code channel not known")


class MemoryLinkStore:
    def __init__(self) -> None:
        self._links: dict[str, PatientLink] = {}
        self._order: list[str] = []
        self._events: list[LinkEvent] = []

    def insert_link(self, link: PatientLink, events: tuple[LinkEvent, ...] = ()) -> bool:
        check_row(link)
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

    def update_links(self, changes: tuple[Change, ...]) -> bool:
        for link, expected, _ in changes:
            check_row(link)
            stored = self._links.get(link.link_id)
            if stored is None or stored.version != expected:
                return False
        for link, _, events in changes:
            self._links[link.link_id] = link
            self._events.extend(events)
        return True

    def forward_link(self, parent: PatientLink, expected_version: int, child: PatientLink,
                     events: tuple[LinkEvent, ...] = ()) -> bool:
        check_row(child)
        stored = self._links.get(parent.link_id)
        if stored is None or stored.version != expected_version or child.link_id in self._links:
            return False
        self._links[parent.link_id] = parent
        self._links[child.link_id] = child
        self._order.append(child.link_id)
        self._events.extend(events)
        return True

    def links(self, kind: str | None = None, created_by: str | None = None, limit: int = 200,
              offset: int = 0, owner: str | None = None) -> list[PatientLink]:
        rows = [self._links[i] for i in reversed(self._order)]  # newest first, ties by the order made
        rows = [x for x in rows if (kind is None or x.kind == kind) and (created_by is None or
                                                                         x.created_by == created_by)]
        if owner is not None:
            mine = {x.link_id for x in self._links.values() if x.created_by == owner}
            rows = [x for x in rows if x.link_id in mine or x.parent_id in mine]
        rows.sort(key=lambda x: x.created_at, reverse=True)  # stable
        return rows[offset:offset + limit]

    def children(self, link_id: str) -> list[PatientLink]:
        return [self._links[i] for i in self._order if self._links[i].parent_id == link_id]

    def add_events(self, events: tuple[LinkEvent, ...]) -> None:
        self._events.extend(events)

    def events(self, link_id: str, limit: int = 1000) -> list[LinkEvent]:
        mine = [e for e in self._events if e.link_id == link_id]
        return mine[max(0, len(mine) - limit):]

    def last_event_at(self, link_id: str, action: str, client: str) -> float:
        return next((e.at for e in reversed(self._events) if (e.link_id, e.action, e.client) == (link_id, action,
                                                                                                  client)), 0.0)
