"""Webhook notifications: study announced, arrived, delivered, failed; signed, queued, retried.

Each [[webhook]] receiver gets a JSON POST:

    X-Meshnode-Event: arrived
    X-Meshnode-Delivery: <id, the same on every retry: deduplicate on it>
    X-Meshnode-Signature: t=<unix time of this attempt>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>

An event is queued in the database (one row per receiver) before the node
goes on, so a restart loses nothing; a failed POST (no answer, or not 2xx) is
retried with backoff (2 s doubling to 15 min) up to max_attempts, then the
row is marked failed, logged and counted in /metrics.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

import trio

from common.describe import iso
from meshnode.node.events import StudyEvent
from meshnode.node.sender import backoff_s
from meshnode.storage.records import hash_uid
from meshnode.storage.webhook_queue import FAILED, PENDING, SENT, WebhookJob, WebhookQueue
from meshnode.web.config import WebhookConfig

log = logging.getLogger(__name__)

TIMEOUT_S = 10.0
CONCURRENCY = 4
TICK_S = 1.0
KEEP_SENT_BODIES_MS = 7 * 86_400_000


def signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_signature(secret: str, header: str, body: bytes, now: float, tolerance_s: int = 300) -> bool:
    """What a receiver does (and the tests): check the HMAC and that the attempt is recent."""
    fields = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance_s:
        return False
    expected = signature(secret, timestamp, body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, fields.get("v1", ""))


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


@dataclass(frozen=True)
class AttemptResult:
    ok: bool
    error: str


def post(url: str, body: bytes, headers: dict[str, str], timeout: float = TIMEOUT_S) -> AttemptResult:
    """One POST (blocking: run on a worker thread)."""
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "meshnode", **headers})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read(4096)
            return AttemptResult(200 <= response.status < 300, f"HTTP {response.status}")
    except urllib.error.HTTPError as exc:
        return AttemptResult(False, f"HTTP {exc.code}")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return AttemptResult(False, f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"[:300])


class Webhooks:
    def __init__(self, hooks: tuple[WebhookConfig, ...], queue: WebhookQueue, org: str, peer_id: str,
                 public_url: str = "", clock: Callable[[], float] = time.time) -> None:
        self.hooks = {h.name: h for h in hooks}
        self.queue = queue
        self.org = org
        self.peer_id = peer_id
        self.public_url = public_url
        self.clock = clock
        self._db = trio.CapacityLimiter(1)
        self._wake = trio.Event()
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
            await trio.to_thread.run_sync(self.queue.enqueue, hook.name, event_key, event.kind.value, body,
                                          int(now * 1000), limiter=self._db)
        self._wake.set()

    async def run(self) -> None:
        limiter = trio.CapacityLimiter(CONCURRENCY)
        last_purge = 0.0
        while True:
            wake = self._wake = trio.Event()
            now_ms = int(self.clock() * 1000)
            jobs = await trio.to_thread.run_sync(self.queue.due, now_ms, 100, limiter=self._db)
            async with trio.open_nursery() as nursery:
                for job in jobs:
                    nursery.start_soon(self._attempt, job, limiter)
            if self.clock() - last_purge > 3600:
                last_purge = self.clock()
                await trio.to_thread.run_sync(self.queue.purge_sent, int(last_purge * 1000) - KEEP_SENT_BODIES_MS,
                                              limiter=self._db)
            with trio.move_on_after(TICK_S):
                await wake.wait()

    async def _attempt(self, job: WebhookJob, limiter: trio.CapacityLimiter) -> None:
        hook = self.hooks.get(job.hook)
        now_ms = int(self.clock() * 1000)
        if hook is None:  # the receiver was removed from node.toml
            await trio.to_thread.run_sync(self.queue.record_attempt, job.id, FAILED, job.attempts, 0,
                                          "receiver no longer configured", now_ms, limiter=self._db)
            return
        headers = {"X-Meshnode-Event": job.event, "X-Meshnode-Delivery": delivery_id(hook, job.event_key),
                   "X-Meshnode-Signature": signature(hook.secret, int(self.clock()), job.body)}
        # abandon_on_cancel: a node stopping does not wait for a slow receiver (the attempt is retried)
        result = await trio.to_thread.run_sync(post, hook.url, job.body, headers, limiter=limiter,  # type: ignore[call-arg]
                                               abandon_on_cancel=True)
        attempts = job.attempts + 1
        now_ms = int(self.clock() * 1000)
        if result.ok:
            self.sent += 1
            state, next_ms, error = SENT, now_ms, ""
        elif attempts >= hook.max_attempts:
            self.failures += 1
            state, next_ms, error = FAILED, 0, result.error
            log.warning("webhook %s to %s failed for good after %d attempt(s): %s", job.event, hook.name,
                        attempts, result.error)
        else:
            self.failures += 1
            state, next_ms, error = PENDING, now_ms + int(backoff_s(attempts) * 1000), result.error
            log.info("webhook %s to %s failed (attempt %d), retrying in %.0f s: %s", job.event, hook.name, attempts,
                     backoff_s(attempts), result.error)
        await trio.to_thread.run_sync(self.queue.record_attempt, job.id, state, attempts, next_ms, error, now_ms,
                                      limiter=self._db)
