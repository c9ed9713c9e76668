"""The recipient's side: accept announced manifests, answer availability, obey recalls."""

from __future__ import annotations

from collections import OrderedDict
import logging
from collections.abc import Awaitable, Callable

from meshnode.node.context import NodeContext
from meshnode.node import lifecycle as node_lifecycle
from meshnode.node.events import StudyEvent, StudyEventKind
from meshnode.node.policy import authorise_manifest_access, servable_in_order
from meshnode.storage.audit import AuditEvent, EventCode, Outcome
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.records import ManifestRow, hash_uid
from protocol.certificate import Certificate
from protocol.cid import CID
from protocol.document import Signed, open_document
from protocol.lifecycle import ManifestEvent, ManifestState, Side, advance
from protocol.errors import MeshError, NotFoundError, RevisionRollbackError, WrongOrganisationError
from protocol.manifest import Manifest, verify_manifest
from protocol.recall import Recall, verify_recall

log = logging.getLogger(__name__)

#: Called with each newly accepted manifest and the time its announcement arrived.
ManifestHook = Callable[[Signed[Manifest], float], Awaitable[None]]
#: A manifest signed by this node's own org, offered by a node of it (meshnode.node.replication.accept):
#: (announcer peer, announcer org, manifest, its raw bytes, its signer's certificate) -> its ID.
SiblingHook = Callable[[str, str, Signed[Manifest], bytes, bytes], Awaitable[CID]]


#: Manifests whose block order is kept decoded for availability queries.
ORDER_CACHE_SIZE = 64


