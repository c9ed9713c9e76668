"""FetchSchedulers: one FetchScheduler per sender organisation, the way a node fetches (and the simulator too).

A node fetches each sender org's manifests in a scheduler of their own, so a block done under one
sender's manifest never counts for another sender's: counting it would tell the second sender, by what
the node then does not ask it for, what the node holds or is fetching (protocol.access.may_reuse applies
across manifests in flight too). Priorities, peer windows, strikes and bans are therefore per sender org:
a STAT study from one sender does not overtake a routine one from another at a shared holder, and a
peer banned while fetching one sender's study may still serve another's.
"""

from __future__ import annotations

from collections.abc import Iterator

from protocol.fetch import FetchScheduler
from protocol.fetch_settings import FetchSettings


class FetchSchedulers:
    def __init__(self, settings: FetchSettings | None = None) -> None:
        self.settings = FetchSettings() if settings is None else settings
        self._by_sender: dict[str, FetchScheduler] = {}

    def for_sender(self, sender_org: str) -> FetchScheduler:
        """The scheduler that fetches `sender_org`'s manifests (created on first use)."""
        sched = self._by_sender.get(sender_org)
        if sched is None:
            sched = self._by_sender[sender_org] = FetchScheduler(self.settings)
        return sched

    def get(self, sender_org: str) -> FetchScheduler | None:
        return self._by_sender.get(sender_org)

    def items(self) -> list[tuple[str, FetchScheduler]]:
        """(sender org, scheduler) in the order they were created (a list: drivers add while they iterate)."""
        return list(self._by_sender.items())

    def __iter__(self) -> Iterator[FetchScheduler]:
        return iter(list(self._by_sender.values()))

    def __len__(self) -> int:
        return len(self._by_sender)

    def set_relayed(self, peer: str, relayed: bool | None) -> None:
        """The peer's connection changed path (relayed, or direct after hole punching): every scheduler knows.
        None (not known now) keeps each scheduler's last known path."""
        for sched in list(self._by_sender.values()):
            sched.set_relayed(peer, relayed)

    def peer_lost(self, peer: str, now: float) -> None:
        """A peer's connection closed (or it was revoked): every scheduler forgets what it holds."""
        for sched in list(self._by_sender.values()):
            sched.peer_lost(peer, now)
