"""May this peer have these blocks? One uniform answer that reveals nothing."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from meshnode.node.context import NodeContext
from meshnode.storage.audit import AuditEvent, EventCode, Outcome
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.records import ManifestRow
from protocol.certificate import Certificate
from protocol.cid import CID
from protocol.errors import UnauthorisedError

log = logging.getLogger(__name__)

REFUSAL = "request refused"


def is_live(row: ManifestRow | None, now: float) -> bool:
    return row is not None and row.state != "recalled" and row.expires_at >= now


async def authorise_manifest_access(
    ctx: NodeContext, peer_id: str, manifest_id: CID, cids: Sequence[CID] = ()
) -> tuple[Certificate, ManifestRow]:
    """The requester's certificate and the manifest, when its org is the sender or a recipient of
    that live manifest and every CID asked for is listed in it. Otherwise: a uniform refusal, and an
    audit Security Alert (110113); the refusal never says whether a block or manifest exists."""
    now = ctx.clock()
    cert: Certificate | None = None
    row: ManifestRow | None = None
    try:
        cert = ctx.peers.authorise(peer_id, now)

        def lookup(store: MetadataStore) -> tuple[ManifestRow | None, set[CID]]:
            return store.manifest(manifest_id), store.not_in_manifest(manifest_id, cids)

        row, unlisted = await ctx.db.run(lookup)
        if (not is_live(row, now) or row is None or unlisted
                or cert.org_code not in (*row.recipients, row.sender_org)):
            raise UnauthorisedError(REFUSAL)
        return cert, row
    except UnauthorisedError:
        await ctx.audit(AuditEvent(
            EventCode.SECURITY_ALERT, "unauthorised-request", Outcome.SERIOUS_FAILURE, actor=peer_id,
            actor_org=cert.org_code if cert else "", manifest_id=str(manifest_id),
            detail=f"{len(cids)} block(s) asked for; refused"))
        log.warning("refused block request from %s (%s)", peer_id, cert.org_code if cert else "unknown peer")
        raise UnauthorisedError(REFUSAL) from None