class Receiver:
    def __init__(self, ctx: NodeContext, on_accepted: ManifestHook, on_recalled: Callable[[CID], Awaitable[None]]):
        self.ctx = ctx
        self.on_accepted = on_accepted
        self.on_recalled = on_recalled
        self._orders: OrderedDict[CID, tuple[CID, ...]] = OrderedDict()
        #: several nodes per organisation: set by the runtime (meshnode.node.replication); None refuses
        #: this org's own manifests as before
        self.sibling: SiblingHook | None = None
        #: a sibling's recall recorded here: this node's pending announcements of it are dropped
        self.sibling_recalled: Callable[[CID], Awaitable[None]] | None = None

    async def accept_announce(self, peer_id: str, manifest_raw: bytes, cert_raw: bytes) -> CID:
        """Verify and record an announced manifest; raises the MeshError to send back on refusal."""
        ctx = self.ctx
        now = ctx.clock()
        relayed_by = ""  # a fellow recipient relaying the sender's manifest
        try:
            announcer = ctx.peers.authorise(peer_id, now)
            signed = open_document(manifest_raw, Manifest)
            sender_cert = open_document(cert_raw, Certificate)
            verify_manifest(signed, sender_cert, ctx.roster(), now, skew=ctx.config.clock_skew)
            manifest = signed.document
            if self.sibling is not None and manifest.sender_org == ctx.org == announcer.org_code:
                return await self.sibling(peer_id, announcer.org_code, signed, manifest_raw, cert_raw)  # a copy
            if announcer.org_code != manifest.sender_org:
                if announcer.org_code not in manifest.recipients:
                    raise WrongOrganisationError(
                        f"a node of {announcer.org_code} announced {manifest.sender_org}'s manifest")
                relayed_by = announcer.org_code  # a fellow recipient may relay it (early availability requests)
            if ctx.org not in manifest.recipients:
                raise WrongOrganisationError(f"{ctx.org} is not a recipient of this manifest")
            manifest_id = signed.cid
            known, highest, recalled_by = await ctx.db.run(
                lambda s: (s.manifest(manifest_id), s.highest_revision(manifest.study_uid, manifest.sender_org),
                           s.recall_tombstone(manifest_id)))
            if known is not None:
                return manifest_id  # a retried announcement: already recorded
            if recalled_by == manifest.sender_org:
                raise NotFoundError("this manifest was recalled by its sender")
            if manifest.revision <= highest:
                raise RevisionRollbackError(
                    f"revision {manifest.revision} is not newer than revision {highest} already received")
        except MeshError as exc:
            if relayed_by and isinstance(exc, (RevisionRollbackError, NotFoundError)):
                # a fellow recipient relaying what it still fetches while this node has moved on (a newer
                # revision, a recall): a race, not an attack
                log.info("relayed manifest from %s (%s) refused: %s", peer_id, relayed_by, exc)
            else:
                await ctx.audit(AuditEvent(EventCode.SECURITY_ALERT, "announce-refused", Outcome.MINOR_FAILURE,
                                           actor=peer_id, detail=f"{exc.name}: {exc}"[:300]))
            raise
        row = ManifestRow(manifest_id, manifest.study_uid, "received", manifest.sender_org, manifest.revision,
                          advance(Side.RECIPIENT, None, ManifestEvent.ACCEPTED), manifest.created_at,
                          manifest.expires_at, manifest_raw, manifest.recipients, cert_raw)
        blocks = manifest.block_order()

        def record(store: MetadataStore) -> None:
            store.save_manifest(row, blocks)
            store.set_transfer(manifest_id, row.state, 0, 0, int(now * 1000))

        await ctx.db.run(record)
        # fetching starts first: an urgent study's first image waits for nothing else (the audit entry
        # below is a signed, synced write of its own)
        await self.on_accepted(signed, now)
        relayed = f", {manifest.sender_org}'s manifest relayed by {relayed_by}" if relayed_by else ""
        await ctx.audit(AuditEvent(EventCode.INSTANCES_TRANSFERRED, "manifest-received", actor=peer_id,
                                   actor_org=relayed_by or manifest.sender_org, study=hash_uid(manifest.study_uid),
                                   manifest_id=str(manifest_id),
                                   detail=f"{manifest.priority.value}, {len(manifest.instances)} instance(s){relayed}"))
        await ctx.events.publish(StudyEvent(StudyEventKind.ANNOUNCED, str(manifest_id), manifest.study_uid,
                                            manifest.sender_org, manifest.priority.value, "received",
                                            instances=len(manifest.instances)))
        log.info("accepted %s manifest %s from %s", manifest.priority.value, manifest_id, manifest.sender_org)
        return manifest_id

    async def availability(self, peer_id: str, manifest_id: CID) -> list[bool]:
        """Which blocks of the manifest this node would serve the peer, in manifest block order (a block
        it holds but may not serve under this manifest is reported absent: protocol.access)."""
        access = await authorise_manifest_access(self.ctx, peer_id, manifest_id)
        order = self._orders.get(manifest_id)
        if order is None:
            # Peers ask every half second while they fetch; a manifest is named by its hash, so its
            # block order never changes.
            order = self.ctx.manifests.open(manifest_id, access.row.raw).document.block_order()
            self._orders[manifest_id] = order
            while len(self._orders) > ORDER_CACHE_SIZE:
                self._orders.popitem(last=False)
        else:
            self._orders.move_to_end(manifest_id)
        return await servable_in_order(self.ctx, access, order)

    async def accept_recall(self, peer_id: str, recall_raw: bytes, cert_raw: bytes) -> None:
        ctx = self.ctx
        now = ctx.clock()
        deliverer = ctx.peers.authorise(peer_id, now)
        signed = open_document(recall_raw, Recall)
        verify_recall(signed, open_document(cert_raw, Certificate), ctx.roster(), now, skew=ctx.config.clock_skew)
        recall = signed.document
        row = await ctx.db.run(lambda s: s.manifest(recall.manifest_id))
        if row is None:
            # recalled before it arrived here: remember it, so that a late announcement (or a fellow
            # recipient's relay) of it is refused; only its signer's org can have recalled it
            ms = int(now * 1000)
            await ctx.db.run(lambda s: s.record_recall_tombstone(recall.manifest_id, recall.sender_org, ms))
            await ctx.audit(AuditEvent(EventCode.INSTANCES_TRANSFERRED, "manifest-recalled", actor=peer_id,
                                       actor_org=recall.sender_org, manifest_id=str(recall.manifest_id),
                                       detail=f"before it arrived; {recall.action.value}: {recall.reason}"[:300]))
            return
        if row.direction == "sent" and recall.sender_org == row.sender_org == ctx.org == deliverer.org_code:
            await self._sibling_recall(peer_id, row, recall)  # another node of this org recalled it
            return
        if row.direction != "received":
            raise NotFoundError("no such received manifest")
        if row.sender_org != recall.sender_org:
            raise WrongOrganisationError("a recall must come from the manifest's sender org")
        if row.state is ManifestState.RECALLED:
            return
        await ctx.db.run(lambda s: node_lifecycle.move(s, recall.manifest_id, ManifestEvent.RECALLED))
        await ctx.audit(AuditEvent(EventCode.INSTANCES_TRANSFERRED, "manifest-recalled", actor=peer_id,
                                   actor_org=recall.sender_org, study=hash_uid(row.study_uid),
                                   manifest_id=str(recall.manifest_id),
                                   detail=f"{recall.action.value}: {recall.reason}"[:300]))
        await self.on_recalled(recall.manifest_id)

    async def _sibling_recall(self, peer_id: str, row: ManifestRow, recall: Recall) -> None:
        """Another node of this org recalled a manifest this org sent (protocol.recall: any node of the sender
        org may): recorded here too, so that this node stops announcing and serving it."""
        ctx = self.ctx
        if row.state is ManifestState.RECALLED:
            return
        await ctx.db.run(lambda s: node_lifecycle.move(s, recall.manifest_id, ManifestEvent.RECALLED))
        await ctx.audit(AuditEvent(EventCode.INSTANCES_TRANSFERRED, "sibling-recall", actor=peer_id,
                                   actor_org=recall.sender_org, study=hash_uid(row.study_uid),
                                   manifest_id=str(recall.manifest_id),
                                   detail=f"recalled by another node of {ctx.org}; {recall.action.value}:"
                                          f" {recall.reason}"[:300]))
        log.info("manifest %s recalled by another node of %s", recall.manifest_id, ctx.org)
        if self.sibling_recalled is not None:
            await self.sibling_recalled(recall.manifest_id)
