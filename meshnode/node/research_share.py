"""Research shares: a de-identified COPY is shared, never the original study.

    original study --(pixel risk? held for a human | refused by policy)--> de-identify each instance
      (meshnode.study.deidentify, the project's keyed pseudonyms) --> new instances stored through the
      intake (blocks durable before metadata, as every instance) --> the copy's own manifest, signed and
      announced by the ordinary share path (Sender.share_study) with purpose research

Review fixes (notes/i15/reviews/deid.md): the instance set is frozen when the share is asked for (a release
sends only instances someone could check); states change by compare-and-set (HELD -> SENDING -> SHARED |
FAILED, HELD -> REFUSED); the intent (SENDING, with the copy's study UID, hidden from local queries) is
written before the first copy is stored, and SHARED is written in the transaction that saves the manifest
and its announcements; a copy whose store outcome is not ADDED/DUPLICATE (a conflict) fails the share; the
manifest lists exactly the instances stored by this share; the copy's UIDs depend on the profile
(DeidProfile.fingerprint) while the patient pseudonym stays project-keyed.

The original study's manifest is never signed for a research share, so a recipient of the research
manifest can fetch only the copy's blocks (access by provenance: a block is served under a manifest
that lists it). The sender keeps the link (research_shares: original study, project, research study,
research manifest) and the project's re-link table (pseudonym -> original), both audited and never sent.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import pydicom
import trio
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from meshnode.node.context import NodeContext
from meshnode.storage.audit import AuditEvent, EventCode, Outcome
from meshnode.storage.block_stream import read_instance
from meshnode.storage.conflicts import own_lineage
from meshnode.storage.records import AddOutcome, InstanceRecord, hash_uid
from meshnode.storage.research_store import RelinkEntry, ResearchShareRow, ResearchState
from meshnode.study.deidentify import Deidentifier, Relink
from meshnode.study.pseudonyms import Pseudonymiser, project_key
from protocol.cid import CID
from protocol.deid import (
    DeidProfile,
    PixelRiskPolicy,
    check_project,
    parse_profile,
    pixel_risk,
)
from protocol.document import Signed
from protocol.errors import LocalProtocolError, NotFoundError, StorageError
from protocol.manifest import Manifest, Priority, Purpose

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from meshnode.gateway.intake import StoredInstance
    from meshnode.storage.metadata import MetadataStore


class ShareStudy(Protocol):
    """Sender.share_study: sign and announce a local study's manifest (exactly `only`; `also` in its transaction)."""

    def __call__(self, study_uid: str, to: Sequence[str], priority: Priority, purpose: Purpose,
                 lifetime_s: int = ..., *, only: Mapping[str, bytes] | None = None,
                 also: Callable[[MetadataStore, CID], None] | None = None) -> Awaitable[Signed[Manifest]]: ...


#: (Part 10 bytes, source) -> the stored instance, once durable (its outcome says if it was added)
StoreInstance = Callable[[bytes, str], Awaitable["StoredInstance"]]


class PixelRiskRefusedError(LocalProtocolError):
    """A research share refused: instances may carry burned-in identifiers and the policy refuses them."""

    code = 951
    name = "pixel-risk-refused"


class HeldShareError(LocalProtocolError):
    """A decision about a held research share that cannot be taken (not held, or nothing left to send)."""

    code = 952
    name = "held-share-error"


@dataclass(frozen=True)
class ResearchOutcome:
    share_id: str
    state: ResearchState
    manifest: Signed[Manifest] | None = None
    #: (hashed SOP Instance UID, reason) of the instances at pixel risk
    held: tuple[tuple[str, str], ...] = ()
    instances: int = 0

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"research_share": self.share_id, "state": self.state.value,
                                  "held": [list(h) for h in self.held], "instances": self.instances}
        if self.manifest is not None:
            out.update({"manifest_id": str(self.manifest.cid), "revision": self.manifest.document.revision,
                        "bytes": self.manifest.document.total_bytes})
        return out


