"""What happened to a study, told to whoever listens (webhooks, metrics).

The node's services publish; listeners are awaited in turn, so a listener
that persists the event (the webhook queue) has done so before the service
goes on. A listener's failure is logged and does not stop the others.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum

import trio

log = logging.getLogger(__name__)


class StudyEventKind(str, Enum):
    ANNOUNCED = "announced"  # a manifest for this node arrived (fetching starts)
    ARRIVED = "arrived"  # every instance fetched and verified
    DELIVERED = "delivered"  # a recipient's signed receipt verified (sender side)
    FAILED = "failed"  # verification, delivery or forwarding failed for good
    FORWARDED = "forwarded"  # a recipient's verified report of its PACS forward (sender side; detail: its state)


@dataclass(frozen=True)
class StudyEvent:
    kind: StudyEventKind
    manifest_id: str
    study_uid: str
    org: str  # the other side: the sender of a received study, the recipient of a sent one
    priority: str
    direction: str  # "received" or "sent"
    detail: str = ""
    accession: str = ""
    instances: int = 0
    duration_s: float | None = None  # ARRIVED: from the start of fetching to verified
    route: str = ""  # the routing rule a sent study came through, if any


Listener = Callable[[StudyEvent], Awaitable[None]]


class StudyEvents:
    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    async def publish(self, event: StudyEvent) -> None:
        for listener in list(self._listeners):
            try:
                await listener(event)
            except trio.Cancelled:
                raise
            except Exception:
                log.exception("study event listener failed on %s of %s", event.kind.value, event.manifest_id)
