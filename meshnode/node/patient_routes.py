"""What `meshnode patient-share create|list|show|revoke|unlock|history` and `meshnode upload-link create` ask the
running node (the control API): the link service (meshnode.patient.service) the web side made, with the
control account as the actor ("control:<account>"). The control API is the operator's: it sees every link; an
unlock needs a reason (how the person's identity was checked)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meshnode.control.actor import control_actor
from meshnode.control.app import Handler
from meshnode.patient.service import LinkService
from protocol.errors import NotFoundError
from protocol.patient_link import PatientAccessError

if TYPE_CHECKING:
    from meshnode.node.runtime import Node


def _service(node: Node) -> LinkService:
    service = node.patient_links
    if service is None:
        raise NotFoundError("patient access is off on this node ([patient_access] enabled = false in node.toml)")
    return service


def _id(body: dict[str, Any]) -> str:
    value = body.get("id")
    if not isinstance(value, str):
        raise PatientAccessError("'id' (the link's 32 hex digits) is required")
    return value


def routes(node: Node) -> dict[tuple[str, str], Handler]:
    async def create(body: dict[str, Any]) -> object:
        args = {k: body.get(k) for k in ("person", "email", "code_to", "days")}
        kind = body.get("kind", "share")
        if kind == "upload":
            if body.get("studies") not in (None, []):
                raise PatientAccessError("an upload link has no studies")
            link_id = await _service(node).create_upload(control_actor(body), **args)
        elif kind == "share":
            link_id = await _service(node).create_share(control_actor(body), body.get("studies"), **args)
        else:
            raise PatientAccessError("kind: share or upload")
        return {"id": link_id}

    async def listing(body: dict[str, Any]) -> object:
        kind = body.get("kind")
        return {"links": await _service(node).list_links(kind if isinstance(kind, str) else None,
                                                         actor=control_actor(body))}

    async def show(body: dict[str, Any]) -> object:
        return await _service(node).history(_id(body), actor=control_actor(body))

    async def revoke(body: dict[str, Any]) -> object:
        await _service(node).revoke(control_actor(body), _id(body), body.get("reason"))
        return {"revoked": True}

    async def unlock(body: dict[str, Any]) -> object:
        await _service(node).unlock(control_actor(body), _id(body), body.get("reason"))
        return {"unlocked": True}

    return {("POST", "/patient-links/create"): create, ("POST", "/patient-links"): listing,
            ("POST", "/patient-links/show"): show, ("POST", "/patient-links/revoke"): revoke,
            ("POST", "/patient-links/unlock"): unlock}
