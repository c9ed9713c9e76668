"""The sender's side: share a study (sign its manifest, queue deliveries), accept receipts, recall."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence

from meshnode.study.manifest_builder import build_manifest
from meshnode.node import lifecycle as node_lifecycle
from meshnode.node.context import NodeContext
from meshnode.node.delivery import Deliveries
from meshnode.node.events import StudyEvent, StudyEventKind
from meshnode.node.research_share import ResearchOutcome, ResearchShares
from meshnode.storage.audit import AuditEvent, EventCode, Outcome
from meshnode.storage.conflicts import own_lineage
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.research_store import ResearchState
from meshnode.storage.received_research import received_for_research_only
from meshnode.storage.records import InstanceRecord, ManifestRow, Source, hash_uid
from protocol.certificate import Certificate
from protocol.cid import CID
from protocol.document import Signed, open_document
from protocol.deid import DeidProfile
from protocol.errors import DocumentError, LocalProtocolError, NotFoundError, StorageError, WrongOrganisationError
from protocol.lifecycle import ManifestEvent, ManifestState, Side, advance
from protocol.manifest import Manifest, Priority, Purpose, check_attention, check_note
from protocol.recall import Recall, RecallAction
from protocol.receipt import Receipt, verify_receipt
from protocol.schema import check_org_code

log = logging.getLogger(__name__)

DEFAULT_LIFETIME_S = 30 * 86400


class Sender:
    def __init__(self, ctx: NodeContext, deliveries: Deliveries) -> None:
        self.ctx = ctx
        self.deliveries = deliveries
        #: research shares (a de-identified copy): set by the runtime once the gateway's intake exists
        self.research: ResearchShares | None = None
        #: several nodes per organisation (meshnode.node.replication): a signed manifest offered to the
        #: siblings; a recipient's receipt passed on to them (manifest ID, receipt, its signer's certificate,
        #: receipt ID)
        self.on_shared: Callable[[Signed[Manifest]], Awaitable[None]] | None = None
        self.on_receipt: Callable[[CID, bytes, bytes, CID], Awaitable[None]] | None = None
        #: a recall this node signed, to the siblings (manifest ID, the signed recall)
        self.on_recall: Callable[[CID, bytes], Awaitable[None]] | None = None

    async def share(self, study_uid: str, to: Sequence[str], priority: Priority, purpose: Purpose,
                    lifetime_s: int = DEFAULT_LIFETIME_S, *, origin: str | None = None, attention: str = "",
                    note: str = "") -> Signed[Manifest]:
        """Share a local study as it is (care, patient access). A research share never comes here with the
        original study: `share_research` sends a de-identified copy (the control API and the gateway's
        announcer send research purposes there); refused here so that no path announces the original.
        `attention` (a named person at the recipients) and `note` (free text for them) go into the signed
        manifest (protocol.manifest.check_attention / check_note)."""
        if purpose is Purpose.RESEARCH and not await self._is_research_copy(study_uid):
            raise LocalProtocolError("a research share sends a de-identified copy: share it with a deid project"
                                     " (meshnode share --purpose research --deid-project P)")
        return await self.share_study(study_uid, to, priority, purpose, lifetime_s, origin=origin,
                                      attention=attention, note=note)

    async def share_research(self, study_uid: str, to: Sequence[str], priority: Priority, profile: DeidProfile,
                             *, actor: str, purpose: Purpose = Purpose.RESEARCH,
                             origin: str | None = None) -> ResearchOutcome:
        """Share a de-identified copy of the study (held first when instances are at pixel risk)."""
        if self.research is None:
            raise LocalProtocolError("research shares are not available on this node (no intake)")
        self._check_recipients(to)
        return await self.research.share(study_uid, to, priority, profile, actor=actor, purpose=purpose,
                                         origin=origin)

    async def _is_research_copy(self, study_uid: str) -> bool:
        row = await self.ctx.db.run(lambda s: s.research_copy_of(study_uid))  # indexed
        return row is not None and row.state is ResearchState.SHARED

    def _check_recipients(self, to: Sequence[str]) -> list[str]:
        recipients = sorted({check_org_code(o, "recipient") for o in to})
        if not recipients:
            raise LocalProtocolError("share with at least one organisation")
        if self.ctx.org in recipients:
            raise LocalProtocolError("a node does not share with its own organisation")
        return recipients

    async def share_study(self, study_uid: str, to: Sequence[str], priority: Priority, purpose: Purpose,
                          lifetime_s: int = DEFAULT_LIFETIME_S, *, only: Mapping[str, bytes] | None = None,
                          also: Callable[[MetadataStore, CID], None] | None = None,
                          origin: str | None = None, attention: str = "", note: str = "") -> Signed[Manifest]:
        """Sign and announce the manifest of a local study as it is stored.

        `only` (SOP Instance UID -> digest): the manifest lists exactly these instances, with these bytes (a
        research share lists what it stored, not whatever the copy study holds); one missing is an error.
        `origin`: for a received study holding several organisations' instances, the one to share onward
        (meshnode.storage.conflicts.own_lineage).
        `also(store, manifest_id)` runs in the transaction that saves the manifest and its announcements."""
        ctx = self.ctx
        recipients = self._check_recipients(to)
        if attention:  # refused (SchemaError, LimitError) before anything is read or signed
            check_attention(attention)
        if note:
            check_note(note)
        now = int(ctx.clock())

        def load(store: MetadataStore) -> tuple[list[InstanceRecord], int]:
            # this study's own revisions (indexed), not every manifest ever sent: a share costs the same on the
            # node's first day as after a hundred thousand shares
            sent = [revision for revision, _ in store.share_revisions(study_uid, ctx.org, "sent")]
            # this node's own instances only: a received one that reused this study's UID is never announced
            # under this node's signature (meshnode.storage.conflicts.own_lineage)
            instances = own_lineage(store.instances(study_uid), origin)
            if instances and all(r.source is Source.RECEIVED for r in instances) and received_for_research_only(
                    store, study_uid, {r.origin for r in instances}):
                raise LocalProtocolError(f"study {hash_uid(study_uid)} came to this node for research only: it is"
                                         " not shared onward (meshnode.storage.received_research)")
            return instances, max(sent, default=0)

        instances, last_revision = await ctx.db.run(load)
        if only is not None:
            instances = [r for r in instances if only.get(r.sop_instance_uid) == r.digest]
            if len({r.sop_instance_uid for r in instances}) != len(only):
                raise StorageError(f"study {hash_uid(study_uid)} does not hold the instances asked for")
        if not instances:
            raise NotFoundError(f"no study {hash_uid(study_uid)} on this node")
        manifest = build_manifest(
            instances,
            sender_org=ctx.org, sender_peer=ctx.peer_id, recipients=recipients, priority=priority,
            purpose=purpose, created_at=now, expires_at=now + lifetime_s, revision=last_revision + 1,
            attention=attention, note=note,
        )
        signed = manifest.sign(ctx.key)
        manifest_id = signed.cid
        row = ManifestRow(manifest_id, study_uid, "sent", ctx.org, manifest.revision,
                          advance(Side.SENDER, None, ManifestEvent.SIGNED), now,
                          manifest.expires_at, signed.encode(), manifest.recipients)
        blocks = manifest.block_order()
        # the manifest and its announcements are durable (one database call) before the first is attempted
        def save(store: MetadataStore) -> None:
            store.save_manifest(row, blocks)
            if also is not None:
                also(store, manifest_id)

        await self.deliveries.announce(manifest_id, recipients, also=save)
        await ctx.audit(AuditEvent(EventCode.INSTANCES_TRANSFERRED, "share", actor=ctx.peer_id, actor_org=ctx.org,
                                   study=hash_uid(study_uid), manifest_id=str(manifest_id),
                                   detail=f"{priority.value} {purpose.value} to {','.join(recipients)}"))
        if self.on_shared is not None:
            await self.on_shared(signed)
        return signed

    async def accept_receipt(self, peer_id: str, receipt_raw: bytes, cert_raw: bytes) -> None:
        """A recipient's signed receipt: the study is delivered to that org only once it verifies."""
        ctx = self.ctx
        now = ctx.clock()
        deliverer = ctx.peers.authorise(peer_id, now)
        signed = open_document(receipt_raw, Receipt)
        verify_receipt(signed, open_document(cert_raw, Certificate), ctx.roster(), now, skew=ctx.config.clock_skew)
        receipt = signed.document
        row, receipts = await ctx.db.run(
            lambda s: (s.manifest(receipt.manifest_id), s.receipts(receipt.manifest_id)))
        if row is None or row.direction != "sent":
            raise NotFoundError("no such sent manifest")
        if receipt.recipient_org not in row.recipients:
            raise WrongOrganisationError(f"{receipt.recipient_org} is not a recipient of this manifest")
        manifest = ctx.manifests.open(row.manifest_id, row.raw).document
        if receipt.instances_verified != len(manifest.instances):
            raise DocumentError("receipt does not cover every instance")
        if receipt.recipient_org in receipts:
            if self.on_receipt is not None and deliverer.org_code != ctx.org:
                # delivered again: this node may have stopped between recording it and queueing its pass-on
                # to the siblings; queueing is idempotent (a key queued before is left as it is)
                await self.on_receipt(receipt.manifest_id, receipt_raw, cert_raw, signed.cid)
            return
        now_ms = int(now * 1000)
        await ctx.db.run(lambda s: s.save_receipt(receipt.manifest_id, receipt.recipient_org, receipt_raw, now_ms))
        await ctx.audit(AuditEvent(EventCode.INSTANCES_TRANSFERRED, "delivered", actor=peer_id,
                                   actor_org=receipt.recipient_org, study=hash_uid(row.study_uid),
                                   manifest_id=str(receipt.manifest_id),
                                   detail=f"signed receipt for {receipt.instances_verified} instance(s)"))
        log.info("manifest %s delivered to %s (receipt verified)", receipt.manifest_id, receipt.recipient_org)
        if self.on_receipt is not None and deliverer.org_code != ctx.org:  # from the recipient: tell the siblings
            await self.on_receipt(receipt.manifest_id, receipt_raw, cert_raw, signed.cid)
        await ctx.events.publish(StudyEvent(StudyEventKind.DELIVERED, str(receipt.manifest_id), row.study_uid,
                                            receipt.recipient_org, manifest.priority.value, "sent",
                                            instances=receipt.instances_verified))

    async def research_copies_of(self, study_uid: str) -> list[CID]:
        """The research manifests made from this (original) study: live copies of its data elsewhere."""
        rows = await self.ctx.db.run(lambda s: s.research_shares(ResearchState.SHARED))
        return [r.manifest_id for r in rows if r.original_study_uid == study_uid and r.manifest_id is not None]

    async def recall(self, manifest_id: CID, reason: str, *, research_copies: bool = False) -> Signed[Recall]:
        """Withdraw a sent manifest. The research copies made from its study are not recalled by default (a
        recall may only mean "wrong recipient"): they are listed in the audit and the log as still shared;
        with `research_copies` (a correction: wrong patient, wrong images) they are recalled too."""
        recall = await self._recall(manifest_id, reason)
        row = await self.ctx.db.run(lambda s: s.manifest(manifest_id))
        copies = await self.research_copies_of(row.study_uid) if row is not None else []
        if copies and research_copies:
            rows = await self.ctx.db.run(lambda s: [s.manifest(c) for c in copies])
            for copy in [r.manifest_id for r in rows if r is not None and r.state is not ManifestState.RECALLED]:
                await self._recall(copy, f"original study withdrawn: {reason}"[:1024])
        elif copies:
            log.warning("manifest %s recalled; %d research cop(ies) of its study stay shared", manifest_id,
                        len(copies))
            await self.ctx.audit(AuditEvent(
                EventCode.INSTANCES_TRANSFERRED, "recall-research-copies-remain", Outcome.MINOR_FAILURE,
                actor=self.ctx.peer_id, actor_org=self.ctx.org, study=hash_uid(row.study_uid) if row else "",
                manifest_id=str(manifest_id),
                detail=("research manifests of this study still shared (recall them with --with-research-copies): "
                        + ",".join(str(c) for c in copies))[:1000]))
        return recall

    async def _recall(self, manifest_id: CID, reason: str) -> Signed[Recall]:
        ctx = self.ctx
        row = await ctx.db.run(lambda s: s.manifest(manifest_id))
        if row is None or row.direction != "sent":
            raise NotFoundError("no such sent manifest")
        # a recall of a recalled manifest queues again what is missing (rows queued already stay as they are)
        again = row.state is ManifestState.RECALLED
        if not again:
            advance(Side.SENDER, row.state, ManifestEvent.RECALLED)  # refused (before it is signed) if it cannot be
        recall = Recall(manifest_id, row.study_uid, ctx.org, RecallAction.WITHDRAW, None, reason[:1024],
                        int(ctx.clock())).sign(ctx.key)
        # to the siblings too (meshnode.node.replication), in the same transaction: a stop right after it
        # cannot leave them serving a recalled manifest (review m2)
        siblings = (ctx.org,) if self.on_recall is not None else ()
        await self.deliveries.recall(manifest_id, (*row.recipients, *siblings), recall.encode(),
                                     also=None if again else
                                     lambda s: node_lifecycle.move(s, manifest_id, ManifestEvent.RECALLED))
        await ctx.audit(AuditEvent(EventCode.INSTANCES_TRANSFERRED, "recall", actor=ctx.peer_id, actor_org=ctx.org,
                                   study=hash_uid(row.study_uid), manifest_id=str(manifest_id),
                                   detail=reason[:300]))
        if self.on_recall is not None:
            await self.on_recall(manifest_id, recall.encode())
        return recall
