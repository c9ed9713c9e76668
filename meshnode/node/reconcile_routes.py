"""What `meshnode reconcile` and `meshnode patients` ask the running node (the control API: the local admin).

    GET  /reconcile              the queue (body {"all": true}: every state)
    POST /reconcile/decide       {"manifest", "action": "match"|"reject", "local_id" | "record", "reason", "actor"}
    POST /patients/list          {"nhs_number"?}
    POST /patients/set           {"record": {...}, "actor"}
    POST /patients/delete        {"local_id", "actor"}

"actor" is the name of the local account the CLI runs as (informational: the control token is the local
admin's); decisions and edits are recorded as meshnode.control.actor.control_actor says ("control:<account>").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meshnode.control.actor import control_actor
from meshnode.control.app import Handler
from meshnode.gateway import reconcile_api

if TYPE_CHECKING:
    from meshnode.node.runtime import Node


def routes(node: Node) -> dict[tuple[str, str], Handler]:
    ctx = node.ctx

    async def queue(body: dict[str, Any]) -> object:
        return await reconcile_api.queue(node.gateway.reconciler, body)

    async def match_or_reject(body: dict[str, Any]) -> object:
        return await reconcile_api.decide(node.gateway.reconciler, body, control_actor(body))

    async def patients(body: dict[str, Any]) -> object:
        return await reconcile_api.patients(ctx.db, body)

    async def put(body: dict[str, Any]) -> object:
        return await reconcile_api.put_patient(ctx.db, ctx.audit, body, control_actor(body), int(ctx.clock() * 1000))

    async def delete(body: dict[str, Any]) -> object:
        return await reconcile_api.delete_patient(ctx.db, ctx.audit, body, control_actor(body))

    return {("GET", "/reconcile"): queue, ("POST", "/reconcile/list"): queue,
            ("POST", "/reconcile/decide"): match_or_reject, ("POST", "/patients/list"): patients,
            ("POST", "/patients/set"): put, ("POST", "/patients/delete"): delete}
