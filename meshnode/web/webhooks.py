"""Webhook notifications: study announced, arrived, delivered, failed; signed, queued, retried.

Each [[webhook]] receiver gets a JSON POST:

    X-Meshnode-Event: arrived
    X-Meshnode-Delivery: <id, the same on every retry: deduplicate on it>
    X-Meshnode-Signature: t=<unix time of this attempt>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>

An event is queued in the database (one item per receiver, in the node's
durable retry queue "webhook:<receiver>", meshnode.storage.retry_queue) before
the node goes on, so a restart loses nothing; a failed POST (no answer, or not
2xx) is retried with backoff (2 s doubling to 15 min, +-10 % jitter) up to
max_attempts, then the item fails for good, logged and counted in /metrics.
The retries are protocol.outbox.Outbox's, driven by meshnode.node.retry_driver,
like the node's deliveries.

The POSTs run on the node's trio loop (httpx.AsyncClient, one per run, no
proxies from the environment, no redirects followed); each attempt has a
deadline for the whole exchange, so a receiver that answers slowly, byte by
byte, fails it like one that does not answer; at most 4 KiB of an answer is read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING

import httpx
import trio

from common.describe import iso
from meshnode.node.events import StudyEvent
from meshnode.notify.signed_post import AttemptResult, post, signature, verify_signature
from meshnode.node.retry_driver import Database, Failure, RetryDriver, RetryPolicy, StoreFn
from meshnode.storage.records import hash_uid
from meshnode.web.config import WebhookConfig
from protocol.backoff import Backoff
from protocol.errors import UnavailableError
from protocol.outbox import DeliveryRecord, DeliveryState

if TYPE_CHECKING:
    from trio_typing import TaskStatus

log = logging.getLogger(__name__)
#: the signing helpers moved to meshnode.notify.signed_post (shared with the patient links' SMS gateway)
__all__ = ["AttemptResult", "Webhooks", "post", "signature", "verify_signature"]

#: Between attempts of one notification: 2 s doubling to 15 min.
RETRY_BACKOFF = Backoff(base=2.0, factor=2.0, cap=900.0)

TIMEOUT_S = 10.0  # the same as meshnode.notify.signed_post's
CONCURRENCY = 4
KEEP_SENT_BODIES_MS = 7 * 86_400_000
QUEUE_PREFIX = "webhook:"


def delivery_id(hook: WebhookConfig, event_key: str) -> str:
    return hashlib.sha256(f"{hook.name}\n{event_key}".encode()).hexdigest()[:24]


def event_body(hook: WebhookConfig, event: StudyEvent, org: str, peer_id: str, public_url: str,
               event_key: str, now: float) -> bytes:
    body: dict[str, object] = {
        "id": delivery_id(hook, event_key), "event": event.kind.value, "at": iso(int(now)),
        "node": {"org": org, "peer_id": peer_id}, "manifest_id": event.manifest_id,
        "direction": event.direction, "org": event.org, "priority": event.priority,
        "instances": event.instances, "detail": event.detail, "study": hash_uid(event.study_uid),
    }
    if event.duration_s is not None:
        body["duration_s"] = round(event.duration_s, 3)
    if event.route:
        body["route"] = event.route
    if hook.include_identifiers:
        body["study_uid"] = event.study_uid
        body["accession"] = event.accession
    if public_url:
        body["link"] = f"{public_url}/ui/#{'inbox' if event.direction == 'received' else 'outbox'}"
    return json.dumps(body, sort_keys=True).encode()


class EventKeys:
    """A notification's key in its receiver's queue: the event key (`<event>:<manifest>:<org>`); ref: the event."""

    def encode(self, key: str) -> str:
        return key

    def decode(self, text: str) -> str:
        return text

    def ref(self, key: str) -> str:
        return key.split(":", 1)[0]


EVENT_KEYS = EventKeys()


def classify(exc: BaseException) -> Failure | None:
    """The receiver did not take a notification (UnavailableError: no complete answer, or not 2xx): retried.
    Anything else is a bug."""
    return Failure(str(exc), False) if isinstance(exc, UnavailableError) else None


def queue_name(hook: WebhookConfig) -> str:
    return QUEUE_PREFIX + hook.name


class Webhooks:
    def __init__(self, hooks: tuple[WebhookConfig, ...], db: Database, org: str, peer_id: str,
                 public_url: str = "", clock: Callable[[], float] = time.time, timeout_s: float = TIMEOUT_S, *,
                 backoff: Backoff = RETRY_BACKOFF, rng: random.Random | None = None) -> None:
        self.hooks = {h.name: h for h in hooks}
        self.db = db
        self.org = org
        self.peer_id = peer_id
        self.public_url = public_url
        self.clock = clock
        self.timeout_s = timeout_s
        self._limit = trio.CapacityLimiter(CONCURRENCY)  # POSTs at once, over every receiver
        self._client: httpx.AsyncClient | None = None
        self.drivers: dict[str, RetryDriver[str]] = {
            h.name: RetryDriver(queue_name(h), EVENT_KEYS, db, clock, partial(self._attempt, h), classify,
                                policy=RetryPolicy(backoff, attempt_timeout=timeout_s + 5.0,
                                                   max_attempts=h.max_attempts, jitter=0.1, concurrency=CONCURRENCY),
                                on_ended=partial(self._ended, h), rng=rng)
            for h in hooks}
        self.failures = 0
        self.sent = 0

    async def on_event(self, event: StudyEvent) -> None:
        """Queue the event for every receiver that wants it (durably, before returning)."""
        now = self.clock()
        event_key = f"{event.kind.value}:{event.manifest_id}:{event.org}"
        for hook in self.hooks.values():
            if not hook.wants(event.kind.value, event.org, event.priority, event.route):
                continue
            body = event_body(hook, event, self.org, self.peer_id, self.public_url, event_key, now)
            await self.drivers[hook.name].enqueue([(event_key, body)])

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with httpx.AsyncClient(trust_env=False, follow_redirects=False, timeout=self.timeout_s) as client:
            self._client = client
            try:
                async with trio.open_nursery() as nursery:
                    for driver in self.drivers.values():
                        await nursery.start(driver.run)
                    task_status.started()
                    while True:
                        before = self.clock() - KEEP_SENT_BODIES_MS / 1000
                        for driver in self.drivers.values():
                            await driver.drop_payloads(before)
                        await trio.sleep(3600)
            finally:
                self._client = None

    async def counts(self) -> dict[tuple[str, str], int]:
        """(receiver, state) -> notifications, for /metrics."""
        counts = await self.db.run(lambda s: s.queue_counts(QUEUE_PREFIX))
        return {(queue.removeprefix(QUEUE_PREFIX), state.value): n for (queue, state), n in counts.items()}

    async def _attempt(self, hook: WebhookConfig, event_key: str, body: bytes | None) -> None:
        client = self._client
        if client is None:
            raise UnavailableError("the webhook client is not running")
        if not body:
            raise UnavailableError("the notification's body was dropped")  # not reached: kept until sent
        event = EVENT_KEYS.ref(event_key)
        headers = {"X-Meshnode-Event": event, "X-Meshnode-Delivery": delivery_id(hook, event_key),
                   "X-Meshnode-Signature": signature(hook.secret, int(self.clock()), body)}
        # a node stopping cancels the attempt (it is retried after the restart)
        async with self._limit:
            result = await post(client, hook.url, body, headers, self.timeout_s)
        if not result.ok:
            self.failures += 1
            raise UnavailableError(result.error)
        self.sent += 1

    def _ended(self, hook: WebhookConfig, record: DeliveryRecord[str], body: bytes | None
               ) -> tuple[StoreFn | None, Callable[[], Awaitable[None]] | None]:
        if record.state is DeliveryState.FAILED:
            log.warning("webhook %s to %s failed for good after %d attempt(s): %s", EVENT_KEYS.ref(record.key),
                        hook.name, record.attempts, record.last_error)
        return None, None
