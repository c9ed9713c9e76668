"""Research shares: a de-identified COPY is shared, never the original study.

    original study --(pixel risk? held for a human | refused by policy)--> de-identify each instance
      (meshnode.study.deidentify, the project's keyed pseudonyms) --> new instances stored through the
      intake (blocks durable before metadata, as every instance) --> the copy's own manifest, signed and
      announced by the ordinary share path (Sender.share_study) with purpose research

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
import warnings
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from meshnode.node.context import NodeContext
from meshnode.storage.audit import AuditEvent, EventCode, Outcome
from meshnode.storage.records import InstanceRecord, hash_uid
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

#: (study UID, recipients, priority, purpose) -> the signed manifest of that local study, announced
ShareStudy = Callable[[str, Sequence[str], Priority, Purpose], Awaitable[Signed[Manifest]]]
#: (Part 10 bytes, source) -> the stored instance's study UID, once durable
StoreInstance = Callable[[bytes, str], Awaitable[str]]


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


class ResearchShares:
    def __init__(self, ctx: NodeContext, key_dir: Path, share_study: ShareStudy, store: StoreInstance) -> None:
        self.ctx = ctx
        self.key_dir = key_dir  # the node home: DIR/deid/<project>.key
        self.share_study = share_study
        self.store = store

    # -- asking for a research share ------------------------------------------------------------
    async def share(self, study_uid: str, to: Sequence[str], priority: Priority, profile: DeidProfile,
                    *, actor: str, purpose: Purpose = Purpose.RESEARCH) -> ResearchOutcome:
        """`purpose`: research, or care for a de-identified commercial share (a route marked for it)."""
        ctx = self.ctx
        instances = _latest(await ctx.db.run(lambda s: s.instances(study_uid)))
        if not instances:
            raise NotFoundError(f"no study {hash_uid(study_uid)} on this node")
        risky = []
        for record in instances:
            def check(record: InstanceRecord = record) -> str | None:
                return self._risk(record)
            reason = await ctx.worker.run(check)
            if reason is not None:
                risky.append((hash_uid(record.sop_instance_uid), reason))
        request = json.dumps({"to": list(to), "priority": priority.value, "purpose": purpose.value,
                              "profile": profile.to_json()},
                             sort_keys=True)
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
        return await self._send(row, instances, actor, "shared")

    # -- human decisions on held shares -------------------------------------------------------------
    async def release(self, share_id: str, include_risky: bool, *, actor: str) -> ResearchOutcome:
        row = await self._held(share_id)
        instances = _latest(await self.ctx.db.run(lambda s: s.instances(row.original_study_uid)))
        if not include_risky:
            risky = {h for h, _ in json.loads(row.reasons)}
            instances = [r for r in instances if hash_uid(r.sop_instance_uid) not in risky]
        if not instances:
            raise HeldShareError("every instance of this share is at pixel risk: release it with them, or refuse it")
        return await self._send(row, instances, actor,
                                "released with the instances at pixel risk" if include_risky
                                else "released without the instances at pixel risk")

    async def refuse(self, share_id: str, reason: str, *, actor: str) -> ResearchShareRow:
        row = await self._held(share_id)
        now = int(self.ctx.clock() * 1000)
        refused = replace(row, state=ResearchState.REFUSED, decided_by=actor, decision=f"refused: {reason[:200]}",
                          decided_ms=now)
        await self.ctx.db.run(lambda s: s.save_research_share(refused))
        await self._audit(refused, "research-share-refused", actor, Outcome.SUCCESS, reason[:200])
        return refused

    async def _held(self, share_id: str) -> ResearchShareRow:
        row = await self.ctx.db.run(lambda s: s.research_share(share_id))
        if row is None:
            raise NotFoundError(f"no research share {share_id[:40]!r}")
        if row.state is not ResearchState.HELD:
            raise HeldShareError(f"research share {share_id} is {row.state.value}, not held")
        return row

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
    def _read(self, record: InstanceRecord) -> bytes:
        blocks = self.ctx.storage.blocks
        data = b"".join(blocks.get(cid, verify=True) for cid in record.blocks)
        if len(data) != record.size or hashlib.sha256(data).digest() != record.digest:
            raise StorageError(f"instance {hash_uid(record.sop_instance_uid)} does not reassemble to its digest")
        return data

    def _risk(self, record: InstanceRecord) -> str | None:
        data = self._read(record)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(io.BytesIO(data), defer_size=1024)
        except (InvalidDicomError, ValueError, EOFError, OSError):
            return "cannot be read to check for burned-in annotation"
        image_type = ds.get("ImageType") or ()
        return pixel_risk(sop_class_uid=record.sop_class_uid, modality=str(ds.get("Modality", "") or ""),
                          burned_in=str(ds.get("BurnedInAnnotation")) if "BurnedInAnnotation" in ds else None,
                          conversion_type=str(ds.get("ConversionType", "") or ""),
                          image_type=tuple(str(v) for v in (image_type if isinstance(image_type, list | tuple |
                                           pydicom.multival.MultiValue) else [image_type])),
                          has_pixels=any(t in ds for t in (0x7FE00010, 0x7FE00008, 0x7FE00009)))

    async def _send(self, row: ResearchShareRow, instances: Sequence[InstanceRecord], actor: str,
                    decision: str) -> ResearchOutcome:
        ctx = self.ctx
        request = json.loads(row.request)
        profile = parse_profile(request["profile"])
        key = await ctx.worker.run(lambda: project_key(self.key_dir, profile.project))
        deidentifier = Deidentifier(profile, Pseudonymiser(profile.project, key))
        relink = Relink()
        research_study = ""
        for record in instances:
            def one(record: InstanceRecord = record) -> bytes:
                return deidentifier.deidentify_bytes(self._read(record), relink)
            copy = await ctx.worker.run(one)
            research_study = await self.store(copy, f"deid:{row.share_id}")
        entries = [(kind, pseudonym, original) for (kind, pseudonym), original in relink.entries.items()]
        await ctx.db.run(lambda s: s.add_relink(profile.project, entries))
        signed = await self.share_study(research_study, request["to"], Priority(request["priority"]),
                                        Purpose(request.get("purpose", Purpose.RESEARCH.value)))
        done = replace(row, state=ResearchState.SHARED, research_study_uid=research_study, manifest_id=signed.cid,
                       decided_by=actor, decision=decision, decided_ms=int(ctx.clock() * 1000))
        await ctx.db.run(lambda s: s.save_research_share(done))
        await self._audit(done, "research-share", actor, Outcome.SUCCESS,
                          f"de-identified copy {hash_uid(research_study)} of {hash_uid(row.original_study_uid)}"
                          f" for project {profile.project}: {len(instances)} instance(s), {decision};"
                          f" to {','.join(request['to'])}", manifest_id=signed.cid)
        log.info("research share %s: study %s shared as de-identified copy %s (manifest %s)", row.share_id,
                 hash_uid(row.original_study_uid), hash_uid(research_study), signed.cid)
        return ResearchOutcome(row.share_id, ResearchState.SHARED, signed, (), len(instances))

    async def _audit(self, row: ResearchShareRow, action: str, actor: str, outcome: Outcome, detail: str,
                     manifest_id: CID | None = None) -> None:
        await self.ctx.audit(AuditEvent(EventCode.INSTANCES_TRANSFERRED, action, outcome, actor=actor,
                                        actor_org=self.ctx.org, study=hash_uid(row.original_study_uid),
                                        manifest_id=str(manifest_id) if manifest_id else "",
                                        detail=f"research share {row.share_id}: {detail}"[:1000]))
