"""What `meshnode deid ...` and a research `meshnode share` ask the running node (its control API).

    POST /share (purpose research, or a "deid" object)  a de-identified copy is shared (or held)
    GET  /deid/held                                     research shares waiting for a human decision
    POST /deid/release {share, include_risky, reason, user}  send a held share (reason needed with the risky ones)
    POST /deid/refuse  {share, reason, user}            refuse a held share
    POST /deid/export-relink {project, user}            the project's pseudonym -> original table (audited)

The control API is the node operator's (its token file is readable by the node's account only); the
deciding person is named by `user` (default: the local account) and recorded in the audit.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from common.describe import iso
from meshnode.control.app import Handler
from meshnode.node.research_share import ResearchShares, frozen_instances
from meshnode.storage.node_storage import local_actor
from meshnode.storage.research_store import ResearchShareRow, ResearchState
from protocol.deid import DeidProfile, parse_profile
from protocol.errors import LocalProtocolError, SchemaError
from protocol.manifest import Priority, Purpose

if TYPE_CHECKING:
    from meshnode.node.runtime import Node


def held_json(row: ResearchShareRow) -> dict[str, object]:
    request = json.loads(row.request)
    return {"research_share": row.share_id, "study_uid": row.original_study_uid, "project": row.project,
            "state": row.state.value, "to": request.get("to", []), "priority": request.get("priority"),
            "held": json.loads(row.reasons), "created_at": iso(row.created_ms // 1000),
            # what a reviewer needs to find each instance at pixel risk, and its preview (HTTP, role deid-release)
            "review": [{"n": n, "reason": f["risk"], "modality": f.get("modality", ""),
                        "sop_class": f.get("sop_class", ""), "series_description": f.get("series_description", ""),
                        "series_number": f.get("series_number", ""), "instance_number": f.get("instance_number", ""),
                        "preview": f"/deid/held/{row.share_id}/instances/{n}.png"}
                       for n, f in enumerate(frozen_instances(row)) if f.get("risk") is not None],
            "decided_by": row.decided_by, "decision": row.decision,
            "manifest_id": str(row.manifest_id) if row.manifest_id else None}


def share_profile(body: dict[str, Any], research: bool) -> DeidProfile | None:
    """The share's de-identification: its "deid" object (every key checked), required for research."""
    value = body.get("deid")
    if value is None:
        if research:
            raise SchemaError("a research share needs 'deid' with its 'project' (meshnode share --deid-project P)")
        return None
    return parse_profile(value, "deid")


def _actor(body: dict[str, Any]) -> str:
    """Who decided: the portal's signed-in user (`portal_user`, set by meshnode.web.send_web from the session,
    audited as user:NAME), the CLI's `user`, or the OS account running the call."""
    portal = body.get("portal_user")
    if portal is not None:
        if not isinstance(portal, str) or not 0 < len(portal) <= 64 or not portal.isprintable():
            raise SchemaError("'portal_user' must be a name of 1-64 printable characters")
        return f"user:{portal}"
    user = body.get("user")
    if user is None:
        return local_actor()
    if not isinstance(user, str) or not 0 < len(user) <= 64 or not user.isprintable():
        raise SchemaError("'user' must be a name of 1-64 printable characters")
    return f"local:{user}"


def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise SchemaError(f"'{key}' is required")
    return value


def deid_routes(node: Node) -> dict[tuple[str, str], Handler]:
    def research() -> ResearchShares:
        if node.sender.research is None:
            raise LocalProtocolError("research shares are not available on this node")
        return node.sender.research

    async def held(body: dict[str, Any]) -> object:
        rows = await node.ctx.db.run(lambda s: s.research_shares(ResearchState.HELD))
        return [held_json(r) for r in rows]

    async def release(body: dict[str, Any]) -> object:
        include = body.get("include_risky", False)
        if not isinstance(include, bool):
            raise SchemaError("'include_risky' must be true or false")
        reason = body.get("reason", "")
        if not isinstance(reason, str):
            raise SchemaError("'reason' must be a string")
        return (await research().release(_text(body, "share"), include, actor=_actor(body), reason=reason)).to_json()

    async def refuse(body: dict[str, Any]) -> object:
        row = await research().refuse(_text(body, "share"), str(body.get("reason", "refused")), actor=_actor(body))
        return held_json(row)

    async def export_relink(body: dict[str, Any]) -> object:
        entries = await research().export_relink(_text(body, "project"), actor=_actor(body))
        return [{"kind": k, "pseudonym": p, "original": o} for k, p, o in entries]

    return {("GET", "/deid/held"): held, ("POST", "/deid/release"): release, ("POST", "/deid/refuse"): refuse,
            ("POST", "/deid/export-relink"): export_relink}


async def share_research(node: Node, body: dict[str, Any], study: str, to: Sequence[str], priority: Priority,
                         purpose: Purpose, profile: DeidProfile, *, origin: str | None = None) -> object:
    outcome = await node.sender.share_research(study, to, priority, profile, actor=_actor(body), purpose=purpose,
                                               origin=origin)
    return outcome.to_json()
