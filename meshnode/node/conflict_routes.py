"""What `meshnode conflicts list|decide` ask the running node (control API; meshnode.gateway.conflict_desk)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meshnode.control.actor import control_actor
from meshnode.control.app import Handler
from protocol.conflict import ConflictState, Decision
from protocol.errors import SchemaError

if TYPE_CHECKING:
    from meshnode.node.runtime import Node

def parse_decision(body: dict[str, Any]) -> tuple[int, Decision]:
    """A decision request's conflict id and decision; SchemaError for anything else."""
    conflict_id, decision = body.get("id"), body.get("decision")
    if not isinstance(conflict_id, int) or isinstance(conflict_id, bool) or not 0 < conflict_id < 1 << 62:
        raise SchemaError("'id' must be a conflict number")
    if not isinstance(decision, str) or decision not in {d.value for d in Decision}:
        raise SchemaError(f"'decision' must be one of {', '.join(d.value for d in Decision)}")
    return conflict_id, Decision(decision)


def parse_expected(value: object) -> bytes | None:
    """The stored version's sha256 the deciding user saw (hex; compare-and-set), or None."""
    if value in (None, ""):
        return None
    if not isinstance(value, str) or len(value) != 64 or not all(c in "0123456789abcdef" for c in value):
        raise SchemaError("'existing_sha256' must be the stored version's sha256 as 64 lowercase hex digits")
    return bytes.fromhex(value)


def parse_state(value: object) -> ConflictState | None:
    if value in (None, "", "all"):
        return None
    if not isinstance(value, str) or value not in {s.value for s in ConflictState}:
        raise SchemaError(f"'state' must be all or one of {', '.join(s.value for s in ConflictState)}")
    return ConflictState(value)


def routes(node: Node) -> dict[tuple[str, str], Handler]:
    async def listing(body: dict[str, Any]) -> object:
        rows = await node.gateway.conflicts.list(parse_state(body.get("state", "pending")))
        return [r.json() for r in rows]

    async def decision(body: dict[str, Any]) -> object:
        conflict_id, chosen = parse_decision(body)
        expected = parse_expected(body.get("existing_sha256"))
        # who decides, for the audit: "control:<account>" (meshnode.control.actor: one rule for every route)
        row = await node.gateway.conflicts.decide(conflict_id, chosen, control_actor(body), expected)
        return row.json()

    return {("POST", "/conflicts"): listing, ("POST", "/conflicts/decide"): decision}
