"""May this peer have these blocks? The node's side of protocol.access: facts from storage, one uniform answer.

The decision itself (authorisation by provenance) is protocol.access's, shared with the simulator;
this module gathers the facts it needs in one database round trip, audits what is hostile, and
answers every refusal the same way, so a refusal never says whether a manifest or block exists.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from meshnode.node.context import NodeContext
from meshnode.storage.audit import AuditEvent, EventCode, Outcome
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.records import ManifestRow
from protocol.access import Share, Verdict, decide, servable, superseded
from protocol.certificate import Certificate
from protocol.cid import CID
from protocol.errors import UnauthorisedError

log = logging.getLogger(__name__)

REFUSAL = "request refused"


def share_of(row: ManifestRow, revisions: Sequence[tuple[int, Sequence[str]]]) -> Share:
    """protocol.access's view of a stored manifest; `revisions`: (revision, recipients) of every manifest of
    the same study from the same sender held here in the same direction."""
    return Share(row.sender_org, frozenset(row.recipients), row.state, row.expires_at,
                 superseded=superseded(row.revision, row.recipients, revisions))


@dataclass(frozen=True)
class Access:
    """An allowed request: who asks, about which manifest, and which of the asked blocks may be served."""

    certificate: Certificate
    row: ManifestRow
    share: Share
    #: of the blocks asked for: those this node may serve under the manifest and holds
    servable: frozenset[CID]


async def authorise_manifest_access(
    ctx: NodeContext, peer_id: str, manifest_id: CID, cids: Sequence[CID] = ()
) -> Access:
    """Decide a request about a manifest (and, for a block request, the blocks it names).

    Refused: UnauthorisedError with one uniform message. A refusal that is hostile (the requester's org
    is not a recipient of the manifest, or is its sender, or names blocks the manifest does not list,
    or the peer has no valid certificate) is audited as a Security Alert (110113); one that is merely
    early (manifest not received yet) or a race (failed, recalled, superseded, expired) is not.
    """
    now = ctx.clock()
    cert: Certificate | None = None
    verdict = Verdict.NOT_ENTITLED
    row: ManifestRow | None = None
    try:
        cert = ctx.peers.authorise(peer_id, now)
        own_org = ctx.org

        def lookup(store: MetadataStore) -> tuple[ManifestRow | None, list[tuple[int, tuple[str, ...]]], set[CID],
                                                  set[CID], set[CID]]:
            found = store.manifest(manifest_id)
            if found is None:
                return None, [], set(), set(), set()
            revisions = store.share_revisions(found.study_uid, found.sender_org, found.direction)
            unlisted = store.not_in_manifest(manifest_id, cids) if cids else set()
            present, obtained = _holdings(store, found, own_org, [c for c in cids if c not in unlisted])
            return found, revisions, unlisted, present, obtained

        row, revisions, unlisted, present, obtained = await ctx.db.run(lookup)
        share = share_of(row, revisions) if row is not None else None
        verdict = decide(share, cert.org_code, now, unlisted=len(unlisted), own_org=own_org)
        if row is None or share is None or not verdict.allowed:
            raise UnauthorisedError(REFUSAL)
        signed = signed_here(ctx, row)
        return Access(cert, row, share, frozenset(c for c in present
                                                  if servable(share, own_org, c in obtained, signed=signed)))
    except UnauthorisedError:
        org = cert.org_code if cert else ""
        if cert is None or verdict.hostile:
            await ctx.audit(AuditEvent(
                EventCode.SECURITY_ALERT, "unauthorised-request", Outcome.SERIOUS_FAILURE, actor=peer_id,
                actor_org=org, manifest_id=str(manifest_id),
                detail=f"{verdict.value if cert else 'no valid certificate'}; {len(cids)} block(s) asked for"))
            log.warning("refused request from %s (%s): %s", peer_id, org or "unknown peer",
                        verdict.value if cert else "no valid certificate")
        else:
            log.info("refused request from %s (%s) about manifest %s: %s", peer_id, org, manifest_id, verdict.value)
        raise UnauthorisedError(REFUSAL) from None


def _holdings(store: MetadataStore, row: ManifestRow, own_org: str, cids: Sequence[CID]) -> tuple[set[CID], set[CID]]:
    """Of `cids`: those present, and those this node obtained under the manifest (its provenance)."""
    present = store.present_blocks(cids)
    return present, store.obtained_blocks(row.manifest_id, present)


def signed_here(ctx: NodeContext, row: ManifestRow) -> bool:
    """Whether this node signed the manifest itself (protocol.access rule 4); a sibling's manifest, signed by
    another node of this org, serves only what this node copied under it."""
    return (row.direction == "sent" and row.sender_org == ctx.org
            and ctx.manifests.open(row.manifest_id, row.raw).document.sender_peer == ctx.peer_id)


async def servable_in_order(ctx: NodeContext, access: Access, order: Sequence[CID]) -> list[bool]:
    """For availability (`have`), after the request was allowed: which of the manifest's blocks, in
    order, this node may serve the requester and holds."""
    present, obtained = await ctx.db.run(lambda s: _holdings(s, access.row, ctx.org, order))
    signed = signed_here(ctx, access.row)
    return [c in present and servable(access.share, ctx.org, c in obtained, signed=signed) for c in order]
