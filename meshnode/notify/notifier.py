"""Email to staff when a study arrives: queued durably on the node's "arrived" event, sent over SMTP.

On each ARRIVED event of a received manifest whose priority [notify] priorities includes, the notifier
finds the recipient (meshnode.notify.recipient: the manifest's `attention` person if they are a user here
with an email address, else the organisation's address), writes the message (meshnode.notify.message: no
patient identifiers) and queues it in the node's durable retry queue "email" (meshnode.storage.retry_queue,
the same table as the webhooks and deliveries) before the event's publisher goes on: from then on it is
pending, and a restart resumes it. One email per manifest (the queue key is the manifest ID).

Each attempt is one SMTP conversation (meshnode.notify.smtp) in a worker thread; a failure is retried with
backoff (30 s doubling to 1 h, +-10 % jitter) up to max_attempts, a 5xx refusal of the recipient or the
message ends it at once. Queued, sent and failed emails are audited (110100 Application Activity) with
the recipient address and the hashed Study UID, never patient data.
"""

from __future__ import annotations

import collections
import logging
import random
import time
from collections.abc import Awaitable, Callable
from email.parser import BytesParser
from email.policy import SMTP
from functools import partial
from typing import TYPE_CHECKING

import trio

from meshnode.node.events import StudyEvent, StudyEventKind
from meshnode.node.retry_driver import (
    Database,
    Failure,
    RetryDriver,
    RetryPolicy,
    StoreFn,
)
from meshnode.notify import smtp
from meshnode.notify.config import NotifyConfig
from meshnode.notify.message import Arrival, arrival_message
from meshnode.notify.recipient import is_address, resolve_recipient
from meshnode.storage.audit import AuditEvent, EventCode, Outcome
from meshnode.storage.records import hash_uid
from meshnode.storage.users import UserStore
from protocol.backoff import Backoff
from protocol.cid import CID
from protocol.document import Signed, open_document
from protocol.errors import UnavailableError
from protocol.manifest import Manifest
from protocol.outbox import DeliveryRecord, DeliveryState

if TYPE_CHECKING:
    from trio_typing import TaskStatus

log = logging.getLogger(__name__)

QUEUE = "email"
#: Between attempts of one email: 30 s doubling to 1 h.
RETRY_BACKOFF = Backoff(base=30.0, factor=2.0, cap=3600.0)
KEEP_SENT_MESSAGES_MS = 7 * 86_400_000

AuditFn = Callable[[AuditEvent], Awaitable[None]]
SendFn = Callable[[NotifyConfig, bytes, str], None]


class ManifestKeys:
    """An email's key in the queue: the manifest ID it is about (also its ref)."""

    def encode(self, key: str) -> str:
        return key

    def decode(self, text: str) -> str:
        return text

    def ref(self, key: str) -> str:
        return key


KEYS = ManifestKeys()


def recipient_of(message: bytes) -> str:
    """The envelope recipient of a queued message: its To address (written by this node)."""
    headers = BytesParser(policy=SMTP).parsebytes(message, headersonly=True)
    addresses: tuple[object, ...] = tuple(getattr(headers.get("To"), "addresses", ()))
    address = getattr(addresses[0], "addr_spec", "") if len(addresses) == 1 else ""
    if not is_address(address):
        raise smtp.EmailError("the queued message has no usable To address", permanent=True)
    return address


def classify(exc: BaseException) -> Failure | None:
    if isinstance(exc, smtp.EmailError):
        return Failure(str(exc), exc.permanent)
    return Failure(str(exc), False) if isinstance(exc, UnavailableError) else None


def _open(manifest_id: CID, raw: bytes) -> Signed[Manifest]:
    return open_document(raw, Manifest)


