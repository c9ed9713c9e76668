"""The running node as the web UI, /metrics and /health see it.

Inbox and outbox rows are those of the control API (`meshnode inbox|outbox`),
so the CLI and the UI never disagree; the UI adds what a person needs
(patient identifiers for a logged-in user, connection state of peers).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from libp2p.peer.id import ID

from common.describe import iso
from meshnode.node.forward_reports import forward_text
from meshnode.node.control_routes import routes
from meshnode.node.health import node_health
from common.p2p.dial import is_connected
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.records import hash_uid
from meshnode.web.metrics import MetricsSnapshot
from protocol.cid import CID
from protocol.document import open_document
from protocol.errors import MeshError
from protocol.manifest import Manifest, StudySummary

if TYPE_CHECKING:
    from meshnode.node.runtime import Node

log = logging.getLogger(__name__)

EXPIRING_S = 14 * 86400

Row = dict[str, Any]


def identifiers(summary: StudySummary, study_uid: str, accession: str = "") -> Row:
    return {"patient_name": summary.patient_name, "patient_id": summary.patient_id,
            "birth_date": summary.birth_date, "sex": summary.sex, "description": summary.description,
            "study_date": summary.study_date, "study_uid": study_uid, "accession": accession}


class NodeView:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.ctx = node.ctx
        self._control = routes(node)
        # id -> (priority, summary, instances, blocks)
        self._manifests: dict[str, tuple[str, StudySummary, int, int]] = {}

    async def _manifest_facts(self, ids: list[str]) -> dict[str, tuple[str, StudySummary, int, int]]:
        missing = [i for i in ids if i not in self._manifests]
        if missing:
            def load(store: MetadataStore) -> list[bytes]:
                return [row.raw for i in missing if (row := store.manifest(CID.parse(i))) is not None]

            for raw in await self.ctx.db.run(load):
                signed = open_document(raw, Manifest)
                m = signed.document
                self._manifests[str(signed.cid)] = (m.priority.value, m.summary, len(m.instances),
                                                    len({c for i in m.instances for c in i.blocks}))
        return {i: self._manifests[i] for i in ids if i in self._manifests}

    async def _accessions(self, study_uids: set[str]) -> dict[str, str]:
        def load(store: MetadataStore) -> dict[str, str]:
            out = {}
            for uid in study_uids:
                s = store.study(uid)
                if s is not None:
                    out[uid] = s.attributes.accession
            return out

        return await self.ctx.db.run(load)

    def _peer_org(self, peer_id: str) -> str:
        known = self.ctx.peers.certificate_of(peer_id)
        if known is not None:
            return known.document.org_code
        return self.ctx.org if peer_id == self.ctx.peer_id else "?"

    async def inbox(self, with_identifiers: bool) -> list[Row]:
        rows: list[Row] = await self._control[("GET", "/inbox")]({})  # type: ignore[assignment]
        facts = await self._manifest_facts([r["manifest_id"] for r in rows])
        accessions = await self._accessions({r["study_uid"] for r in rows}) if with_identifiers else {}
        out = []
        for r in rows:
            served: dict[str, int] = {}
            for peer, n in r["served_by"].items():
                org = self._peer_org(peer)
                served[org] = served.get(org, 0) + n
            # the sender's note is free text (it may name the patient) and `attention` names a person: both only
            # with the identifiers (a signed-in user who may read), never on the public status page
            hidden = ("study_uid", "served_by", "forward") + (() if with_identifiers else ("attention", "note"))
            row = {k: v for k, v in r.items() if k not in hidden}
            row["served_by_org"] = served
            row["study"] = hash_uid(r["study_uid"])
            # the auto-forward to the local PACS, per destination (None: no PACS configured)
            forward = r.get("forward") or {}
            row["forwarded"] = [{"destination": dest, **progress} for dest, progress in sorted(forward.items())] or None
            fact = facts.get(r["manifest_id"])
            if fact is not None:
                row["modality"] = fact[1].modality
                if with_identifiers:
                    row.update(identifiers(fact[1], r["study_uid"], accessions.get(r["study_uid"], "")))
            out.append(row)
        return sorted(out, key=lambda x: x["created_at"], reverse=True)

    async def outbox(self, with_identifiers: bool) -> list[Row]:
        rows: list[Row] = await self._control[("GET", "/outbox")]({})  # type: ignore[assignment]
        facts = await self._manifest_facts([r["manifest_id"] for r in rows])
        accessions = await self._accessions({r["study_uid"] for r in rows}) if with_identifiers else {}
        out = []
        for r in rows:
            row = {k: v for k, v in r.items() if k != "study_uid"}
            row["study"] = hash_uid(r["study_uid"])
            for d in row["recipients"].values():  # a recipient's reported PACS forward, as staff read it
                d["pacs_forward_text"] = forward_text(d.get("pacs_forward"))
            fact = facts.get(r["manifest_id"])
            if fact is not None:
                row["priority"], row["modality"], row["instances"] = fact[0], fact[1].modality, fact[2]
                row["blocks_total"] = fact[3]  # with each recipient's `served` blocks: how far it fetched here
                if with_identifiers:
                    row.update(identifiers(fact[1], r["study_uid"], accessions.get(r["study_uid"], "")))
            out.append(row)
        return sorted(out, key=lambda x: x["created_at"], reverse=True)

    def connected(self, peer_id: str) -> bool:
        try:
            return is_connected(self.node.wire.host, ID.from_base58(peer_id))
        except (ValueError, MeshError):
            return False

    async def peers(self) -> Row:
        now = self.ctx.clock()
        peers = []
        for pid, p in sorted(self.ctx.peers.peers().items(), key=lambda kv: (kv[1].org, kv[0])):
            not_after = p.certificate.document.not_after
            peers.append({
                "peer_id": pid, "org": p.org, "org_name": p.certificate.document.org_name,
                "serial": p.certificate.document.serial, "roles": list(p.certificate.document.roles),
                "certificate_expires": iso(not_after), "certificate": _validity(not_after, now),
                "connected": self.connected(pid), "last_seen": iso(int(p.last_seen)),
            })
        own = self.ctx.certificate.document
        roster = self.ctx.peers.guard.current
        return {
            "self": {"org": self.ctx.org, "org_name": own.org_name, "peer_id": self.ctx.peer_id,
                     "serial": own.serial, "certificate_expires": iso(own.not_after),
                     "certificate": _validity(own.not_after, now)},
            "roster": ({"version": roster.document.version, "issued_at": iso(roster.document.issued_at),
                        "expires_at": iso(roster.document.expires_at),
                        "state": _validity(roster.document.expires_at, now)} if roster else None),
            "peers": peers,
        }

    async def metrics_snapshot(self, webhook_counts: dict[tuple[str, str], int]) -> MetricsSnapshot:
        ctx = self.ctx

        pending = self.node.deliveries.pending()

        def load(store: MetadataStore) -> tuple[int, int, dict[tuple[str, str], int], int]:
            head = store.audit_head()
            manifests: dict[tuple[str, str], int] = {}
            for m in store.manifests():
                manifests[(m.direction, m.state.value)] = manifests.get((m.direction, m.state.value), 0) + 1
            return (head[0] if head else 0), len(store.studies()), manifests, pending

        audit_len, studies, manifests, deliveries = await ctx.db.run(load)
        roster = ctx.peers.guard.current
        certs = [("own", ctx.org, ctx.peer_id, ctx.certificate.document.not_after)]
        certs += [("peer", p.org, pid, p.certificate.document.not_after) for pid, p in sorted(ctx.peers.peers().items())]
        gateway = self.node.gateway
        forward = await ctx.db.run(gateway.forward_counts)
        queues = {"fetch": len(self.node.fetcher.active), "deliveries": deliveries,
                  "webhooks": sum(n for (_, state), n in webhook_counts.items()
                                  if state in ("pending", "attempting")),
                  "forward": sum(n for counts in forward.values() for state, n in counts.items()
                                 if state == "pending"),
                  "announcements": len(gateway.announcer.pending())}
        return MetricsSnapshot(
            org=ctx.org, peer_id=ctx.peer_id, now=ctx.clock(), sent=dict(ctx.served), received=dict(ctx.received),
            queues=queues, certificates=certs,
            roster_version=roster.document.version if roster else None,
            roster_issued_at=roster.document.issued_at if roster else None,
            roster_expires_at=roster.document.expires_at if roster else None,
            audit_entries=audit_len, studies=studies, manifests=manifests, webhooks=webhook_counts,
            forward_failures=dict(self.node.gateway.forward_failures),
            reach=self.node.reach.metrics(),
        )

    async def health(self) -> tuple[bool, Row]:
        return await node_health(self.ctx)


def _validity(not_after: int, now: float) -> str:
    if not_after <= now:
        return "expired"
    if not_after - now < EXPIRING_S:
        return "expiring"
    return "valid"
