"""Forward reports (protocol.forward_report): the recipient tells a study's sender how its PACS forward ended;
the sender verifies, keeps the latest per recipient org, and shows it in the outbox.

Recipient side (`ForwardReporter`): when no [[pacs]] destination with `report_forward` (default on) still has
items of a received manifest pending, a report of every such destination is signed and queued in the node's
delivery outbox (protocol.outbox, DeliveryKind.FORWARD_REPORT), keyed by the report's own CID: each report is
its own delivery, retried like a receipt, to the manifest's sender only. Its `seq` is the time in ms, made to go
up past the last one this process signed.

Sender side (`accept_forward_report`): refused, audited (110113 Security Alert) and nothing stored unless the
report verifies under the same trust rule as a receipt (protocol.trust.check_node_signature: a node certified
for the org it names), is for a manifest this node sent, and that org is one of its recipients. A replayed or
older report is accepted and changes nothing (protocol.forward_report.supersedes, enforced in the store).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from meshnode.gateway.config import PacsDestination
from meshnode.gateway.pacs_queue import ForwardProgress, progress
from meshnode.node.context import NodeContext
from meshnode.node.delivery import Deliveries
from meshnode.node.events import StudyEvent, StudyEventKind
from meshnode.storage.audit import AuditEvent, EventCode, Outcome
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.records import hash_uid
from protocol.certificate import Certificate
from protocol.cid import CID
from protocol.document import open_document
from protocol.errors import MeshError, NotFoundError, WrongOrganisationError
from protocol.forward_report import (
    MAX_DESTINATIONS,
    DestinationReport,
    ForwardReport,
    ForwardState,
    verify_forward_report,
)

log = logging.getLogger(__name__)

#: a destination's progress state -> what the report says; others (waiting, forwarding, cancelled) are not final
FINAL = {"forwarded": ForwardState.FORWARDED, "failed": ForwardState.FAILED, "held": ForwardState.HELD}


def destination_reports(found: dict[str, ForwardProgress],
                        destinations: Sequence[PacsDestination]) -> tuple[DestinationReport, ...] | None:
    """The report's destinations once every reporting destination that takes the study has ended, else None
    (nothing to report yet, or nothing reportable)."""
    reporting = {d.name for d in destinations if d.report_forward}
    mine = {name: p for name, p in found.items() if name in reporting}
    if not mine or any(p.state not in FINAL for p in mine.values()):
        return None
    return tuple(DestinationReport(name, FINAL[p.state], p.sent, p.total)
                 for name, p in sorted(mine.items())[:MAX_DESTINATIONS])


class ForwardReporter:
    """Recipient side: sign and queue a report when a received study's forward ends."""

    def __init__(self, ctx: NodeContext, deliveries: Deliveries, destinations: Sequence[PacsDestination]) -> None:
        self.ctx = ctx
        self.deliveries = deliveries
        self.destinations = tuple(destinations)
        self._last_seq = 0

    async def forward_ended(self, manifest_id: CID) -> None:
        """After a batch of the manifest went to a PACS: report if every reporting destination has ended."""
        if not any(d.report_forward for d in self.destinations):
            return
        ctx = self.ctx

        def load(store: MetadataStore) -> tuple[str, dict[str, ForwardProgress]] | None:
            row = store.manifest(manifest_id)
            if row is None or row.direction != "received":
                return None
            return row.sender_org, progress(store, manifest_id, self.destinations)

        found = await ctx.db.run(load)
        if found is None:
            return
        sender_org, per_destination = found
        reports = destination_reports(per_destination, self.destinations)
        if reports is None:
            return
        now = ctx.clock()
        self._last_seq = max(int(now * 1000), self._last_seq + 1)
        signed = ForwardReport(manifest_id, ctx.org, ctx.peer_id, self._last_seq, reports, int(now)).sign(ctx.key)
        await self.deliveries.forward_report(signed.cid, sender_org, signed.encode())
        log.info("forward report for %s queued to %s: %s", manifest_id, sender_org,
                 ", ".join(f"{d.label} {d.state.value} {d.sent}/{d.total}" for d in reports))


async def accept_forward_report(ctx: NodeContext, peer_id: str, report_raw: bytes, cert_raw: bytes) -> None:
    """Sender side: verify a recipient's forward report and keep it if it is newer than the one stored."""
    now = ctx.clock()
    ctx.peers.authorise(peer_id, now)
    try:
        signed = open_document(report_raw, ForwardReport)
        verify_forward_report(signed, open_document(cert_raw, Certificate), ctx.roster(), now,
                              skew=ctx.config.clock_skew)
        report = signed.document
        row = await ctx.db.run(lambda s: s.manifest(report.manifest_id))
        if row is None or row.direction != "sent" or row.sender_org != ctx.org:
            raise NotFoundError("no such sent manifest")
        if report.recipient_org not in row.recipients:
            raise WrongOrganisationError(f"{report.recipient_org} is not a recipient of this manifest")
    except MeshError as exc:
        await ctx.audit(AuditEvent(EventCode.SECURITY_ALERT, "forward-report-refused", Outcome.SERIOUS_FAILURE,
                                   actor=peer_id, detail=f"{type(exc).__name__}: {exc}"[:300]))
        log.warning("forward report from %s refused: %s", peer_id, exc)
        raise
    kept = await ctx.db.run(lambda s: s.save_forward_report(report.manifest_id, report.recipient_org, report.seq,
                                                            report_raw, int(now * 1000)))
    if not kept:
        log.info("forward report %d for %s from %s: not newer than the one kept", report.seq, report.manifest_id,
                 report.recipient_org)
        return
    ctx.wake()  # the pages pushing the outbox look again
    summary = report.summary
    await ctx.audit(AuditEvent(EventCode.INSTANCES_TRANSFERRED, "forward-reported",
                               Outcome.SUCCESS if summary is ForwardState.FORWARDED else Outcome.MINOR_FAILURE,
                               actor=peer_id, actor_org=report.recipient_org, study=hash_uid(row.study_uid),
                               manifest_id=str(report.manifest_id),
                               detail=f"PACS forward {summary.value}: {report.sent} of {report.total} instance(s)"))
    priority = ctx.manifests.open(row.manifest_id, row.raw).document.priority.value
    await ctx.events.publish(StudyEvent(StudyEventKind.FORWARDED, str(report.manifest_id), row.study_uid,
                                        report.recipient_org, priority, "sent", detail=summary.value,
                                        instances=report.sent))


def forward_json(raw: bytes) -> dict[str, object]:
    """A stored (verified) report as the outbox shows it per recipient."""
    report = open_document(raw, ForwardReport).document
    return {"state": report.summary.value, "sent": report.sent, "total": report.total, "at": report.at,
            "seq": report.seq,
            "destinations": [{"label": d.label, "state": d.state.value, "sent": d.sent, "total": d.total}
                             for d in report.destinations]}



def forward_text(pacs_forward: dict[str, object] | None) -> str:
    """What staff read of a recipient's reported PACS forward: "forwarded to PACS (N/M)", "PACS forward failed
    (N/M)", "PACS forward held (N/M)" (waiting for a person there); "" before any report."""
    if pacs_forward is None:
        return ""
    counts = f"({pacs_forward['sent']}/{pacs_forward['total']})"
    state = pacs_forward["state"]
    if state == ForwardState.FORWARDED.value:
        return f"forwarded to PACS {counts}"
    return f"PACS forward {state} {counts}"
