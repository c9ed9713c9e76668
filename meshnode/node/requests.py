"""Study requests and prior-study queries, both ends (protocol.study_request, protocol.request_lifecycle,
protocol.request_policy): the requester signs a request and sends it to the holder org's nodes; the holder
verifies it (certified, unrevoked org, signed by the peer that delivers it, addressed to this org, not
expired, not seen before), stores it, and either queues it for its PACS team or applies its policy; each
decision (approve: ordinary shares made with Sender.share; decline; expiry) is a signed response sent back
to the requesting node, retried until it is taken. Every step is audited at both ends, with the user.

The CLI (control API: meshnode.node.request_routes) and the portal (meshnode.web.requests_web) call these
same methods.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import trio

from meshnode.gateway.reconcile_holds import check_not_held
from meshnode.node.context import NodeContext, keep_running
from meshnode.node.prior_query import PriorQueries
from meshnode.node.sender import Sender
from meshnode.node.study_match import MAX_MATCHES, PatientMismatchError, patient_ids, search_studies
from meshnode.storage.audit import AuditEvent, EventCode, Outcome
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.records import StudySummaryRow, hash_uid
from meshnode.storage.request_store import INCOMING, OUTGOING, RequestRow
from protocol.backoff import Backoff
from protocol.cid import CID
from protocol.document import open_document
from protocol.errors import (
    LocalProtocolError,
    MeshError,
    NotFoundError,
    SchemaError,
    UnauthorisedError,
)
from protocol.exchange_messages import Ack, Refused, decode_ack_reply, encode_response
from protocol.manifest import Priority, Purpose
from protocol.request_lifecycle import (
    RequestEvent,
    advance,
    apply_response,
    expired,
    receive_request,
    recheck_request,
    receive_response,
)
from protocol.request_messages import (
    REQUEST_RESPONSE_PROTOCOL,
    STUDY_REQUEST_PROTOCOL,
    RequestDelivery,
    ResponseDelivery,
    encode_delivery,
)
from protocol.request_policy import PolicyAction, request_action
from protocol.study_request import (
    DEFAULT_LIFETIME,
    MAX_REASON,
    RequestReplayError,
    RequestResponse,
    RequestState,
    StudyRequest,
    parse_request_id,
)

if TYPE_CHECKING:
    from trio_typing import TaskStatus

log = logging.getLogger(__name__)

#: seconds between passes over undelivered responses and expired requests
SWEEP_EVERY_S = 5.0
#: the requester waits this long past a request's expiry for the holder's own answer (a decision made just
#: before the expiry, or the holder's "expired") before it records the request as expired unanswered
RESPONSE_GRACE_S = 3600.0
EXPIRED_REASON = "nobody decided before it expired"
#: rows one sweep query takes (expiry, responses to deliver), and expiry batches per sweep at most
SWEEP_BATCH = 500
SWEEP_BATCHES = 100
#: the longest wait before a response is offered again to a requester that could not be reached
MAX_BACKOFF_S = 3600.0
#: a peer that did not take a response is tried again after 5 s, doubling to an hour (protocol.backoff)
RESPONSE_BACKOFF = Backoff(base=SWEEP_EVERY_S, factor=2.0, cap=MAX_BACKOFF_S)
MAX_BACKOFF_PEERS = 4096


class RequestLink(Protocol):
    """How requests reach other nodes: libp2p in the node (meshnode.node.request_wire), memory in tests."""

    async def call_org(self, org: str, protocol_id: str, payload: bytes) -> bytes:
        """The answer of the first reachable node of `org` that answers (UnavailableError: none)."""
        ...

    async def call_peer(self, peer_id: str, protocol_id: str, payload: bytes) -> bytes: ...


def request_json(row: RequestRow) -> dict[str, object]:
    """One request as the CLI and the portal show it (the patient identifiers included: staff only)."""
    request = open_document(row.raw, StudyRequest).document
    return {
        "request_id": row.request_id, "direction": row.direction, "state": row.state.value,
        "requester_org": row.requester_org, "holder_org": row.holder_org, "nhs_number": request.nhs_number,
        "patient_id": request.patient_id, "date_from": request.date_from, "date_to": request.date_to,
        "modality": request.modality, "reason": request.reason, "priority": request.priority.value,
        "purpose": request.purpose.value, "requested_by": request.requested_by,
        "created_at": request.created_at, "expires_at": request.expires_at,
        "manifests": json.loads(row.manifests), "decision_reason": row.reason, "decided_by": row.decided_by,
        "updated_ms": row.updated_ms, "response_delivered": row.response_delivered,
        "cursor": f"{row.created_ms}-{row.request_id}",
    }


def arrived_manifests(store: MetadataStore, row: RequestRow) -> list[str]:
    """Of the manifests an approval of our outgoing request lists, those that have arrived here: received
    from the holder org and addressed to us (a response may name manifests the holder never sent, or another
    org's; only what arrived is credited to the request)."""
    out = []
    for text in json.loads(row.manifests):
        try:
            m = store.manifest(CID.parse(str(text)))
        except MeshError:
            continue
        if (m is not None and m.direction == "received" and m.sender_org == row.holder_org
                and row.requester_org in m.recipients):
            out.append(str(text))
    return out


def request_of_manifest(store: MetadataStore, direction: str) -> dict[str, str]:
    """Manifest ID -> the ID of the request it answers, for the approved requests of one direction (the inbox
    and outbox show which studies came from, or went out on, a request). Outgoing: only manifests that
    arrived from the holder org addressed to us (arrived_manifests)."""
    return {m: r.request_id for r in store.requests(direction, RequestState.APPROVED)
            for m in (arrived_manifests(store, r) if direction == OUTGOING else json.loads(r.manifests))}


class Requests:
    def __init__(self, ctx: NodeContext, sender: Sender, link: RequestLink) -> None:
        self.ctx = ctx
        self.sender = sender
        self.link = link
        #: prior-study queries, asked and answered (meshnode.node.prior_query)
        self.prior = PriorQueries(ctx, link)
        self._locks: dict[str, trio.Lock] = {}
        #: requester peer -> (failed deliveries in a row, clock time before which it is not tried again)
        self._backoff: dict[str, tuple[int, float]] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Holds the policy's decisions (made after the request is answered) and the sweep that retries
        undelivered responses and expires requests nobody decided."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(keep_running, "request sweep", self._sweep_loop)
            task_status.started()
            await trio.sleep_forever()

    async def _sweep_loop(self) -> None:
        while True:
            try:
                await self.sweep()
            except MeshError as exc:
                log.warning("request sweep: %s", exc)
            await trio.sleep(SWEEP_EVERY_S)

    # -- requester ---------------------------------------------------------------------------
    async def send(self, holder_org: str, *, nhs_number: str = "", patient_id: str = "", date_from: str = "",
                   date_to: str = "", modality: str = "", reason: str, priority: Priority = Priority.ROUTINE,
                   purpose: Purpose = Purpose.CARE, requested_by: str,
                   lifetime_s: int = DEFAULT_LIFETIME) -> RequestRow:
        """Sign a request and deliver it to a node of `holder_org`; stored (pending) only once one took it."""
        ctx = self.ctx
        now = int(ctx.clock())
        request = StudyRequest(secrets.token_bytes(16), ctx.org, ctx.peer_id, holder_org, nhs_number, patient_id,
                               date_from, date_to, modality.upper(), reason, priority, purpose, requested_by,
                               now, now + lifetime_s)
        signed = request.sign(ctx.key)
        row = RequestRow(request.id_text, OUTGOING, ctx.org, holder_org, RequestState.PENDING, signed.encode(), b"",
                         now * 1000, request.expires_at, updated_ms=now * 1000)
        await ctx.db.run(lambda s: s.save_request(row))  # durable before anyone can answer it
        payload = encode_delivery(RequestDelivery(signed.encode(), ctx.certificate.encode()))
        try:
            reply = decode_ack_reply(await self.link.call_org(holder_org, STUDY_REQUEST_PROTOCOL, payload))
            if isinstance(reply, Refused):
                raise reply.to_error()
        except BaseException as exc:
            with trio.CancelScope(shield=True):
                await ctx.db.run(lambda s: s.delete_request(row.request_id, OUTGOING))
            if isinstance(exc, MeshError):
                await ctx.audit(AuditEvent(EventCode.QUERY, "study-request-not-sent", Outcome.MINOR_FAILURE,
                                           actor=requested_by, actor_org=ctx.org,
                                           detail=f"{request.id_text} to {holder_org}: {exc.name}: {exc}"[:300]))
            raise
        await ctx.audit(AuditEvent(EventCode.QUERY, "study-request-sent", actor=requested_by, actor_org=ctx.org,
                                   detail=f"{request.id_text} to {holder_org}, {priority.value} {purpose.value}"))
        log.info("study request %s sent to %s", request.id_text, holder_org)
        ctx.wake()
        return row

    async def accept_response(self, peer_id: str, payload: bytes) -> None:
        """The holder's signed response: applied to our outgoing request (protocol.request_lifecycle)."""
        ctx = self.ctx
        now = ctx.clock()
        try:
            ctx.peers.authorise(peer_id, now)
            received = receive_response(payload, peer_id=peer_id, roster=ctx.roster(), now=now,
                                        skew=ctx.config.clock_skew)
            response = received.response.document
            key = response.request_id.hex()
            async with self._lock(key):
                row = await ctx.db.run(lambda s: s.request(key, OUTGOING))
                if row is None:
                    raise NotFoundError("no such request")
                request = open_document(row.raw, StudyRequest).document
                state = apply_response(row.state, request, response)
                if state is row.state:
                    return  # the same answer again
                new = RequestRow(row.request_id, OUTGOING, row.requester_org, row.holder_org, state, row.raw, b"",
                                 row.created_ms, row.expires_at, json.dumps([str(m) for m in response.manifests]),
                                 response.reason, response.decided_by, int(now * 1000), received.raw, True)
                if not await ctx.db.run(lambda s: s.update_request(new, row.state)):
                    raise LocalProtocolError("the request changed meanwhile; send the response again")
        except MeshError as exc:
            await ctx.audit(AuditEvent(EventCode.SECURITY_ALERT, "request-response-refused", Outcome.MINOR_FAILURE,
                                       actor=peer_id, detail=f"{exc.name}: {exc}"[:300]))
            raise
        await ctx.audit(AuditEvent(EventCode.QUERY, f"study-request-{state.value}", actor=response.decided_by,
                                   actor_org=response.holder_org,
                                   detail=(f"{key}: {len(response.manifests)} share(s)"
                                           + (f"; {response.reason}" if response.reason else ""))[:300]))
        log.info("study request %s %s by %s", key, state.value, response.holder_org)
        ctx.wake()

    # -- holder ------------------------------------------------------------------------------
    async def accept_request(self, peer_id: str, payload: bytes) -> None:
        """A study request delivered by `peer_id`: verified, stored and audited, or refused (and audited)
        with nothing stored. The policy's decision, if any, is made after this returns."""
        ctx = self.ctx
        now = ctx.clock()
        try:
            deliverer = ctx.peers.authorise(peer_id, now)
            received = receive_request(payload, peer_id=peer_id, peer_org=deliverer.org_code, own_org=ctx.org,
                                       roster=ctx.roster(), now=now, skew=ctx.config.clock_skew)
            request = received.request.document
            row = RequestRow(request.id_text, INCOMING, request.requester_org, ctx.org, RequestState.PENDING,
                             received.raw, received.certificate, int(now * 1000), request.expires_at,
                             updated_ms=int(now * 1000))
            event = AuditEvent(EventCode.QUERY, "study-request-received", actor=f"{request.requested_by}",
                               actor_org=request.requester_org,
                               detail=(f"{request.id_text} from {peer_id}: {request.priority.value} "
                                       f"{request.purpose.value}"))

            cap = ctx.config.requests.max_pending_per_org

            def save(store: MetadataStore) -> bool:  # the cap is counted in the insert's own transaction
                return store.save_request(row, cap)

            if not await ctx.db.run(save):
                raise RequestReplayError(f"request {request.id_text} was received before")
        except MeshError as exc:
            await ctx.audit(AuditEvent(EventCode.SECURITY_ALERT, "study-request-refused", Outcome.MINOR_FAILURE,
                                       actor=peer_id, detail=f"{exc.name}: {exc}"[:300]))
            raise
        await ctx.audit(event)
        ctx.wake()
        action, rule = request_action(ctx.config.requests.rules, request)
        if action is not PolicyAction.QUEUE and self._nursery is not None:
            self._nursery.start_soon(self._apply_policy, request, action, rule)

    async def _apply_policy(self, request: StudyRequest, action: PolicyAction, rule: int | None) -> None:
        who = f"policy:request_policy[{rule}]"
        try:
            if action is PolicyAction.REFUSE:
                await self.decline(request.id_text, "refused by the holder's request policy", decided_by=who)
            elif not request.nhs_number:
                # a holder-local patient ID alone is the requester's word for who the patient is: a person checks
                log.info("request %s: names no NHS number; queued for a person", request.id_text)
            else:
                studies = [s.attributes.study_uid for s in await self.matching(request.id_text)]
                if studies:
                    await self.approve(request.id_text, studies, decided_by=who)
                else:
                    log.info("request %s: policy would approve, but no study matches; queued", request.id_text)
        except MeshError as exc:
            log.warning("request %s: policy %s failed: %s", request.id_text, action.value, exc)
        except Exception:  # task boundary: a bug here must not take the node down; the request stays queued
            log.exception("request %s: policy %s failed", request.id_text, action.value)

    async def incoming_request(self, request_id: str) -> tuple[RequestRow, StudyRequest]:
        key = parse_request_id(request_id).hex()
        row = await self.ctx.db.run(lambda s: s.request(key, INCOMING))
        if row is None:
            raise NotFoundError(f"no incoming request {key}")
        return row, open_document(row.raw, StudyRequest).document

    def _lock(self, key: str) -> trio.Lock:
        if len(self._locks) > 1024:
            self._locks = {k: v for k, v in self._locks.items() if v.locked()}
        return self._locks.setdefault(key, trio.Lock())

    async def patient_of(self, request: StudyRequest) -> list[str]:
        """The local patient IDs the request names (study_match.patient_ids); a request naming two patients
        (an NHS number and another patient's local ID) is refused and audited as a Security Alert."""
        try:
            return await patient_ids(self.ctx, request.nhs_number, request.patient_id)
        except PatientMismatchError as exc:
            await self.ctx.audit(AuditEvent(EventCode.SECURITY_ALERT, "study-request-patient-mismatch",
                                            Outcome.MINOR_FAILURE, actor=request.requested_by,
                                            actor_org=request.requester_org,
                                            detail=f"{request.id_text}: {exc}"[:300]))
            raise

    async def matching(self, request_id: str) -> list[StudySummaryRow]:
        """The local studies an incoming request asks for."""
        _, request = await self.incoming_request(request_id)
        return await search_studies(self.ctx, await self.patient_of(request),
                                    request.date_from, request.date_to, request.modality)

    async def approve(self, request_id: str, study_uids: Sequence[str], *, decided_by: str) -> RequestRow:
        """Share the chosen studies with the requesting org (ordinary shares: Sender.share) and answer it.
        Every study must be the requested patient's (a slip cannot send another patient's images)."""
        if not study_uids or len(study_uids) > MAX_MATCHES:
            raise SchemaError(f"choose 1-{MAX_MATCHES} studies to send")
        row, request = await self.incoming_request(request_id)
        async with self._lock(row.request_id):
            row, request = await self.incoming_request(request_id)
            await self._check_pending(row, request)
            advance(row.state, RequestEvent.APPROVE)
            await self._check_signer(row, request)
            patient = set(await self.patient_of(request))
            chosen = list(dict.fromkeys(study_uids))
            studies = await self.ctx.db.run(lambda s: [s.study(u) for u in chosen])
            for uid, study in zip(chosen, studies):
                if study is None or study.attributes.patient_id not in patient:
                    raise UnauthorisedError(f"study {hash_uid(uid)} is not a study of the requested patient")
            for uid in chosen:  # as `meshnode share` does: nothing patient reconciliation holds back
                await self.ctx.db.run(lambda s: check_not_held(s, uid, include_unreconciled=False, what="send"))
            manifests = []
            for uid in chosen:
                signed = await self.sender.share(uid, [request.requester_org], request.priority, request.purpose)
                manifests.append(signed.cid)
            return await self._record_decision(row, request, RequestState.APPROVED, decided_by, "", tuple(manifests))

    async def decline(self, request_id: str, reason: str, *, decided_by: str) -> RequestRow:
        if not reason.strip() or len(reason) > MAX_REASON:
            raise SchemaError(f"a decline needs a reason of 1-{MAX_REASON} characters")
        row, request = await self.incoming_request(request_id)
        async with self._lock(row.request_id):
            row, request = await self.incoming_request(request_id)
            await self._check_pending(row, request)
            return await self._record_decision(row, request, RequestState.DECLINED, decided_by, reason, ())

    async def _check_signer(self, row: RequestRow, request: StudyRequest) -> None:
        """The requester's node certificate, judged again against the current roster (revoked since the
        request arrived: not approved; audited as a Security Alert)."""
        ctx = self.ctx
        try:
            recheck_request(row.raw, row.certificate, ctx.roster(), ctx.clock(), ctx.config.clock_skew)
        except MeshError as exc:
            await ctx.audit(AuditEvent(EventCode.SECURITY_ALERT, "study-request-signer-untrusted",
                                       Outcome.MINOR_FAILURE, actor=request.requester_peer,
                                       actor_org=request.requester_org,
                                       detail=f"{row.request_id}: {exc.name}: {exc}"[:300]))
            raise UnauthorisedError(f"the requesting node is no longer trusted ({exc.name}: {exc}); "
                                    "decline the request") from exc

    async def _check_pending(self, row: RequestRow, request: StudyRequest) -> None:
        if expired(row.state, request, self.ctx.clock()):
            await self._record_decision(row, request, RequestState.EXPIRED, "expiry", EXPIRED_REASON, ())
            raise LocalProtocolError("the request has expired")
        if row.state is not RequestState.PENDING:
            raise LocalProtocolError(f"the request is {row.state.value} already")

    async def _record_decision(self, row: RequestRow, request: StudyRequest, state: RequestState, decided_by: str,
                      reason: str, manifests: tuple[object, ...]) -> RequestRow:
        """Sign the response, record it with the new state (compare-and-set), audit, and deliver it."""
        ctx = self.ctx
        now = int(ctx.clock())
        response = RequestResponse(request.request_id, request.requester_org, ctx.org, ctx.peer_id, state,
                                   tuple(manifests),  # type: ignore[arg-type]  # CIDs from Sender.share
                                   reason, decided_by[:128], now).sign(ctx.key)
        new = RequestRow(row.request_id, INCOMING, row.requester_org, row.holder_org, state, row.raw,
                         row.certificate, row.created_ms, row.expires_at,
                         json.dumps([str(m) for m in response.document.manifests]), reason, decided_by,
                         now * 1000, response.encode(), False)
        if not await ctx.db.run(lambda s: s.update_request(new, row.state)):
            raise LocalProtocolError("the request was decided meanwhile")
        await ctx.audit(AuditEvent(
            EventCode.INSTANCES_TRANSFERRED if state is RequestState.APPROVED else EventCode.QUERY,
            f"study-request-{state.value}", actor=decided_by, actor_org=ctx.org,
            detail=(f"{row.request_id} from {row.requester_org}: {len(manifests)} share(s)"
                    + (f"; {reason}" if reason else "")
                    + (f"; requester claims priority {request.priority.value}, purpose {request.purpose.value}"
                       if decided_by.startswith("policy:") else ""))[:300]))
        ctx.wake()
        await self._deliver(new, request)
        return (await ctx.db.run(lambda s: s.request(row.request_id, INCOMING))) or new

    async def _deliver(self, row: RequestRow, request: StudyRequest) -> bool:
        """Send the latest response to the requesting node. False when it could not be reached (the sweep tries
        again); a refusal from the requester itself is final (retrying cannot change it): recorded, audited,
        and not sent again."""
        payload = encode_delivery(ResponseDelivery(row.response, self.ctx.certificate.encode()))
        try:
            reply = decode_ack_reply(await self.link.call_peer(request.requester_peer, REQUEST_RESPONSE_PROTOCOL,
                                                               payload))
        except MeshError as exc:
            log.info("response to request %s not delivered yet: %s", row.request_id, exc)
            return False
        if isinstance(reply, Refused):
            log.warning("the requester refused the response to request %s: %s", row.request_id, reply.message)
            await self.ctx.audit(AuditEvent(EventCode.QUERY, "request-response-not-taken", Outcome.MINOR_FAILURE,
                                            actor=request.requester_peer, actor_org=request.requester_org,
                                            detail=f"{row.request_id}: {reply.message}"[:300]))
        await self.ctx.db.run(lambda s: s.set_response_delivered(row.request_id, True))
        return not isinstance(reply, Refused)

    async def sweep(self) -> None:
        """Expire incoming requests nobody decided in time (and tell their requesters), mark outgoing ones
        expired once well past their expiry (found by expiry time: however many requests are pending), purge
        final requests older than the retention period (the audit keeps their history), and deliver responses
        that have not reached their requester (a bounded batch per sweep, backing off per unreachable peer)."""
        ctx = self.ctx
        now = ctx.clock()
        for _ in range(SWEEP_BATCHES):
            batch = await ctx.db.run(lambda s: s.expired_requests(INCOMING, int(now), SWEEP_BATCH))
            for row in batch:
                request = open_document(row.raw, StudyRequest).document
                async with self._lock(row.request_id):
                    try:
                        await self._record_decision(row, request, RequestState.EXPIRED, "expiry", EXPIRED_REASON, ())
                    except LocalProtocolError:
                        pass  # decided meanwhile
            if len(batch) < SWEEP_BATCH:
                break
        for _ in range(SWEEP_BATCHES):
            batch = await ctx.db.run(lambda s: s.expired_requests(OUTGOING, int(now - RESPONSE_GRACE_S), SWEEP_BATCH))
            for row in batch:
                new = RequestRow(row.request_id, OUTGOING, row.requester_org, row.holder_org, RequestState.EXPIRED,
                                 row.raw, b"", row.created_ms, row.expires_at, reason="expired unanswered",
                                 decided_by="expiry", updated_ms=int(now * 1000))
                await ctx.db.run(lambda s: s.update_request(new, RequestState.PENDING))
            if len(batch) < SWEEP_BATCH:
                break
        await self._decline_untrusted()
        cutoff_ms = int((now - ctx.config.requests.retention_days * 86400) * 1000)
        purged = await ctx.db.run(lambda s: s.purge_requests(cutoff_ms))
        if purged:
            log.info("purged %d final request(s) older than %d days", purged, ctx.config.requests.retention_days)
        failed: set[str] = set()
        for row in await ctx.db.run(lambda s: s.undelivered_responses(SWEEP_BATCH)):
            request = open_document(row.raw, StudyRequest).document
            peer = request.requester_peer
            tries, after = self._backoff.get(peer, (0, 0.0))
            if peer in failed or after > now:
                continue  # this peer was unreachable just now: its other responses wait for its next try
            if await self._deliver(row, request):
                self._backoff.pop(peer, None)
            else:
                failed.add(peer)
                if len(self._backoff) >= MAX_BACKOFF_PEERS:
                    self._backoff.clear()
                self._backoff[peer] = (tries + 1, now + RESPONSE_BACKOFF.delay(tries + 1))


    async def _decline_untrusted(self) -> None:
        """Decline pending incoming requests whose signing node the current roster no longer trusts."""
        ctx = self.ctx
        before: tuple[int, str] | None = None
        for _ in range(SWEEP_BATCHES):
            cursor = before
            rows = await ctx.db.run(lambda s: s.requests(INCOMING, RequestState.PENDING, SWEEP_BATCH, cursor))
            for row in rows:
                try:
                    recheck_request(row.raw, row.certificate, ctx.roster(), ctx.clock(), ctx.config.clock_skew)
                except MeshError as exc:
                    request = open_document(row.raw, StudyRequest).document
                    async with self._lock(row.request_id):
                        try:
                            await self._record_decision(row, request, RequestState.DECLINED, "roster",
                                                        f"the requesting node is no longer trusted ({exc.name})", ())
                        except LocalProtocolError:
                            pass  # decided meanwhile
            if len(rows) < SWEEP_BATCH:
                break
            before = (rows[-1].created_ms, rows[-1].request_id)


def answer_bytes(response: Ack | Refused) -> bytes:
    return encode_response(response)
