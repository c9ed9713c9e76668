"""What `meshnode share|inbox|outbox|fetch|recall|peers|status` ask the running node."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meshnode.control.app import Handler
from common.describe import iso
from meshnode.gateway.reconcile_holds import check_not_held
from meshnode.node import patient_routes, reconcile_routes, request_routes
from meshnode.node.requests import request_of_manifest
from meshnode.storage.request_store import INCOMING, OUTGOING
from meshnode.node.deid_routes import deid_routes, share_profile, share_research
from meshnode.node import conflict_routes
from meshnode.node.delivery import stored_deliveries
from meshnode.node.forward_reports import forward_json
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.conflicts import held_by_manifest, held_detail
from protocol.cid import CID
from protocol.errors import NotFoundError, SchemaError
from protocol.lifecycle import ManifestState
from protocol.manifest import Priority, Purpose, check_attention, check_note
from protocol.schema import check_org_code
from protocol.outbox import DeliveryKey, DeliveryKind, DeliveryRecord, DeliveryState

if TYPE_CHECKING:
    from meshnode.node.runtime import Node

#: the longest a share may stay fetchable (`meshnode share --lifetime-days`)
MAX_LIFETIME_DAYS = 365


def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise SchemaError(f"'{key}' is required")
    return value


def share_addressing(body: dict[str, Any]) -> tuple[str, str]:
    """A share's optional `attention` (named recipient person) and `note`: text, trimmed, checked as the
    manifest will be (protocol.manifest.check_attention / check_note)."""
    out: list[str] = []
    for key, check in (("attention", check_attention), ("note", check_note)):
        value = body.get(key, "")
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise SchemaError(f"'{key}' must be text")
        value = value.replace("\r\n", "\n").strip() if key == "note" else value.strip()
        out.append(check(value, key) if value else "")
    return out[0], out[1]


def _cid(body: dict[str, Any], key: str = "manifest") -> CID:
    return CID.parse(_text(body, key))


def served_by_org(store: MetadataStore) -> dict[str, list[int]]:
    """Blocks and bytes this node has sent to each org, all time."""
    totals: dict[str, list[int]] = {}
    for row in store.served():
        t = totals.setdefault(row.org, [0, 0])
        t[0] += row.blocks
        t[1] += row.bytes
    return totals


def _served_to(store: MetadataStore, manifest_id: CID) -> dict[str, dict[str, int]]:
    return {r.org: {"blocks": r.blocks, "bytes": r.bytes} for r in store.served(manifest_id)}


def listening(node: Node) -> dict[str, object]:
    """The node's own listen addresses: libp2p multiaddrs, the control API, the HTTP listener ([http] listen;
    None when off) and the DIMSE gateway (None when off)."""
    gateway = getattr(node, "gateway", None)
    dimse = gateway.dimse if gateway is not None else None
    address = dimse.address if dimse is not None else None
    return {"libp2p": list(node.listen_addrs), "control": node.control_url or None, "http": node.http_url or None,
            "dimse": ({"ae_title": dimse.settings.ae_title, "host": address[0], "port": address[1]}
                      if dimse is not None and address is not None else None)}


def routes(node: Node) -> dict[tuple[str, str], Handler]:
    ctx = node.ctx

    async def status(body: dict[str, Any]) -> object:
        roster = ctx.peers.guard.current
        await node.wire.served.flush()  # the served figures include the batch not yet written
        studies, manifests, served = await ctx.db.run(lambda s: (len(s.studies()), s.manifests(), served_by_org(s)))
        return {
            "peer_id": ctx.peer_id, "org": ctx.org, "roster_version": roster.document.version if roster else None,
            "roster_expires": iso(roster.document.expires_at) if roster else None,
            "certificate_expires": iso(ctx.certificate.document.not_after), "studies": studies,
            "manifests_sent": sum(1 for m in manifests if m.direction == "sent"),
            "manifests_received": sum(1 for m in manifests if m.direction == "received"),
            "fetching": [str(m) for m in node.fetcher.active], "peers_known": len(ctx.peers.peers()),
            # blocks sent to each org, all time (they add up across restarts); and since this start
            "served": {org: {"blocks": v[0], "bytes": v[1]} for org, v in served.items()},
            "served_since_start": {org: {"blocks": v[0], "bytes": v[1]} for org, v in ctx.served.items()},
            # inbound requests admitted, queued for a slot, refused; peers cut off (since this start)
            "admission": node.wire.limits.counters(),
            "listening": listening(node),
        }

    async def share(body: dict[str, Any]) -> object:
        to = body.get("to")
        if not isinstance(to, list) or not all(isinstance(o, str) for o in to):
            raise SchemaError("'to' must be a list of organisation codes")
        try:
            priority = Priority(body.get("priority", "routine"))
            purpose = Purpose(body.get("purpose", "care"))
        except ValueError as exc:
            raise SchemaError(str(exc)) from None
        include = body.get("include_unreconciled", False)
        if not isinstance(include, bool):
            raise SchemaError("'include_unreconciled' must be true or false")
        origin = body.get("origin")  # a received study holding several orgs' instances: which to share onward
        if origin is not None:
            if not isinstance(origin, str):
                raise SchemaError("'origin' must be an organisation code")
            origin = check_org_code(origin, "origin")
        study = _text(body, "study")  # patient reconciliation's held instances (meshnode.gateway.reconcile_holds)
        await node.ctx.db.run(lambda s: check_not_held(s, study, include_unreconciled=include, what="share"))
        lifetime = body.get("lifetime_days")  # how long recipients may fetch it (default 30 days)
        if lifetime is not None and (not isinstance(lifetime, int) or isinstance(lifetime, bool)
                                     or not 1 <= lifetime <= MAX_LIFETIME_DAYS):
            raise SchemaError(f"'lifetime_days' must be a whole number of days from 1 to {MAX_LIFETIME_DAYS}")
        attention, note = share_addressing(body)
        profile = share_profile(body, purpose is Purpose.RESEARCH)
        if profile is not None and (attention or note):
            # a de-identified copy carries no free text of the sender's: it could carry identifiers back
            raise SchemaError("a research (de-identified) share carries no 'attention' or 'note'")
        if profile is not None:  # a de-identified copy (meshnode.node.research_share), never the original
            if lifetime is not None:
                raise SchemaError("'lifetime_days' is not available for a de-identified share (it keeps the default)")
            return await share_research(node, body, _text(body, "study"), to, priority, purpose, profile,
                                        origin=origin)
        signed = await node.sender.share(_text(body, "study"), to, priority, purpose, origin=origin,
                                         attention=attention, note=note,
                                         **({"lifetime_s": lifetime * 86400} if lifetime is not None else {}))
        return {"manifest_id": str(signed.cid), "revision": signed.document.revision,
                "instances": len(signed.document.instances), "bytes": signed.document.total_bytes}

    async def inbox(body: dict[str, Any]) -> object:
        await node.wire.served.flush()
        def load(store: MetadataStore) -> list[dict[str, object]]:
            out: list[dict[str, object]] = []
            held = held_by_manifest(store)  # instances held in the conflict queue (meshnode.storage.conflicts)
            asked = request_of_manifest(store, OUTGOING)  # studies that answer our study requests
            for row in store.manifests("received"):
                manifest = ctx.manifests.open(row.manifest_id, row.raw).document
                transfer = store.transfer(row.manifest_id)
                out.append({
                    "manifest_id": str(row.manifest_id), "study_uid": row.study_uid, "sender_org": row.sender_org,
                    "priority": manifest.priority.value, "purpose": manifest.purpose.value, "state": row.state.value,
                    "revision": row.revision, "instances": len(manifest.instances),
                    "blocks_total": len({c for i in manifest.instances for c in i.blocks}),
                    "blocks_done": transfer[1] if transfer else 0, "bytes_total": manifest.total_bytes,
                    "bytes_done": transfer[2] if transfer else 0, "served_by": store.served_by(row.manifest_id),
                    "served_to": _served_to(store, row.manifest_id),  # fellow recipients this node served
                    "created_at": iso(row.created_at),
                    "first_instance_ms": (round(1000 * node.fetcher.first_usable[row.manifest_id])
                                          if row.manifest_id in node.fetcher.first_usable else None),
                    "forward": node.gateway.forward_progress(store, row.manifest_id),  # to the local PACS
                    "failure": store.manifest_failure(row.manifest_id) if row.state is ManifestState.FAILED else None,
                    "held": held.get(str(row.manifest_id), 0), "held_detail": held_detail(held.get(str(row.manifest_id), 0)),
                    "request": asked.get(str(row.manifest_id)),
                    "attention": manifest.attention, "note": manifest.note,  # signed by the sender, shown as text
                })
            return out

        return await ctx.db.run(load)

    async def outbox(body: dict[str, Any]) -> object:
        await node.wire.served.flush()
        def load(store: MetadataStore) -> list[dict[str, object]]:
            out: list[dict[str, object]] = []
            answered = request_of_manifest(store, INCOMING)  # shares that answer other orgs' study requests
            for row in store.manifests("sent"):
                served = _served_to(store, row.manifest_id)
                receipts = store.receipts(row.manifest_id)
                reports = store.forward_reports(row.manifest_id)
                per_org = _current_delivery(stored_deliveries(store, row.manifest_id))
                # the offer to this org's other nodes (meshnode.node.replication) is no recipient: shown apart
                siblings = per_org.pop(ctx.org, None)
                out.append({
                    "manifest_id": str(row.manifest_id), "study_uid": row.study_uid, "state": row.state.value,
                    "revision": row.revision, "created_at": iso(row.created_at),
                    "recipients": {org: {"delivery": r.key.kind.value, "state": r.state.value,
                                         "status": recipient_status(r, org in receipts),
                                         "attempts": r.attempts, "last_error": r.last_error,
                                         "receipt_verified": org in receipts,
                                         "served": served.get(org, {"blocks": 0, "bytes": 0}),
                                         # the org's verified report of its PACS forward (None until one came)
                                         "pacs_forward": forward_json(reports[org]) if org in reports else None}
                                   for org, r in per_org.items()}
                    # a sibling's manifest (meshnode.node.replication): no deliveries here, its receipts are
                    | {org: {"delivery": None, "state": None, "status": "delivered", "attempts": 0, "last_error": "",
                             "receipt_verified": True, "served": served.get(org, {"blocks": 0, "bytes": 0}),
                             "pacs_forward": forward_json(reports[org]) if org in reports else None}
                       for org in receipts if org not in per_org},
                    "request": answered.get(str(row.manifest_id)),
                    "siblings": None if siblings is None else {"state": siblings.state.value,
                                                               "attempts": siblings.attempts,
                                                               "last_error": siblings.last_error},
                })
            return out

        return await ctx.db.run(load)

    async def outbox_retry(body: dict[str, Any]) -> object:
        manifest = _cid(body) if body.get("manifest") else None
        return {"retried": await node.deliveries.retry(manifest)}

    async def fetch(body: dict[str, Any]) -> object:
        await node.fetch(_cid(body))
        return {"fetching": str(_cid(body))}

    async def recall(body: dict[str, Any]) -> object:
        research = body.get("research_copies", False)
        if not isinstance(research, bool):
            raise SchemaError("'research_copies' must be true or false")
        signed = await node.sender.recall(_cid(body), str(body.get("reason", "withdrawn by sender")),
                                          research_copies=research)
        row = await ctx.db.run(lambda s: s.manifest(signed.document.manifest_id))
        copies = await node.sender.research_copies_of(row.study_uid) if row is not None else []
        return {"recalled": str(signed.document.manifest_id), "research_copies": [str(c) for c in copies],
                "research_copies_recalled": research}

    async def peers(body: dict[str, Any]) -> object:
        return [{"peer_id": pid, "org": p.org, "serial": p.certificate.document.serial,
                 "certificate_expires": iso(p.certificate.document.not_after),
                 "last_seen": iso(int(p.last_seen))} for pid, p in ctx.peers.peers().items()]

    async def gateway(body: dict[str, Any]) -> object:
        return await ctx.db.run(node.gateway.status)

    async def forward_retry(body: dict[str, Any]) -> object:
        if node.gateway.forwarder is None:
            raise NotFoundError("no [[pacs]] destination is configured")
        manifest = _cid(body) if body.get("manifest") else None
        destination = body.get("destination")
        if destination is not None and not isinstance(destination, str):
            raise SchemaError("'destination' must be a string")
        return {"requeued": await node.gateway.forwarder.retry(manifest, destination)}

    return {
        ("GET", "/gateway"): gateway, ("POST", "/forward/retry"): forward_retry,
        ("GET", "/status"): status, ("POST", "/share"): share, ("GET", "/inbox"): inbox,
        ("GET", "/outbox"): outbox, ("POST", "/outbox/retry"): outbox_retry, ("POST", "/fetch"): fetch,
        ("POST", "/recall"): recall,
        ("GET", "/peers"): peers,
        **reconcile_routes.routes(node),  # the reconciliation queue and the patient lookup table
        **deid_routes(node),
        **conflict_routes.routes(node),  # meshnode conflicts list|decide
        **request_routes.routes(node),  # meshnode request send|list|show|approve|decline, meshnode priors
        **patient_routes.routes(node),  # meshnode patient-share ..., meshnode upload-link create
    }


def recipient_status(record: DeliveryRecord[DeliveryKey], receipt_verified: bool) -> str:
    """What a sender's staff need to know of one recipient org, in one word: "announcing" until the
    announcement is accepted, "announced" until the org's receipt is verified, "delivered" only then;
    "recalling" and "recalled" once a recall replaced the announcement; "failed" / "recall-failed" when
    the outbox gave up (an operator can retry). The delivery state alone says "delivered" as soon as the
    announcement is accepted, which is not a delivered study."""
    recall = record.key.kind is DeliveryKind.RECALL
    if record.state is DeliveryState.FAILED:
        return "recall-failed" if recall else "failed"
    if record.state is not DeliveryState.DELIVERED:
        return "recalling" if recall else "announcing"
    if recall:
        return "recalled"
    return "delivered" if receipt_verified else "announced"


def _current_delivery(records: list[DeliveryRecord[DeliveryKey]]) -> dict[str, DeliveryRecord[DeliveryKey]]:
    """Per recipient org of a sent manifest, the delivery that counts now: the recall once there is one,
    else the announcement (our receipts for received manifests are not the outbox's)."""
    out: dict[str, DeliveryRecord[DeliveryKey]] = {}
    for r in sorted(records, key=lambda r: r.key.kind is DeliveryKind.RECALL):
        if r.key.kind not in (DeliveryKind.RECEIPT, DeliveryKind.FORWARD_REPORT):
            out[r.key.org] = r
    return out
