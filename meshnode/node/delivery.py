"""Deliveries with retry: manifests announced to recipient orgs, recalls out, our receipts back to senders.

Every delivery is an item of the node's durable retry queue "delivery"
(meshnode.storage.retry_queue) keyed by protocol.outbox.DeliveryKey
(kind, manifest ID, org), and its retry state is that of a
protocol.outbox.Outbox driven by meshnode.node.retry_driver: the same state
machine the simulator drives. A failed attempt backs off exponentially
(2 s doubling to 15 min, with +-20% jitter), an attempt that takes longer
than 120 s counts as failed, and after 1000 attempts a delivery fails for good
(an operator can retry it): protocol.delivery_policy.DeliveryPolicy states the
policy, and the simulator's nodes run the same one. A refusal that cannot change by
retrying (bad signature, wrong or revoked certificate, a malformed document)
fails it at once.

Data safety: a delivery is written to the database, in the same call as what
it delivers (the sent manifest, the recall, the completed study), before it
is attempted, so a restart resumes it; a receipt is "receipted" only once the
sender took it.

Deliveries run concurrently (at most RetryPolicy.concurrency at once): a
study shared with three orgs reaches all three at once, and an org whose
node is slow or unreachable holds up nobody else.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Protocol

import trio

from common.p2p.streams import describe_ending, is_network_ending
from meshnode.node import lifecycle as node_lifecycle
from meshnode.node.context import NodeContext
from meshnode.storage.metadata import MetadataStore
from meshnode.node.retry_driver import Database, Failure, RetryDriver, RetryPolicy, StoreFn
from protocol.cid import CID
from protocol.errors import (
    CertificateError,
    DocumentError,
    LocalProtocolError,
    MeshError,
    NotFoundError,
    SignatureError,
    StorageError,
    UnavailableError,
)
from protocol.delivery_policy import DeliveryPolicy
from protocol.document import open_document
from protocol.exchange_messages import decode_receipt_delivery
from protocol.forward_report import ForwardReport
from protocol.lifecycle import ManifestEvent, ManifestState
from protocol.outbox import (
    DeliveryKey,
    DeliveryKind,
    DeliveryRecord,
    DeliveryState,
)

if TYPE_CHECKING:
    from trio_typing import TaskStatus

    from meshnode.directory.client import ResolvedPeer
    from meshnode.node.sessions import Sessions
    from meshnode.node.wire import Wire

log = logging.getLogger(__name__)

QUEUE = "delivery"
#: The node's delivery policy (protocol's, as the simulator runs it), at most 32 attempts at once.
POLICY = RetryPolicy(**vars(DeliveryPolicy()), concurrency=32)
#: Refusals that retrying cannot change.
PERMANENT = (DocumentError, SignatureError, CertificateError)


def classify(exc: BaseException) -> Failure | None:
    """A delivery attempt's error: expected (a refusal, or what a network does: common.p2p.streams'
    one predicate) or None for a bug."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, MeshError):
        return Failure(f"{exc.name}: {exc}"[:500], isinstance(exc, PERMANENT))
    if is_network_ending(exc):
        return Failure(describe_ending(exc), False)
    return None


class DeliveryKeys:
    """DeliveryKey as the queue's text key `<kind> <manifest id hex> <org>`; ref: the manifest ID in hex."""

    def encode(self, key: DeliveryKey) -> str:
        return f"{key.kind.value} {key.item.to_bytes().hex()} {key.org}"

    def decode(self, text: str) -> DeliveryKey:
        try:
            kind, item, org = text.split(" ")
            return DeliveryKey(DeliveryKind(kind), CID.from_bytes(bytes.fromhex(item)), org)
        except (ValueError, MeshError) as exc:
            raise StorageError(f"malformed delivery key in the database: {text[:80]!r}") from exc

    def ref(self, key: DeliveryKey) -> str:
        return key.item.to_bytes().hex()


KEYS = DeliveryKeys()


def stored_deliveries(store: MetadataStore, manifest_id: CID) -> list[DeliveryRecord[DeliveryKey]]:
    """A manifest's deliveries as stored, delivered ones included (on the database thread). A row whose key
    cannot be read is logged and skipped (as RetryDriver.load does)."""
    out = []
    for r in store.queue_rows(QUEUE, ref=manifest_id.to_bytes().hex()):
        try:
            key = KEYS.decode(r.key)
        except StorageError as exc:
            log.warning("stored delivery %r skipped: %s", r.key[:80], exc)
            continue
        out.append(DeliveryRecord(key, r.state, r.attempts, r.next_attempt_ms / 1000, r.updated_ms / 1000,
                                  r.last_error))
    return out


