"""Several nodes of one organisation, the sender's side: a manifest this node signs reaches its siblings,
who copy its blocks, so that any of them serves the study, takes its receipts and may recall it.

- `offer`: after a share, the manifest is announced to this node's own org (a durable delivery of the
  node's retry queue, meshnode.node.delivery: kind announce, org = this org); NodeTransport announces it to
  every sibling the directory lists (none listed: nothing to do).
- `accept`: a sibling's signed manifest (meshnode.node.receiver hands it here when announcer, manifest
  signer and this node are all of one org) is stored as this org's own *sent* manifest (never as a
  received study for staff to act on twice; `sender_peer` says which node signed it), and its blocks are
  copied when [replication] mode covers its priority (protocol.replication.copies). A sibling copy sends
  no receipt.
- `run`: the copier. Its state is durable: the stored sent rows whose blocks are not all copied under
  them (`pending`), so no offer is lost to a full queue or a restart. Each copy is asked of the signing
  node, then of every other node of the org; one that fails or ends short is tried again after
  COPY_BACKOFF (protocol.backoff) while the node runs; each request has a deadline (REQUEST_TIMEOUT_S),
  so one hung sibling stalls nothing.
- `copy`: the blocks not yet copied under the manifest (provenance: protocol.access rule 4), asked of one
  sibling under the manifest in requests of at most MAX_REQUEST_BLOCKS, each checked against its CID and
  made durable before it is recorded present and obtained under the manifest (one transaction).
  protocol.access lets the sibling answer (requester, holder and signer one org).
- `receipt_taken`: a receipt this node took from a recipient is passed on to its siblings (a durable
  delivery, kind sibling-receipt), so the node that signed the manifest shows it when it is back.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING

import trio

from meshnode.node.context import NodeContext
from meshnode.node.peer_link import PeerLink
from meshnode.storage.audit import AuditEvent, EventCode
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.records import ManifestRow, hash_uid
from protocol.backoff import Backoff
from protocol.cid import CID
from protocol.document import Signed
from protocol.errors import MeshError, WrongOrganisationError
from protocol.exchange_messages import (
    MAX_REQUEST_BLOCKS,
    BlockData,
    BlockRequest,
    ReceiptDelivery,
    encode_request,
)
from protocol.lifecycle import ManifestEvent, ManifestState, Side, advance
from protocol.manifest import Manifest
from protocol.outbox import DeliveryKey, DeliveryKind
from protocol.replication import ReplicationScope, copies, is_sibling

if TYPE_CHECKING:
    from trio_typing import TaskStatus

    from meshnode.node.delivery import Deliveries

log = logging.getLogger(__name__)

#: A copy that failed or ended short is tried again after this (protocol.backoff), while the node runs.
COPY_BACKOFF = Backoff(base=5.0, factor=2.0, cap=600.0)
#: One block request (or dial) to a sibling that answers nothing for this long is given up (the next holder).
REQUEST_TIMEOUT_S = 60


class Replication:
    def __init__(self, ctx: NodeContext, link: PeerLink, scope: ReplicationScope | str,
                 deliveries: Deliveries | None = None) -> None:
        self.ctx = ctx
        self.link = link
        self.scope = ReplicationScope(scope)
        self.deliveries = deliveries
        #: set when there may be a copy to make (an offer taken, a resume)
        self._wake = trio.Event()
        #: manifests whose copy finished (this run): blocks copied per manifest
        self.copied: dict[CID, int] = {}
        self._copied_event = trio.Event()

    # -- the signing node -------------------------------------------------------------
    async def offer(self, signed: Signed[Manifest]) -> None:
        """Queue the announcement of a manifest this node signed to its siblings (durable, retried)."""
        if self.deliveries is not None:
            await self.deliveries.announce(signed.cid, [self.ctx.org])

    async def receipt_taken(self, manifest_id: CID, receipt_raw: bytes, cert_raw: bytes, receipt_id: CID) -> None:
        """A recipient's receipt this node verified: passed on to the siblings (durable, retried)."""
        if self.deliveries is None:
            return
        payload = encode_request(ReceiptDelivery(receipt_raw, cert_raw))
        await self.deliveries.driver.enqueue([(DeliveryKey(DeliveryKind.SIBLING_RECEIPT, receipt_id, self.ctx.org),
                                               payload)])
        log.info("receipt for %s to be passed on to the other nodes of %s", manifest_id, self.ctx.org)

    async def recalled(self, manifest_id: CID, recall_raw: bytes) -> None:
        """A recall this node signed (of a manifest it or a sibling signed), to the siblings (durable, retried;
        meshnode.node.receiver records it there)."""
        if self.deliveries is not None:
            await self.deliveries.driver.enqueue([(DeliveryKey(DeliveryKind.RECALL, manifest_id, self.ctx.org),
                                                   recall_raw)])

    async def sibling_recalled(self, manifest_id: CID) -> None:
        """Another node of this org recalled a manifest this node holds as sent (meshnode.node.receiver
        recorded it): announcements of it still queued here are dropped, so none fails as 'recalled'
        (no false 'delivery failed' study events; review m3)."""
        if self.deliveries is not None:
            await self.deliveries.drop_announces(manifest_id)

    # -- a sibling --------------------------------------------------------------------
    async def accept(self, peer_id: str, announcer_org: str, signed: Signed[Manifest], manifest_raw: bytes,
                     cert_raw: bytes) -> CID:
        """A sibling's manifest (verified by the receiver): stored as the org's sent manifest; copied by mode."""
        ctx = self.ctx
        manifest = signed.document
        if not is_sibling(ctx.org, announcer_org, manifest.sender_org):
            raise WrongOrganisationError(f"a node of {announcer_org} offered {manifest.sender_org}'s manifest"
                                         f" as a copy for {ctx.org}")
        manifest_id = signed.cid
        known, recalled_by = await ctx.db.run(lambda s: (s.manifest(manifest_id), s.recall_tombstone(manifest_id)))
        if known is not None:
            return manifest_id  # offered again (a retried delivery), or this node's own
        if recalled_by == manifest.sender_org:  # the org's recall came first (review m1): never stored live
            log.info("sibling manifest %s not stored: recalled by %s before it was offered", manifest_id, recalled_by)
            await ctx.audit(AuditEvent(EventCode.INSTANCES_TRANSFERRED, "sibling-manifest", actor=peer_id,
                                       actor_org=announcer_org, study=hash_uid(manifest.study_uid),
                                       manifest_id=str(manifest_id), detail="recalled before it was offered:"
                                                                            " not stored"))
            return manifest_id
        row = ManifestRow(manifest_id, manifest.study_uid, "sent", manifest.sender_org, manifest.revision,
                          advance(Side.SENDER, None, ManifestEvent.SIGNED), manifest.created_at,
                          manifest.expires_at, manifest_raw, manifest.recipients, cert_raw)
        await ctx.db.run(lambda s: s.save_manifest(row, manifest.block_order()))
        copying = copies(self.scope, manifest.priority)
        await ctx.audit(AuditEvent(EventCode.INSTANCES_TRANSFERRED, "sibling-manifest", actor=peer_id,
                                   actor_org=announcer_org, study=hash_uid(manifest.study_uid),
                                   manifest_id=str(manifest_id),
                                   detail=f"{manifest.priority.value}, signed by {manifest.sender_peer};"
                                          f" {'copying' if copying else 'not copied'} ({self.scope.value})"))
        if copying:
            self._wake.set()  # the stored row is the copy's durable state (pending)
        return manifest_id

    async def pending(self) -> list[tuple[CID, str]]:
        """The sibling copies not finished (durable state: live sent manifests another node of this org signed,
        covered by mode, with blocks not yet copied under them), each with the node that signed it."""
        ctx = self.ctx
        now = ctx.clock()
        if self.scope is ReplicationScope.NOTHING:
            return []
        # a sibling's manifest is stored with its signer's certificate (`accept`), this node's own without:
        # only those are decoded and signature-checked here (every wake, and at start-up)
        rows = await ctx.db.run(lambda s: [r for r in s.manifests("sent") if r.certificate
                                           and r.state is not ManifestState.RECALLED and r.expires_at >= now])
        candidates = []
        for row in rows:  # decoded here, on the node's loop (the manifest cache is not the database thread's)
            manifest = ctx.manifests.open(row.manifest_id, row.raw).document
            if manifest.sender_peer != ctx.peer_id and copies(self.scope, manifest.priority):
                candidates.append((row.manifest_id, manifest.sender_peer, manifest.block_order()))

        def unfinished(store: MetadataStore) -> list[tuple[CID, str]]:
            return [(m, peer) for m, peer, order in candidates
                    if len(store.obtained_blocks(m, order)) < len(set(order))]

        return await ctx.db.run(unfinished) if candidates else []

    async def resume(self) -> int:
        """Wake the copier for the sibling copies not finished (after a restart); returns how many."""
        n = len(await self.pending())
        self._wake.set()
        return n

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The copier: works through `pending()` (so an offer is never lost to a full queue: its row is the
        state), each from the signing node first, then any other node of the org; a copy that fails or ends
        short is tried again after protocol.backoff's delay (COPY_BACKOFF), while the node runs."""
        task_status.started()
        failures: dict[CID, int] = {}
        due: dict[CID, float] = {}
        while True:
            self._wake = trio.Event()
            pending = await self.pending()
            now = trio.current_time()
            for manifest_id, signer in pending:
                if due.get(manifest_id, 0.0) > now:
                    continue
                n = await self._copy_from_any(manifest_id, signer)
                if n is None:
                    failures[manifest_id] = failures.get(manifest_id, 0) + 1
                    due[manifest_id] = trio.current_time() + COPY_BACKOFF.delay(failures[manifest_id])
                    continue
                failures.pop(manifest_id, None)
                due.pop(manifest_id, None)
                self.copied[manifest_id] = n
                self._copied_event.set()
                self._copied_event = trio.Event()
            waiting = [due[m] for m, _ in pending if m in due]
            for m in [m for m in due if m not in {p for p, _ in pending}]:  # finished elsewhere, recalled, expired
                due.pop(m, None)
                failures.pop(m, None)
            with trio.move_on_at(min(waiting) if waiting else float("inf")):
                await self._wake.wait()

    async def _copy_from_any(self, manifest_id: CID, signer: str) -> int | None:
        """One attempt: from the signer, then each other node of this org, until the copy is complete; the
        blocks copied (None: not complete, to be tried again)."""
        holders = [signer]
        try:
            holders += [p.peer_id for p in await self.link.org_peers(self.ctx.org)
                        if p.peer_id not in (signer, self.ctx.peer_id)]
        except MeshError as exc:
            log.info("sibling copy of %s: the org's other nodes not listed (%s)", manifest_id, exc)
        total = 0
        for holder in holders:
            try:
                total += await self.copy(manifest_id, holder)
            except MeshError as exc:
                log.warning("sibling copy of %s from %s stopped: %s", manifest_id, holder, exc)
                continue
            if not await self._unfinished(manifest_id):
                return total
        return None

    async def _unfinished(self, manifest_id: CID) -> bool:
        row = await self.ctx.db.run(lambda s: s.manifest(manifest_id))
        if row is None:
            return False
        order = self.ctx.manifests.open(row.manifest_id, row.raw).document.block_order()
        return await self.ctx.db.run(lambda s: len(s.obtained_blocks(manifest_id, order)) < len(set(order)))

    async def wait_copied(self, manifest_id: CID) -> int:
        while manifest_id not in self.copied:
            await self._copied_event.wait()
        return self.copied[manifest_id]

    async def copy(self, manifest_id: CID, holder: str) -> int:
        """Copy the manifest's blocks not on disk yet from `holder` (a sibling); returns how many were copied."""
        ctx = self.ctx
        row = await ctx.db.run(lambda s: s.manifest(manifest_id))
        if row is None:
            return 0
        order = list(ctx.manifests.open(row.manifest_id, row.raw).document.block_order())
        # provenance (protocol.access rule 4): a block serves under a sibling's manifest only if this node
        # copied it under that manifest, so one already on disk from elsewhere is copied again under it
        present = await ctx.db.run(lambda s: s.obtained_blocks(manifest_id, order))
        missing = list(dict.fromkeys(c for c in order if c not in present))
        if not missing:
            return 0
        with trio.fail_after(REQUEST_TIMEOUT_S):
            await self.link.ensure_peer_id(holder)
        copied = 0
        for i in range(0, len(missing), MAX_REQUEST_BLOCKS):
            batch = tuple(missing[i:i + MAX_REQUEST_BLOCKS])
            stored: list[tuple[CID, int]] = []
            with trio.move_on_after(REQUEST_TIMEOUT_S) as deadline:  # a hung sibling stalls nothing
                async for frame in self.link.fetch_blocks(holder, BlockRequest(manifest_id, batch)):
                    if isinstance(frame, BlockData):
                        # checked against its CID (BlockCorruptError otherwise) and durable before it is recorded
                        await ctx.worker.run(partial(ctx.storage.blocks.put, frame.data, frame.cid))
                        stored.append((frame.cid, len(frame.data)))
            if stored:
                await ctx.db.run(partial(_record, manifest_id, holder, stored, int(ctx.clock() * 1000)))
                copied += len(stored)
            if deadline.cancelled_caught:
                log.warning("sibling copy of %s: %s answered nothing for %d s", manifest_id, holder, REQUEST_TIMEOUT_S)
                break
        await ctx.audit(AuditEvent(EventCode.INSTANCES_TRANSFERRED, "sibling-copy", actor=holder,
                                   actor_org=ctx.org, study=hash_uid(row.study_uid), manifest_id=str(manifest_id),
                                   detail=f"{copied} block(s) copied, {len(set(order)) - len(missing)} copied already,"
                                          f" {len(missing) - copied} not served"))
        log.info("sibling copy of %s from %s: %d block(s)", manifest_id, holder, copied)
        return copied


def _record(manifest_id: CID, holder: str, blocks: list[tuple[CID, int]], now_ms: int, store: MetadataStore) -> None:
    """Blocks made durable by a sibling copy, marked present with their provenance (copied under the
    manifest: what protocol.access lets this node serve under it), in one transaction."""
    store.record_blocks(blocks, now_ms, [(manifest_id, cid, holder) for cid, _ in blocks])