def _latest(records: Sequence[InstanceRecord]) -> list[InstanceRecord]:
    latest: dict[str, InstanceRecord] = {}
    for r in records:
        latest[r.sop_instance_uid] = r
    return list(latest.values())


def frozen_instances(row: ResearchShareRow) -> list[dict[str, object]]:
    """The instances the share was asked for (frozen then): sop, digest (hex), risk (reason or None) and
    what a reviewer needs to find them (modality, SOP class name, series description/number, instance number)."""
    value = json.loads(row.request).get("instances", [])
    return [v for v in value if isinstance(v, dict)]


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    return str(ds.get(keyword, "") or "")[:64]


class ResearchShares:
    def __init__(self, ctx: NodeContext, key_dir: Path, share_study: ShareStudy, store: StoreInstance) -> None:
        self.ctx = ctx
        self.key_dir = key_dir  # the node home: DIR/deid/<project>.key
        self.share_study = share_study
        self.store = store

    # -- asking for a research share ------------------------------------------------------------
    async def share(self, study_uid: str, to: Sequence[str], priority: Priority, profile: DeidProfile,
                    *, actor: str, purpose: Purpose = Purpose.RESEARCH,
                    origin: str | None = None) -> ResearchOutcome:
        """`purpose`: research, or care for a de-identified commercial share (a route marked for it).
        `origin`: a received study holding several organisations' instances: the one to share."""
        ctx = self.ctx
        # this node's own lineage only, as a care share (meshnode.storage.conflicts.own_lineage)
        instances = _latest(own_lineage(await ctx.db.run(lambda s: s.instances(study_uid)), origin))
        if not instances:
            raise NotFoundError(f"no study {hash_uid(study_uid)} on this node")
        frozen: list[dict[str, object]] = []
        for record in instances:
            def check(record: InstanceRecord = record) -> dict[str, object]:
                return self._assess(record)
            frozen.append(await ctx.worker.run(check))
        risky = [(hash_uid(str(f["sop"])), str(f["risk"])) for f in frozen if f["risk"] is not None]
        request = json.dumps({"to": list(to), "priority": priority.value, "purpose": purpose.value,
                              "profile": profile.to_json(), "instances": frozen}, sort_keys=True)
        row = ResearchShareRow(secrets.token_hex(8), study_uid, profile.project, request, ResearchState.HELD,
                               int(ctx.clock() * 1000), json.dumps(risky))
        if risky and profile.pixel_risk is PixelRiskPolicy.REFUSE:
            row = replace(row, state=ResearchState.REFUSED, decided_by="policy", decision="refused: pixel risk",
                          decided_ms=row.created_ms)
            await ctx.db.run(lambda s: s.save_research_share(row))
            await self._audit(row, "research-share-refused", actor, Outcome.MINOR_FAILURE,
                              f"{len(risky)} instance(s) may carry burned-in identifiers; route policy refuses")
            raise PixelRiskRefusedError(f"{len(risky)} instance(s) may carry burned-in identifiers "
                                        f"(first: {risky[0][1]}); pixel_risk = refuse")
        if risky:
            await ctx.db.run(lambda s: s.save_research_share(row))
            await self._audit(row, "research-share-held", actor, Outcome.MINOR_FAILURE,
                              f"{len(risky)} of {len(instances)} instance(s) may carry burned-in identifiers;"
                              " held for a human decision")
            log.info("research share %s of study %s held: %d instance(s) at pixel risk", row.share_id,
                     hash_uid(study_uid), len(risky))
            return ResearchOutcome(row.share_id, ResearchState.HELD, None, tuple(risky), len(instances))
        pseudonyms = await self._pseudonyms(profile)
        sending = replace(row, state=ResearchState.SENDING, research_study_uid=pseudonyms.uid(study_uid),
                          decided_by=actor, decision="shared", decided_ms=row.created_ms)
        await ctx.db.run(lambda s: s.save_research_share(sending))  # the intent, before any copy is stored
        return await self._send(sending, instances, {}, pseudonyms, actor)

    # -- human decisions on held shares -------------------------------------------------------------
    async def release(self, share_id: str, include_risky: bool, *, actor: str, reason: str = "") -> ResearchOutcome:
        """Send a held share: the instances frozen when it was asked for (a later arrival is not in it), without
        those at pixel risk unless `include_risky` (then a reason is mandatory: what the person checked)."""
        reason = reason.strip()[:200]
        if include_risky and not reason:
            raise HeldShareError("releasing instances at pixel risk needs a reason (what was checked)")
        row = await self._held(share_id)
        frozen = frozen_instances(row)
        if not frozen:  # held by a version that did not freeze the instance set: nobody knows what was checked
            raise HeldShareError(f"research share {share_id} was held without its instance set: refuse it and"
                                 " share the study again")
        chosen = [f for f in frozen if include_risky or f["risk"] is None]
        if not chosen:
            raise HeldShareError("every instance of this share is at pixel risk: release it with them, or refuse it")
        held = {(r.sop_instance_uid, r.digest.hex()): r
                for r in await self.ctx.db.run(lambda s: s.instances(row.original_study_uid))}
        records = [held.get((str(f["sop"]), str(f["digest"]))) for f in chosen]
        if any(r is None for r in records):
            raise HeldShareError("the study changed since this share was held (an instance was replaced or removed):"
                                 " refuse it and share the study again")
        risks = {str(f["sop"]): str(f["risk"]) for f in chosen if f["risk"] is not None}
        profile = parse_profile(json.loads(row.request)["profile"])
        pseudonyms = await self._pseudonyms(profile)
        decision = ("released with the instances at pixel risk" if include_risky
                    else "released without the instances at pixel risk") + (f": {reason}" if reason else "")
        sending = replace(row, state=ResearchState.SENDING, research_study_uid=pseudonyms.uid(row.original_study_uid),
                          decided_by=actor, decision=decision, decided_ms=int(self.ctx.clock() * 1000))
        if not await self.ctx.db.run(lambda s: s.update_research_share(sending, ResearchState.HELD)):
            raise HeldShareError(f"research share {share_id} was decided meanwhile")
        return await self._send(sending, [r for r in records if r is not None], risks, pseudonyms, actor)

    async def refuse(self, share_id: str, reason: str, *, actor: str) -> ResearchShareRow:
        row = await self._held(share_id)
        now = int(self.ctx.clock() * 1000)
        refused = replace(row, state=ResearchState.REFUSED, decided_by=actor, decision=f"refused: {reason[:200]}",
                          decided_ms=now)
        if not await self.ctx.db.run(lambda s: s.update_research_share(refused, ResearchState.HELD)):
            raise HeldShareError(f"research share {share_id} was decided meanwhile")
        await self._audit(refused, "research-share-refused", actor, Outcome.SUCCESS, reason[:200])
        return refused

    async def _held(self, share_id: str) -> ResearchShareRow:
        row = await self.ctx.db.run(lambda s: s.research_share(share_id))
        if row is None:
            raise NotFoundError(f"no research share {share_id[:40]!r}")
        if row.state is not ResearchState.HELD:
            raise HeldShareError(f"research share {share_id} is {row.state.value}, not held")
        return row

    async def held_instance(self, share_id: str, index: int) -> bytes:
        """The original bytes of a held share's frozen instance number `index` (for a reviewer's preview)."""
        row = await self._held(share_id)
        frozen = frozen_instances(row)
        if not 0 <= index < len(frozen):
            raise NotFoundError(f"research share {share_id} has no instance {index}")
        f = frozen[index]
        records = await self.ctx.db.run(lambda s: s.instances(row.original_study_uid))
        record = next((r for r in records if (r.sop_instance_uid, r.digest.hex()) == (f["sop"], f["digest"])), None)
        if record is None:
            raise NotFoundError("the instance is no longer held as it was")
        return await self.ctx.worker.run(lambda: self._read(record))

    # -- after a restart ----------------------------------------------------------------------------
    async def recover(self) -> int:
        """Shares left SENDING by a stop: nothing was announced (SHARED commits with the announcement), so
        each is recorded FAILED (its partial copy stays linked and hidden) and audited. Returns how many."""
        rows = await self.ctx.db.run(lambda s: s.research_shares(ResearchState.SENDING))
        for row in rows:
            await self._failed(row, "interrupted (the node stopped); nothing was announced")
        return len(rows)

    # -- re-identification ------------------------------------------------------------------------
    async def export_relink(self, project: str, *, actor: str) -> list[RelinkEntry]:
        """The project's pseudonym -> original table, for an authorised re-identification request; audited."""
        check_project(project, "project")
        entries = await self.ctx.db.run(lambda s: s.relink(project))
        await self.ctx.audit(AuditEvent(EventCode.EXPORT, "deid-relink-export", actor=actor,
                                        actor_org=self.ctx.org,
                                        detail=f"re-link table of project {project}: {len(entries)} entries"))
        return entries

    # -- the copy -----------------------------------------------------------------------------------
    async def _pseudonyms(self, profile: DeidProfile) -> Pseudonymiser:
        # a project with pseudonyms recorded and no key lost its key: a new one would make new pseudonyms for
        # the same patients (the project's data silently split in two), so it is refused, not remade
        known = await self.ctx.db.run(lambda s: s.has_relink(profile.project))
        key = await self.ctx.worker.run(lambda: project_key(self.key_dir, profile.project, create=not known))
        return Pseudonymiser(profile.project, key, profile.fingerprint())

    def _read(self, record: InstanceRecord) -> bytes:
        return read_instance(self.ctx.storage.blocks, record)

    def _assess(self, record: InstanceRecord) -> dict[str, object]:
        """The frozen entry of one instance: its identity, pixel risk and what a reviewer needs to find it."""
        out: dict[str, object] = {"sop": record.sop_instance_uid, "digest": record.digest.hex(),
                                  "sop_class": UID(record.sop_class_uid).name, "modality": "",
                                  "series_description": "", "series_number": "", "instance_number": ""}
        try:
            ds = pydicom.dcmread(io.BytesIO(self._read(record)), defer_size=1024)
        except (InvalidDicomError, ValueError, EOFError, OSError):
            return {**out, "risk": "cannot be read to check for burned-in annotation"}
        out.update({"modality": _text(ds, "Modality"), "series_description": _text(ds, "SeriesDescription"),
                    "series_number": _text(ds, "SeriesNumber"), "instance_number": _text(ds, "InstanceNumber")})
        image_type = ds.get("ImageType") or ()
        out["risk"] = pixel_risk(
            sop_class_uid=record.sop_class_uid, modality=_text(ds, "Modality"),
            burned_in=str(ds.get("BurnedInAnnotation")) if "BurnedInAnnotation" in ds else None,
            conversion_type=_text(ds, "ConversionType"),
            image_type=tuple(str(v) for v in (image_type if isinstance(image_type, list | tuple |
                                              pydicom.multival.MultiValue) else [image_type])),
            has_pixels=any(t in ds for t in (0x7FE00010, 0x7FE00008, 0x7FE00009)),
            recognizable_features=_text(ds, "RecognizableVisualFeatures") or None)
        return out

    async def _send(self, row: ResearchShareRow, instances: Sequence[InstanceRecord], risks: Mapping[str, str],
                    pseudonyms: Pseudonymiser, actor: str) -> ResearchOutcome:
        """`row` is SENDING (written): store each copy, record the re-link rows, then sign and announce exactly
        the stored instances with SHARED in the same transaction. A failure records FAILED (audited)."""
        ctx = self.ctx
        request = json.loads(row.request)
        profile = parse_profile(request["profile"])
        deidentifier = Deidentifier(profile, pseudonyms)
        relink = Relink()
        relink.add("study", row.research_study_uid, row.original_study_uid)
        stored: dict[str, bytes] = {}
        try:
            for record in instances:
                def one(record: InstanceRecord = record) -> bytes:
                    return deidentifier.deidentify_bytes(self._read(record), relink,
                                                         pixel_risk=risks.get(record.sop_instance_uid))
                copy = await ctx.worker.run(one)
                result = await self.store(copy, f"deid:{row.share_id}")
                if result.outcome not in (AddOutcome.ADDED, AddOutcome.DUPLICATE):
                    raise StorageError(f"the copy of instance {hash_uid(record.sop_instance_uid)} was not stored as"
                                       f" it is ({result.outcome.value}: this node holds other bytes under its UID)")
                if result.study_uid != row.research_study_uid:
                    raise StorageError("a de-identified copy landed in another study than the share's copy")
                stored[result.sop_instance_uid] = hashlib.sha256(copy).digest()
            entries = [(kind, pseudonym, original) for (kind, pseudonym), original in relink.entries.items()]
            await ctx.db.run(lambda s: s.add_relink(profile.project, entries))
            shared: list[ResearchShareRow] = []

            def mark_shared(store: MetadataStore, manifest_id: CID) -> None:
                done = replace(row, state=ResearchState.SHARED, manifest_id=manifest_id)
                if not store.update_research_share(done, ResearchState.SENDING):
                    raise HeldShareError(f"research share {row.share_id} is no longer being sent")
                shared.append(done)

            signed = await self.share_study(row.research_study_uid, request["to"], Priority(request["priority"]),
                                            Purpose(request.get("purpose", Purpose.RESEARCH.value)),
                                            only=stored, also=mark_shared)
        except trio.Cancelled:
            raise  # left SENDING: recover() records it at the next start
        except Exception as exc:
            await self._failed(row, f"{type(exc).__name__}: {exc}", relink=relink, project=profile.project,
                               stored=len(stored))
            raise
        done = shared[0] if shared else replace(row, state=ResearchState.SHARED, manifest_id=signed.cid)
        await self._audit(done, "research-share", actor, Outcome.SUCCESS,
                          f"de-identified copy {hash_uid(row.research_study_uid)} of {hash_uid(row.original_study_uid)}"
                          f" for project {profile.project}: {len(instances)} instance(s), {row.decision};"
                          f" to {','.join(request['to'])}", manifest_id=signed.cid)
        log.info("research share %s: study %s shared as de-identified copy %s (manifest %s)", row.share_id,
                 hash_uid(row.original_study_uid), hash_uid(row.research_study_uid), signed.cid)
        return ResearchOutcome(row.share_id, ResearchState.SHARED, signed, (), len(instances))

    async def _failed(self, row: ResearchShareRow, why: str, *, relink: Relink | None = None, project: str = "",
                      stored: int = -1) -> None:
        """Record a share that failed (SENDING -> FAILED; its partial copy stays linked, hidden, re-linkable)."""
        with trio.CancelScope(shield=True):
            failed = replace(row, state=ResearchState.FAILED, decision=f"failed: {why}"[:300],
                             decided_ms=int(self.ctx.clock() * 1000))

            def write(s: MetadataStore) -> bool:
                if relink is not None:
                    s.add_relink(project, [(k, p, o) for (k, p), o in relink.entries.items()])
                return s.update_research_share(failed, ResearchState.SENDING)

            if await self.ctx.db.run(write):
                part = f"; {stored} de-identified instance(s) stored (hidden, linked)" if stored >= 0 else ""
                await self._audit(failed, "research-share-failed", row.decided_by or "node", Outcome.SERIOUS_FAILURE,
                                  f"nothing announced: {why}"[:300] + part)
                log.warning("research share %s of study %s failed (%s; detail in the audit)", row.share_id,
                            hash_uid(row.original_study_uid), why.split(":", 1)[0][:80])

    async def _audit(self, row: ResearchShareRow, action: str, actor: str, outcome: Outcome, detail: str,
                     manifest_id: CID | None = None) -> None:
        await self.ctx.audit(AuditEvent(EventCode.INSTANCES_TRANSFERRED, action, outcome, actor=actor,
                                        actor_org=self.ctx.org, study=hash_uid(row.original_study_uid),
                                        manifest_id=str(manifest_id) if manifest_id else "",
                                        detail=f"research share {row.share_id}: {detail}"[:1000]))
