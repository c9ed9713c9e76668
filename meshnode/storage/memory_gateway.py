"""GatewayStore in dictionaries: for tests of the layers above (same contract as SQLite)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from meshnode.storage.gateway_store import (
    Announcement,
    AnnouncementState,
    Arrival,
    ForwardInstance,
    ForwardItem,
    ForwardProgress,
    ForwardResult,
    ForwardState,
)
from meshnode.storage.sqlite_gateway import progress_of
from protocol.cid import CID


class MemoryGatewayStore:
    def __init__(self) -> None:
        self._announcements: dict[tuple[str, str], Announcement] = {}
        self._items: dict[tuple[CID, str, str], ForwardItem] = {}
        self._enqueued: dict[tuple[CID, str, str], int] = {}

    def close(self) -> None:
        """Nothing to release."""

    # -- announcements ---------------------------------------------------------------------
    def note_arrivals(self, arrivals: Sequence[Arrival], now_ms: int) -> None:
        for a in arrivals:
            key = (a.study_uid, a.route)
            old = self._announcements.get(key)
            if old is None:
                self._announcements[key] = Announcement(a.study_uid, a.route, AnnouncementState.PENDING, a.count,
                                                        now_ms, now_ms, 0, None, None, 0, 0, "")
            elif old.state is AnnouncementState.ANNOUNCED:
                self._announcements[key] = replace(old, state=AnnouncementState.PENDING, instances=a.count,
                                                   first_ms=now_ms, last_instance_ms=max(old.last_instance_ms, now_ms))
            else:
                self._announcements[key] = replace(old, instances=old.instances + a.count,
                                                   last_instance_ms=max(old.last_instance_ms, now_ms))

    def announcements(self, state: AnnouncementState | None = None) -> list[Announcement]:
        rows = [a for a in self._announcements.values() if state is None or a.state is state]
        return sorted(rows, key=lambda a: (a.last_instance_ms, a.study_uid, a.route))

    def announcement(self, study_uid: str, route: str) -> Announcement | None:
        return self._announcements.get((study_uid, route))

    def mark_announced(self, study_uid: str, route: str, manifest_id: CID, revision: int, covered_ms: int,
                       now_ms: int) -> bool:
        old = self._announcements.get((study_uid, route))
        if old is None:
            return False
        done = old.last_instance_ms <= covered_ms
        self._announcements[(study_uid, route)] = replace(
            old, manifest_id=manifest_id, revision=revision, announced_ms=now_ms, attempts=0, next_attempt_ms=0,
            last_error="", state=AnnouncementState.ANNOUNCED if done else old.state)
        return done

    def announce_failed(self, study_uid: str, route: str, error: str, next_attempt_ms: int) -> None:
        old = self._announcements.get((study_uid, route))
        if old is not None:
            self._announcements[(study_uid, route)] = replace(old, attempts=old.attempts + 1,
                                                              next_attempt_ms=next_attempt_ms, last_error=error[:300])

    def forget_announcement(self, study_uid: str, route: str) -> None:
        self._announcements.pop((study_uid, route), None)

    # -- forward queue -------------------------------------------------------------------------
    def enqueue_forward(self, manifest_id: CID, study_uid: str, destination: str, priority: int,
                        instances: Sequence[ForwardInstance], now_ms: int) -> int:
        new = 0
        for seq, inst in enumerate(instances):
            key = (manifest_id, destination, inst.sop_instance_uid)
            if key in self._items:
                continue
            held = any(i.destination == destination and i.sop_instance_uid == inst.sop_instance_uid
                       and i.digest == inst.digest and i.state is ForwardState.SENT for i in self._items.values())
            state = ForwardState.SENT if held else ForwardState.WAITING
            self._items[key] = ForwardItem(manifest_id, destination, seq, inst.sop_instance_uid, inst.digest,
                                           study_uid, priority, state, 0, 0,
                                           "already forwarded with an earlier manifest" if held else "", None, now_ms)
            self._enqueued[key] = now_ms
            new += 0 if held else 1
        return new

    def _update(self, match: Callable[[ForwardItem], bool], **changes: Any) -> int:
        n = 0
        for key, item in list(self._items.items()):
            if match(item):
                self._items[key] = replace(item, **changes)
                n += 1
        return n

    def release_forward(self, manifest_id: CID, now_ms: int) -> int:
        return self._update(lambda i: i.manifest_id == manifest_id and i.state is ForwardState.WAITING,
                            state=ForwardState.PENDING, next_attempt_ms=0, updated_ms=now_ms)

    def waiting_manifests(self) -> list[CID]:
        return sorted({i.manifest_id for i in self._items.values() if i.state is ForwardState.WAITING},
                      key=lambda c: c.to_bytes())

    def forward_due(self, destination: str, now_ms: int, limit: int) -> list[ForwardItem]:
        due = [(k, i) for k, i in self._items.items() if i.destination == destination
               and i.state is ForwardState.PENDING and i.next_attempt_ms <= now_ms]
        due.sort(key=lambda ki: (ki[1].priority, self._enqueued[ki[0]], ki[1].manifest_id.to_bytes(), ki[1].seq))
        return [i for _, i in due[:limit]]

    def next_forward_ms(self, destination: str) -> int | None:
        due = [i.next_attempt_ms for i in self._items.values()
               if i.destination == destination and i.state is ForwardState.PENDING]
        return min(due) if due else None

    def record_forward(self, results: Sequence[ForwardResult], now_ms: int) -> None:
        for r in results:
            key = (r.manifest_id, r.destination, r.sop_instance_uid)
            item = self._items.get(key)
            if item is not None and item.state is ForwardState.PENDING:
                self._items[key] = replace(item, state=r.state, attempts=r.attempts, next_attempt_ms=r.next_attempt_ms,
                                           last_error=r.last_error[:300], status=r.status, updated_ms=now_ms)

    def defer_forward(self, destination: str, next_attempt_ms: int, error: str, now_ms: int) -> None:
        for key, item in list(self._items.items()):
            if item.destination == destination and item.state is ForwardState.PENDING:
                self._items[key] = replace(item, next_attempt_ms=max(item.next_attempt_ms, next_attempt_ms),
                                           last_error=error[:300], updated_ms=now_ms)

    def cancel_forward(self, manifest_id: CID, now_ms: int) -> int:
        return self._update(lambda i: i.manifest_id == manifest_id and i.state in (
            ForwardState.WAITING, ForwardState.PENDING, ForwardState.FAILED),
            state=ForwardState.CANCELLED, updated_ms=now_ms, last_error="recalled")

    def retry_forward(self, manifest_id: CID | None, destination: str | None, now_ms: int) -> int:
        return self._update(lambda i: i.state is ForwardState.FAILED
                            and (manifest_id is None or i.manifest_id == manifest_id)
                            and (destination is None or i.destination == destination),
                            state=ForwardState.PENDING, attempts=0, next_attempt_ms=0, updated_ms=now_ms)

    def forward_items(self, manifest_id: CID) -> list[ForwardItem]:
        return sorted((i for i in self._items.values() if i.manifest_id == manifest_id),
                      key=lambda i: (i.destination, i.seq))

    def forward_progress(self, manifest_id: CID) -> dict[str, ForwardProgress]:
        return progress_of(self.forward_items(manifest_id))

    def forward_counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for i in self._items.values():
            counts = out.setdefault(i.destination, {})
            counts[i.state.value] = counts.get(i.state.value, 0) + 1
        return out