class Notifier:
    def __init__(self, config: NotifyConfig, db: Database, users: UserStore, org: str, public_url: str,
                 audit: AuditFn, clock: Callable[[], float] = time.time, *,
                 open_manifest: Callable[[CID, bytes], Signed[Manifest]] = _open,
                 org_name: Callable[[str], str] = lambda peer_id: "", send: SendFn = smtp.send,
                 backoff: Backoff = RETRY_BACKOFF, rng: random.Random | None = None) -> None:
        self.config = config
        self.db = db
        self.users = users
        self.org = org
        self.public_url = public_url
        self.audit = audit
        self.clock = clock
        self.open_manifest = open_manifest
        self.org_name = org_name
        self._send = send
        # an attempt: connect, EHLO, STARTTLS, login and the message, each read and write within the timeout
        self.driver: RetryDriver[str] = RetryDriver(
            QUEUE, KEYS, db, clock, self._attempt, classify,
            policy=RetryPolicy(backoff, attempt_timeout=6.0 * config.timeout_seconds, jitter=0.1,
                               max_attempts=config.max_attempts, concurrency=2),
            on_ended=self._ended, rng=rng)
        self.sent = 0
        self.failures = 0
        #: sender org -> when its recent arrival emails were queued (the last hour; since this start)
        self._recent: dict[str, collections.deque[float]] = {}
        self.capped = 0

    def _within_cap(self, sender_org: str) -> bool:
        """May one more arrival email from this sending organisation be queued now (per_sender_per_hour)?
        A certified organisation cannot flood an address by sending many small studies."""
        now = self.clock()
        recent = self._recent.setdefault(sender_org, collections.deque())
        while recent and recent[0] <= now - 3600:
            recent.popleft()
        if len(recent) >= self.config.per_sender_per_hour:
            return False
        recent.append(now)
        if len(self._recent) > 10000:  # organisations with nothing recent are forgotten
            self._recent = {org: q for org, q in self._recent.items() if q}
        return True

    async def on_event(self, event: StudyEvent) -> None:
        """Queue the arrival email (durably, before returning) for a received study that arrived."""
        if (event.kind is not StudyEventKind.ARRIVED or event.direction != "received"
                or event.priority not in self.config.priorities):
            return
        manifest_id = CID.parse(event.manifest_id)
        row = await self.db.run(lambda s: s.manifest(manifest_id))
        if row is None or row.direction != "received":
            return
        manifest = self.open_manifest(row.manifest_id, row.raw).document
        if not self._within_cap(manifest.sender_org):
            self.capped += 1
            log.warning("arrival email for %s not sent: organisation %s caused %d in the last hour", manifest_id,
                        manifest.sender_org, self.config.per_sender_per_hour)
            await self.audit(AuditEvent(
                EventCode.APPLICATION_ACTIVITY, "email-capped", Outcome.MINOR_FAILURE, actor_org=manifest.sender_org,
                study=hash_uid(manifest.study_uid), manifest_id=str(manifest_id),
                detail=f"more than {self.config.per_sender_per_hour} arrival emails in an hour from this "
                       "organisation: none sent for this one (the study is in the inbox)"))
            return
        recipient = resolve_recipient(self.users, manifest.attention, org_address=self.config.org_address,
                                      allowed_domains=self.config.attention_domains)
        arrival = Arrival(
            manifest_id=str(manifest_id), sender_org=manifest.sender_org,
            sender_org_name=self.org_name(manifest.sender_peer), priority=manifest.priority.value,
            purpose=manifest.purpose.value, series=manifest.summary.series_count,
            instances=len(manifest.instances), attention=manifest.attention, has_note=bool(manifest.note),
            at=self.clock())
        message = arrival_message(arrival, recipient, from_address=self.config.from_address, own_org=self.org,
                                  public_url=self.public_url)
        added = await self.driver.enqueue([(str(manifest_id), message.as_bytes())])
        if added:
            await self.audit(AuditEvent(
                EventCode.APPLICATION_ACTIVITY, "email-queued", actor_org=manifest.sender_org,
                study=hash_uid(manifest.study_uid), manifest_id=str(manifest_id),
                detail=f"arrival email to {recipient.kind.value} {recipient.address}; {manifest.priority.value}"))

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.driver.run)
            task_status.started()
            while True:
                await self.driver.drop_payloads(self.clock() - KEEP_SENT_MESSAGES_MS / 1000)
                await trio.sleep(3600)

    async def counts(self) -> dict[str, int]:
        """state -> emails, for /metrics and the tests."""
        counts = await self.db.run(lambda s: s.queue_counts(QUEUE))
        return {state.value: n for (queue, state), n in counts.items() if queue == QUEUE}

    async def _attempt(self, manifest_id: str, message: bytes | None) -> None:
        if not message:
            raise smtp.EmailError("the queued message was dropped", permanent=True)  # not reached: kept until sent
        to = recipient_of(message)
        try:
            # a node stopping abandons the conversation; the email is due again after the restart
            await trio.to_thread.run_sync(partial(self._send, self.config, message, to),
                                          abandon_on_cancel=True)  # type: ignore[call-arg]  # trio-typing is older
        except smtp.EmailError:
            self.failures += 1
            raise
        self.sent += 1

    def _ended(self, record: DeliveryRecord[str], message: bytes | None
               ) -> tuple[StoreFn | None, Callable[[], Awaitable[None]] | None]:
        return None, partial(self._audit_ended, record)

    async def _audit_ended(self, record: DeliveryRecord[str]) -> None:
        ok = record.state is DeliveryState.DELIVERED
        if not ok:
            log.warning("arrival email for manifest %s failed for good after %d attempt(s): %s", record.key,
                        record.attempts, record.last_error)
        await self.audit(AuditEvent(
            EventCode.APPLICATION_ACTIVITY, "email-sent" if ok else "email-failed",
            Outcome.SUCCESS if ok else Outcome.MINOR_FAILURE, manifest_id=record.key,
            detail=(f"after {record.attempts} attempt(s)" + ("" if ok else f": {record.last_error}"))[:300]))