class DeliveryTransport(Protocol):
    async def deliver(self, key: DeliveryKey, payload: bytes | None) -> None:
        """Push one delivery (payload: the signed recall or receipt; None for an announcement) or raise."""
        ...


class Deliveries:
    def __init__(
        self, db: Database, clock: Callable[[], float], transport: DeliveryTransport, *,
        on_receipted: Callable[[CID], Awaitable[None]] | None = None,
        on_failed: Callable[[DeliveryRecord[DeliveryKey]], Awaitable[None]] | None = None,
        policy: RetryPolicy = POLICY, rng: random.Random | None = None,
    ) -> None:
        self._on_receipted = on_receipted
        self._on_failed = on_failed
        #: written in the same database call that records our receipt delivered (the PACS forward's queue)
        self.receipted_write: Callable[[MetadataStore, CID], None] | None = None
        self._db = db
        self._transport = transport
        self.driver: RetryDriver[DeliveryKey] = RetryDriver(
            QUEUE, KEYS, db, clock, self._deliver, classify, policy=policy, on_ended=self._ended, rng=rng)

    async def _deliver(self, key: DeliveryKey, payload: bytes | None) -> None:
        """An announcement of a manifest recalled meanwhile is never sent: it fails for good, unsent."""
        if key.kind is DeliveryKind.ANNOUNCE:
            row = await self._db.run(lambda s: s.manifest(key.item))
            if row is not None and row.state is ManifestState.RECALLED:
                raise DocumentError("the manifest is recalled: not announced")
        await self._transport.deliver(key, payload)

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.driver.run(task_status=task_status)

    async def load(self) -> None:
        await self.driver.load()

    # -- what the sender and recipient queue ------------------------------------------------
    async def announce(self, manifest_id: CID, orgs: Sequence[str], also: StoreFn | None = None) -> None:
        await self.driver.enqueue([(DeliveryKey(DeliveryKind.ANNOUNCE, manifest_id, o), None) for o in orgs], also)

    async def drop_announces(self, manifest_id: CID) -> None:
        """Announcements of the manifest not yet delivered are dropped (another node of this org recalled it:
        meshnode.node.replication), as `recall` drops them, so none fails as 'recalled: not announced'."""
        dropped: list[DeliveryRecord[DeliveryKey]] = []

        def write(store: MetadataStore) -> None:
            texts = [r.key for r in store.queue_rows(QUEUE, ref=manifest_id.to_bytes().hex())
                     if r.state is not DeliveryState.DELIVERED and r.key.startswith(DeliveryKind.ANNOUNCE.value + " ")]
            store.queue_remove(QUEUE, texts)
            dropped[:] = [k for k in self.driver.records() if KEYS.encode(k.key) in texts]

        await self.driver.db.run(write)
        self.driver.forget([r.key for r in dropped])

    async def recall(self, manifest_id: CID, orgs: Sequence[str], recall: bytes, also: StoreFn | None = None) -> None:
        """Queue the recall to every recipient org; announcements not yet delivered are dropped (with `also`,
        one transaction: a stop or a failed write leaves all of it or none)."""
        dropped: list[DeliveryRecord[DeliveryKey]] = []

        def write(store: MetadataStore) -> None:
            if also is not None:
                also(store)
            texts = [r.key for r in store.queue_rows(QUEUE, ref=manifest_id.to_bytes().hex())
                     if r.state is not DeliveryState.DELIVERED and r.key.startswith(DeliveryKind.ANNOUNCE.value + " ")]
            store.queue_remove(QUEUE, texts)
            dropped[:] = [k for k in self.driver.records() if KEYS.encode(k.key) in texts]

        await self.driver.enqueue([(DeliveryKey(DeliveryKind.RECALL, manifest_id, o), recall) for o in orgs], write)
        self.driver.forget([r.key for r in dropped])

    async def receipt(self, manifest_id: CID, sender_org: str, receipt: bytes, also: StoreFn | None = None) -> None:
        await self.driver.enqueue([(DeliveryKey(DeliveryKind.RECEIPT, manifest_id, sender_org), receipt)], also)

    async def forward_report(self, report_id: CID, sender_org: str, report: bytes) -> None:
        """A signed forward report (protocol.forward_report) to the manifest's sender, keyed by its own CID."""
        await self.driver.enqueue([(DeliveryKey(DeliveryKind.FORWARD_REPORT, report_id, sender_org), report)])

    async def retry(self, manifest_id: CID | None = None) -> int:
        """Operator: try deliveries that failed for good again (those of one manifest, or all)."""
        keys = None if manifest_id is None else [r.key for r in self.driver.records() if r.key.item == manifest_id]
        return await self.driver.retry(keys)

    # -- queries ----------------------------------------------------------------------------
    def records(self, manifest_id: CID | None = None) -> list[DeliveryRecord[DeliveryKey]]:
        """Deliveries not yet delivered (in memory)."""
        return [r for r in self.driver.records() if manifest_id is None or r.key.item == manifest_id]

    def pending(self) -> int:
        return sum(1 for r in self.driver.records() if r.state in (DeliveryState.PENDING, DeliveryState.ATTEMPTING))

    # -- outcomes ---------------------------------------------------------------------------
    def _ended(self, record: DeliveryRecord[DeliveryKey], payload: bytes | None
               ) -> tuple[StoreFn | None, Callable[[], Awaitable[None]] | None]:
        key = record.key
        if record.state is DeliveryState.DELIVERED:
            log.info("%s of %s delivered to %s", key.kind.value, key.item, key.org)
            if key.kind is DeliveryKind.RECEIPT:
                on_receipted = self._on_receipted
                return (partial(_receipt_delivered, key.item, also=self.receipted_write),
                        (lambda: on_receipted(key.item)) if on_receipted is not None else None)
            return None, None
        log.warning("%s of %s to %s failed for good after %d attempt(s): %s", key.kind.value, key.item, key.org,
                    record.attempts, record.last_error)
        on_failed = self._on_failed
        return None, (lambda: on_failed(record)) if on_failed is not None else None


