"""GatewayStore in dictionaries: for tests of the layers above (same contract as SQLite)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from meshnode.storage.gateway_store import Announcement, Arrival
from protocol.cid import CID


class MemoryGatewayStore:
    def __init__(self) -> None:
        self._announcements: dict[tuple[str, str], Announcement] = {}

    def close(self) -> None:
        """Nothing to release."""

    # -- announcements ---------------------------------------------------------------------
    def writes_with(self, store: object) -> bool:
        return False  # a dictionary: nothing for the metadata store's atomic() to undo

    def note_arrivals(self, arrivals: Sequence[Arrival], now_ms: int) -> None:
        for a in arrivals:
            key = (a.study_uid, a.route)
            old = self._announcements.get(key)
            if old is None:
                self._announcements[key] = Announcement(a.study_uid, a.route, a.count, now_ms, now_ms, 0, None, None)
            else:
                self._announcements[key] = replace(old, instances=old.instances + a.count,
                                                   first_ms=now_ms if old.instances == 0 else old.first_ms,
                                                   last_instance_ms=max(old.last_instance_ms, now_ms))

    def announcements(self) -> list[Announcement]:
        return sorted(self._announcements.values(), key=lambda a: (a.last_instance_ms, a.study_uid, a.route))

    def announcement(self, study_uid: str, route: str) -> Announcement | None:
        return self._announcements.get((study_uid, route))

    def mark_announced(self, study_uid: str, route: str, manifest_id: CID, revision: int, covered_ms: int,
                       now_ms: int) -> bool:
        old = self._announcements.get((study_uid, route))
        if old is None:
            return False
        done = old.last_instance_ms <= covered_ms
        self._announcements[(study_uid, route)] = replace(
            old, manifest_id=manifest_id, revision=revision, announced_ms=now_ms, instances=0 if done else old.instances)
        return done

    def forget_announcement(self, study_uid: str, route: str) -> None:
        self._announcements.pop((study_uid, route), None)
