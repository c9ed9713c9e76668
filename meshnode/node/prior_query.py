"""Prior-study queries, both ends (protocol.request_messages, protocol.request_policy): "which studies do you
hold for this NHS number?", answered with study-level metadata only, only to the organisations the holder's
[prior_query] allow names, audited at both ends (IHE XCA-I's cross-gateway query: docs/protocol/requests.md)."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections import deque
from typing import TYPE_CHECKING

from meshnode.node.context import NodeContext
from meshnode.node.study_match import patient_ids, search_studies
from meshnode.storage.audit import AuditEvent, EventCode, Outcome
from meshnode.study.pseudonyms import project_key
from protocol.errors import LimitError, MeshError, SchemaError
from protocol.exchange_messages import UNAUTHORISED, Refused
from protocol.request_messages import (
    MAX_ASKED_BY,
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
#: the node's key for the patient tag in prior-query audit entries (meshnode.study.pseudonyms key file)
AUDIT_KEY = "audit-nhs-number"
MAX_TRACKED_ORGS = 4096


class PriorQueries:
    def __init__(self, ctx: NodeContext, link: RequestLink) -> None:
        self.ctx = ctx
        self.link = link
        self._key: bytes | None = None
        #: asking org -> when its queries of the last minute came (the [prior_query] per_minute limit)
        self._asked: dict[str, deque[float]] = {}

    async def patient_tag(self, nhs_number: str) -> str:
        """The patient in this node's audit entries: an HMAC of the NHS number under a key only this node holds
        (DIR/deid/audit-nhs-number.key), never the number (an unkeyed hash of a 10-digit number is reversed by
        trying them all). An auditor here finds a patient's queries by computing the same tag."""
        key = self._key
        if key is None:
            home = self.ctx.home
            # a node with no home folder (in-process tests) keys with a key of this process only
            key = self._key = (secrets.token_bytes(32) if home is None
                               else await self.ctx.worker.run(lambda: project_key(home.path, AUDIT_KEY)))
        return "nhs-" + hmac.new(key, nhs_number.encode("ascii"), hashlib.sha256).hexdigest()[:20]

    def _over_rate(self, org: str) -> bool:
        """Whether `org` has asked its per-minute quota already (a sliding window of the last 60 s)."""
        now = self.ctx.clock()
        times = self._asked.setdefault(org, deque())
        while times and times[0] <= now - 60:
            times.popleft()
        if len(times) >= self.ctx.config.requests.prior_query_per_minute:
            return True
        if len(self._asked) > MAX_TRACKED_ORGS:
            self._asked = {org: times}
        times.append(now)
        return False

    async def ask(self, holder_org: str, nhs_number: str, *, actor: str) -> PriorReply:
        """Which studies `holder_org` holds for this NHS number; its refusal raised as our error."""
        query = PriorQuery(nhs_number, actor[:MAX_ASKED_BY] if actor.isprintable() else "")
        patient = await self.patient_tag(nhs_number)
        try:
            reply = decode_prior_reply(await self.link.call_org(holder_org, PRIOR_QUERY_PROTOCOL,
                                                                encode_prior_query(query)))
            if isinstance(reply, Refused):
                raise reply.to_error()
        except MeshError as exc:
            await self.ctx.audit(AuditEvent(EventCode.QUERY, "prior-query-sent", Outcome.MINOR_FAILURE, actor=actor,
                                            actor_org=self.ctx.org,
                                            detail=f"to {holder_org}, patient {patient}: {exc.name}"))
            raise
        await self.ctx.audit(AuditEvent(EventCode.QUERY, "prior-query-sent", actor=actor, actor_org=self.ctx.org,
                                        detail=f"to {holder_org}, patient {patient}: {len(reply.studies)} study(ies)"))
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
        if self._over_rate(org):
            await ctx.audit(AuditEvent(EventCode.SECURITY_ALERT, "prior-query-refused", Outcome.MINOR_FAILURE,
                                       actor=peer_id, actor_org=org, detail="over [prior_query] per_minute"))
            return Refused(LimitError.code, f"more than {ctx.config.requests.prior_query_per_minute} prior queries "
                                            "a minute from your organisation; try again in a minute")
        patient = await self.patient_tag(query.nhs_number)
        rows = await search_studies(ctx, await patient_ids(ctx, query.nhs_number), limit=MAX_PRIOR_STUDIES + 1)
        rows.sort(key=lambda r: r.attributes.study_date, reverse=True)
        studies = tuple(p for p in (prior_study(r.attributes.study_uid, r.attributes.study_date, r.modalities,
                                           r.attributes.description, r.series_count, r.instance_count)
                                    for r in rows[:MAX_PRIOR_STUDIES]) if p is not None)
        who = f"{query.asked_by} via {peer_id}" if query.asked_by else peer_id
        await ctx.audit(AuditEvent(EventCode.QUERY, "prior-query-answered", actor=who[:200], actor_org=org,
                                   detail=f"patient {patient}: {len(studies)} study(ies)"))
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
