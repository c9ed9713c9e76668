"""What `meshnode conflicts list|decide` ask the running node (control API; meshnode.gateway.conflict_desk)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meshnode.control.app import Handler
from protocol.conflict import ConflictState, Decision
from protocol.errors import SchemaError

if TYPE_CHECKING:
    from meshnode.node.runtime import Node

MAX_ACTOR_CHARS = 64


def parse_decision(body: dict[str, Any]) -> tuple[int, Decision]:
    """A decision request's conflict id and decision; SchemaError for anything else."""
    conflict_id, decision = body.get("id"), body.get("decision")
    if not isinstance(conflict_id, int) or isinstance(conflict_id, bool) or not 0 < conflict_id < 1 << 62:
        raise SchemaError("'id' must be a conflict number")
    if not isinstance(decision, str) or decision not in {d.value for d in Decision}:
        raise SchemaError(f"'decision' must be one of {', '.join(d.value for d in Decision)}")
    return conflict_id, Decision(decision)


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
        user = body.get("user")
        if not isinstance(user, str) or not user or len(user) > MAX_ACTOR_CHARS or not user.isprintable():
            raise SchemaError("'user' (who decides, for the audit) is required")
        row = await node.gateway.conflicts.decide(conflict_id, chosen, f"control:{user}")
        return row.json()

    return {("POST", "/conflicts"): listing, ("POST", "/conflicts/decide"): decision}