def _receipt_delivered(manifest_id: CID, store: MetadataStore, *,
                       also: Callable[[MetadataStore, CID], None] | None = None) -> None:
    """Our receipt reached the sender: `also` is written (the PACS forward), then the manifest is receipted,
    unless it was recalled (or is being repaired) meanwhile, which protocol.lifecycle refuses (the delivery
    stays delivered, nothing else is written). `also` goes first so a stop between the two still forwards."""
    try:
        node_lifecycle.next_state(store, manifest_id, ManifestEvent.RECEIPT_DELIVERED)
    except (LocalProtocolError, NotFoundError) as exc:
        log.info("receipt for %s delivered; not recorded: %s", manifest_id, exc)
        return
    if also is not None:
        also(store, manifest_id)
    node_lifecycle.move(store, manifest_id, ManifestEvent.RECEIPT_DELIVERED)


class NodeTransport:
    """Deliveries over the node's wire: announcements and recalls to every reachable node of the org (one
    taking it is enough; to this node's own org: every sibling), receipts to the node that sent the manifest."""

    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        self._wire: Wire | None = None
        self._sessions: Sessions | None = None

    def connect(self, wire: Wire, sessions: Sessions) -> None:
        """The wire is made after the sender (which queues deliveries): it is handed over here."""
        self._wire, self._sessions = wire, sessions

    async def deliver(self, key: DeliveryKey, payload: bytes | None) -> None:
        wire, sessions = self._wire, self._sessions
        if wire is None or sessions is None:
            raise UnavailableError("the node's wire is not up yet")
        if key.kind is DeliveryKind.FORWARD_REPORT:
            await self._forward_report(wire, sessions, payload)
            return
        if key.kind is DeliveryKind.SIBLING_RECEIPT:
            await self._sibling_receipt(wire, sessions, payload)
            return
        row = await self.ctx.db.run(lambda s: s.manifest(key.item))
        if row is None:
            raise NotFoundError(f"manifest {key.item} is not stored any more")
        if key.kind is DeliveryKind.RECEIPT:
            if payload is None:
                raise DocumentError("a queued receipt without its document")
            peer_id = self.ctx.manifests.open(row.manifest_id, row.raw).document.sender_peer
            try:
                await sessions.ensure_peer_id(peer_id)
                await wire.deliver_receipt(peer_id, payload)
            except Exception as exc:
                failure = classify(exc)
                if failure is None or failure.permanent:
                    raise
                # the node that signed it is down (patched, say): another node of its org that holds the
                # manifest takes it and passes it on (meshnode.node.replication)
                if not await self._receipt_to_sibling(wire, sessions, row.sender_org, peer_id, payload):
                    raise
            return
        if key.kind is DeliveryKind.RECALL and payload is None:
            raise DocumentError("a queued recall without its document")
        peers = await sessions.org_peers(key.org)
        if key.org == self.ctx.org:
            await self._to_every_sibling(wire, sessions, key, row.raw, payload, peers)
            return
        if not peers:
            raise UnavailableError(f"no reachable node of {key.org}")
        accepted, errors = 0, []
        for peer in peers:
            try:
                await sessions.ensure(peer)
                if key.kind is DeliveryKind.RECALL and payload is not None:
                    await wire.deliver_recall(peer.peer_id, payload)
                else:
                    await wire.announce(peer.peer_id, row.raw)
                accepted += 1
            except Exception as exc:  # one node of the org: the others may still take it
                failure = classify(exc)
                if failure is None or failure.permanent:
                    raise
                errors.append(f"{peer.peer_id}: {failure.error}")
        if not accepted:
            raise UnavailableError("; ".join(errors)[:500])

    async def _to_every_sibling(self, wire: Wire, sessions: Sessions, key: DeliveryKey, manifest_raw: bytes,
                                payload: bytes | None, peers: list[ResolvedPeer]) -> None:
        """An offer or a recall to this node's own org (meshnode.node.replication) must reach EVERY sibling:
        nothing inside the org passes it on. A sibling that cannot be reached keeps the delivery retrying
        (the ones that took it take it again: both are idempotent there); one that refuses for good does
        not stop the others, is logged, and once no sibling is left to retry fails the delivery with its
        error (the outbox's `siblings` entry shows it)."""
        unreachable: list[str] = []
        refused: list[tuple[str, Exception]] = []
        for peer in peers:
            try:
                await sessions.ensure(peer)
                if key.kind is DeliveryKind.RECALL and payload is not None:
                    await wire.deliver_recall(peer.peer_id, payload)
                else:
                    await wire.announce(peer.peer_id, manifest_raw)
            except Exception as exc:  # this sibling only: the others still get it
                failure = classify(exc)
                if failure is None:
                    raise
                if failure.permanent:
                    log.warning("%s of %s refused by %s, a node of this org: %s", key.kind.value, key.item,
                                peer.peer_id, failure.error)
                    refused.append((peer.peer_id, exc))
                else:
                    unreachable.append(f"{peer.peer_id}: {failure.error}")
        if unreachable:
            raise UnavailableError("; ".join(unreachable + [f"{p}: {e}" for p, e in refused])[:500])
        if refused:
            raise refused[0][1]

    async def _forward_report(self, wire: Wire, sessions: Sessions, payload: bytes | None) -> None:
        """A forward report goes to the node that sent its manifest (as a receipt does)."""
        if payload is None:
            raise DocumentError("a queued forward report without its document")
        report = open_document(payload, ForwardReport).document
        row = await self.ctx.db.run(lambda s: s.manifest(report.manifest_id))
        if row is None:
            raise NotFoundError(f"manifest {report.manifest_id} is not stored any more")
        peer_id = self.ctx.manifests.open(row.manifest_id, row.raw).document.sender_peer
        await sessions.ensure_peer_id(peer_id)
        await wire.deliver_forward_report(peer_id, payload)

    async def _receipt_to_sibling(self, wire: Wire, sessions: Sessions, sender_org: str, sender_peer: str,
                                  payload: bytes) -> bool:
        """Our receipt to another node of the sender org (the one that signed the manifest is unreachable);
        True once one took it. A node that does not hold the manifest refuses it (NotFoundError): next."""
        try:
            peers = await sessions.org_peers(sender_org)
        except MeshError as exc:
            log.info("no other node of %s for a receipt: %s", sender_org, exc)
            return False
        for peer in peers:
            if peer.peer_id == sender_peer:
                continue
            try:
                await sessions.ensure(peer)
                await wire.deliver_receipt(peer.peer_id, payload)
            except Exception as exc:
                failure = classify(exc)
                if failure is None:
                    raise
                log.info("receipt to %s (%s) instead of %s: %s", peer.peer_id, sender_org, sender_peer, failure.error)
                continue
            log.info("receipt taken by %s, another node of %s (%s unreachable)", peer.peer_id, sender_org, sender_peer)
            return True
        return False

    async def _sibling_receipt(self, wire: Wire, sessions: Sessions, payload: bytes | None) -> None:
        """A recipient's receipt this node took, to every other node of this org (each holding the manifest
        records it; one that does not refuses it with NotFoundError, which is as good as taken)."""
        if payload is None:
            raise DocumentError("a queued sibling receipt without its document")
        delivery = decode_receipt_delivery(payload)
        errors = []
        for peer in await sessions.org_peers(self.ctx.org):
            try:
                await sessions.ensure(peer)
                await wire.deliver_receipt(peer.peer_id, delivery.receipt, delivery.certificate)
            except NotFoundError:
                continue
            except Exception as exc:  # this sibling is down: retried later (the others have it)
                failure = classify(exc)
                if failure is None or failure.permanent:
                    raise
                errors.append(f"{peer.peer_id}: {failure.error}")
        if errors:
            raise UnavailableError("; ".join(errors)[:500])
