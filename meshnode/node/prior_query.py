"""Prior-study queries, both ends (protocol.request_messages, protocol.request_policy): "which studies do you
hold for this NHS number?", answered with study-level metadata only, only to the organisations the holder's
[prior_query] allow names, audited at both ends (IHE XCA-I's cross-gateway query: docs/protocol/requests.md)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from meshnode.node.context import NodeContext
from meshnode.node.study_match import patient_ids, search_studies
from meshnode.storage.audit import AuditEvent, EventCode, Outcome
from protocol.errors import MeshError, SchemaError
from protocol.exchange_messages import UNAUTHORISED, Refused
from protocol.request_messages import (
    MAX_PRIOR_STUDIES,
    PRIOR_QUERY_PROTOCOL,
    PriorQuery,
    PriorReply,
    PriorStudy,
    decode_prior_query,
    decode_prior_reply,
    encode_prior_query,
    encode_prior_reply,
)
from protocol.request_policy import prior_query_allowed

if TYPE_CHECKING:
    from meshnode.node.requests import RequestLink

_CONTROL = re.compile("[\x00-\x1f\x7f]")
_MODALITY = re.compile(r"[A-Za-z0-9 _-]{1,16}")


class PriorQueries:
    def __init__(self, ctx: NodeContext, link: RequestLink) -> None:
        self.ctx = ctx
        self.link = link

    async def ask(self, holder_org: str, nhs_number: str, *, actor: str) -> PriorReply:
        """Which studies `holder_org` holds for this NHS number; its refusal raised as our error."""
        query = PriorQuery(nhs_number)
        try:
            reply = decode_prior_reply(await self.link.call_org(holder_org, PRIOR_QUERY_PROTOCOL,
                                                                encode_prior_query(query)))
            if isinstance(reply, Refused):
                raise reply.to_error()
        except MeshError as exc:
            await self.ctx.audit(AuditEvent(EventCode.QUERY, "prior-query-sent", Outcome.MINOR_FAILURE, actor=actor,
                                            actor_org=self.ctx.org, detail=f"to {holder_org}: {exc.name}"))
            raise
        await self.ctx.audit(AuditEvent(EventCode.QUERY, "prior-query-sent", actor=actor, actor_org=self.ctx.org,
                                        detail=f"to {holder_org}: {len(reply.studies)} study(ies)"))
        return reply

    async def answer(self, peer_id: str, payload: bytes) -> PriorReply | Refused:
        """The answer to a peer's query: at most MAX_PRIOR_STUDIES studies, newest first, study-level
        metadata only; or, to an org the policy does not name, the one refusal (which says nothing about the
        patient), audited as a Security Alert."""
        ctx = self.ctx
        cert = ctx.peers.authorise(peer_id, ctx.clock())
        query = decode_prior_query(payload)
        org = cert.org_code
        if not prior_query_allowed(ctx.config.requests.prior_query_allow, org):
            await ctx.audit(AuditEvent(EventCode.SECURITY_ALERT, "prior-query-refused", Outcome.MINOR_FAILURE,
                                       actor=peer_id, actor_org=org, detail="not allowed by [prior_query] allow"))
            return UNAUTHORISED
        rows = await search_studies(ctx, await patient_ids(ctx, query.nhs_number), limit=MAX_PRIOR_STUDIES + 1)
        rows.sort(key=lambda r: r.attributes.study_date, reverse=True)
        studies = tuple(p for p in (prior_study(r.attributes.study_uid, r.attributes.study_date, r.modalities,
                                           r.attributes.description, r.series_count, r.instance_count)
                                    for r in rows[:MAX_PRIOR_STUDIES]) if p is not None)
        await ctx.audit(AuditEvent(EventCode.QUERY, "prior-query-answered", actor=peer_id, actor_org=org,
                                   detail=f"{len(studies)} study(ies)"))
        return PriorReply(studies, truncated=len(rows) > MAX_PRIOR_STUDIES)


def prior_study(uid: str, date: str, modalities: tuple[str, ...], description: str, series: int,
           instances: int) -> PriorStudy | None:
    """Only what the query may say, each value cut to the wire's limits: a local date, modality or description
    the wire does not allow is left out (control characters dropped), a study whose UID is not a valid UID is
    not listed (None), so one odd study never spoils the answer."""
    text = _CONTROL.sub("", description)[:64]
    try:
        return PriorStudy(uid, date if len(date) == 8 and date.isascii() and date.isdigit() else "",
                          tuple(m for m in modalities if _MODALITY.fullmatch(m))[:16], text, series, instances)
    except SchemaError:
        return None


def prior_bytes(reply: PriorReply | Refused) -> bytes:
    return encode_prior_reply(reply)
