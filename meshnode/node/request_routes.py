"""What `meshnode request send|list|show|approve|decline` and `meshnode priors` ask the running node (control
API), and the parsing the portal's JSON API (meshnode.web.requests_web) shares: both call meshnode.node.requests.

    POST /requests/send     {"holder", "nhs_number"?, "patient_id"?, "date_from"?, "date_to"?, "modality"?,
                             "reason", "priority"?, "purpose"?, "lifetime_days"? (1-30, default 7), "actor"?}
    POST /requests          {"direction"?: incoming|outgoing, "state"?: pending|approved|declined|expired}
    POST /requests/show     {"id"}: the request, and for an incoming one the local studies it matches
    POST /requests/approve  {"id", "studies": [study UID, ...], "actor"?}
    POST /requests/decline  {"id", "reason", "actor"?}
    POST /priors            {"org", "nhs_number", "actor"?}
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from meshnode.control.actor import control_actor
from meshnode.control.app import Handler
from meshnode.node.requests import Requests, arrived_manifests, request_json
from meshnode.node.study_match import PatientMismatchError, study_json
from meshnode.storage.request_store import DIRECTIONS, INCOMING, OUTGOING, Cursor
from protocol.errors import NotFoundError, SchemaError
from protocol.manifest import Priority, Purpose
from protocol.request_messages import PriorReply
from protocol.schema import check_org_code
from protocol.study_request import DEFAULT_LIFETIME, MAX_LIFETIME, RequestState, parse_request_id

if TYPE_CHECKING:
    from meshnode.node.runtime import Node

_OPTIONAL = ("nhs_number", "patient_id", "date_from", "date_to", "modality")


def _text(body: dict[str, Any], key: str, default: str | None = None, max_len: int = 1024) -> str:
    value = body.get(key, default)
    if not isinstance(value, str) or (default is None and not value):
        raise SchemaError(f"'{key}' is required (text)")
    if len(value) > max_len:
        raise SchemaError(f"'{key}' is longer than {max_len} characters")
    return value


def _choice(body: dict[str, Any], key: str, enum: type[Priority] | type[Purpose], default: str) -> Any:
    try:
        return enum(_text(body, key, default, 32))
    except ValueError:
        raise SchemaError(f"'{key}' must be one of {', '.join(e.value for e in enum)}") from None


async def send_request(requests: Requests, body: dict[str, Any], actor: str) -> dict[str, object]:
    holder = check_org_code(_text(body, "holder", max_len=16), "holder")
    fields = {k: _text(body, k, "", 64).strip() for k in _OPTIONAL}
    fields["nhs_number"] = fields["nhs_number"].replace(" ", "").replace("-", "")
    fields["date_from"] = fields["date_from"].replace("-", "")
    fields["date_to"] = fields["date_to"].replace("-", "")
    days = body.get("lifetime_days", DEFAULT_LIFETIME // 86400)
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= MAX_LIFETIME // 86400:
        raise SchemaError(f"'lifetime_days' must be a whole number of days, 1-{MAX_LIFETIME // 86400}")
    row = await requests.send(holder, nhs_number=fields["nhs_number"], patient_id=fields["patient_id"],
                              date_from=fields["date_from"], date_to=fields["date_to"], modality=fields["modality"],
                              reason=_text(body, "reason"), lifetime_s=days * 86400,
                              priority=_choice(body, "priority", Priority, "routine"),
                              purpose=_choice(body, "purpose", Purpose, "care"), requested_by=actor)
    return request_json(row)


#: requests one listing shows (a page; `before` = the last row's `cursor` for the next)
PAGE = 100
#: rows one listing reads at most to fill a page of one user's requests
MAX_SCAN = 20 * PAGE


def parse_cursor(text: object) -> Cursor | None:
    """A row's `cursor` ("<created_ms>-<request id>") back into the store's cursor; "" or None: none."""
    if text in (None, ""):
        return None
    if not isinstance(text, str) or len(text) > 64:
        raise SchemaError("'before' must be a row's cursor")
    ms, _, key = text.partition("-")
    if not ms.isdigit() or len(ms) > 18:
        raise SchemaError("'before' must be a row's cursor")
    return int(ms), parse_request_id(key).hex()


async def list_requests(requests: Requests, body: dict[str, Any], *, requested_by: str | None = None
                        ) -> list[dict[str, object]]:
    """One page of requests, newest first (body: direction, state, before). With `requested_by`, only the
    requests that user made (a clinician sees their own; the PACS team, None, sees all)."""
    direction = body.get("direction") or None
    if direction is not None and direction not in DIRECTIONS:
        raise SchemaError(f"'direction' must be one of {', '.join(DIRECTIONS)}")
    state = body.get("state") or None
    if state is not None and state not in {s.value for s in RequestState}:
        raise SchemaError(f"'state' must be one of {', '.join(s.value for s in RequestState)}")
    before = parse_cursor(body.get("before"))
    out: list[dict[str, object]] = []
    scanned = 0
    while len(out) < PAGE and scanned < MAX_SCAN:
        cursor = before
        rows = await requests.ctx.db.run(
            lambda s: s.requests(direction, RequestState(state) if state else None, PAGE, cursor))
        scanned += len(rows)
        for r in rows:
            shown = request_json(r)
            if requested_by is None or shown["requested_by"] == requested_by:
                if r.direction == OUTGOING and r.state is RequestState.APPROVED:
                    # approved is the holder's word; the studies count once they are here
                    shown["arrived"] = await requests.ctx.db.run(partial(arrived_manifests, row=r))
                out.append(shown)
        if len(rows) < PAGE:
            break
        before = (rows[-1].created_ms, rows[-1].request_id)
    return out[:PAGE]


async def show_request(requests: Requests, body: dict[str, Any]) -> dict[str, object]:
    key = parse_request_id(_text(body, "id", max_len=64)).hex()
    rows = await requests.ctx.db.run(lambda s: [s.request(key, d) for d in DIRECTIONS])
    row = next((r for r in rows if r is not None), None)
    if row is None:
        raise NotFoundError(f"no request {key}")
    out = request_json(row)
    if row.direction == INCOMING:
        try:
            out["matching"] = [study_json(s) for s in await requests.matching(key)]
        except PatientMismatchError as exc:  # shown to the PACS team, who decline it or fix the lookup table
            out["matching"], out["mismatch"] = [], str(exc)
    return out


def study_list(body: dict[str, Any]) -> list[str]:
    studies = body.get("studies")
    if not isinstance(studies, list) or not studies or not all(isinstance(s, str) for s in studies):
        raise SchemaError("'studies' must be a non-empty list of study UIDs")
    return [str(s) for s in studies]


def prior_json(org: str, reply: PriorReply) -> dict[str, object]:
    return {"org": org, "truncated": reply.truncated, "studies": [s.to_json() for s in reply.studies]}


async def query_priors(requests: Requests, body: dict[str, Any], actor: str) -> dict[str, object]:
    org = check_org_code(_text(body, "org", max_len=16), "org")
    nhs = _text(body, "nhs_number", max_len=16).replace(" ", "").replace("-", "")
    return prior_json(org, await requests.prior.ask(org, nhs, actor=actor))


def routes(node: Node) -> dict[tuple[str, str], Handler]:
    async def send(body: dict[str, Any]) -> object:
        return await send_request(node.requests, body, control_actor(body))

    async def listing(body: dict[str, Any]) -> object:
        return await list_requests(node.requests, body)

    async def show(body: dict[str, Any]) -> object:
        return await show_request(node.requests, body)

    async def approve(body: dict[str, Any]) -> object:
        row = await node.requests.approve(_text(body, "id", max_len=64), study_list(body),
                                          decided_by=control_actor(body))
        return request_json(row)

    async def decline(body: dict[str, Any]) -> object:
        row = await node.requests.decline(_text(body, "id", max_len=64), _text(body, "reason"),
                                          decided_by=control_actor(body))
        return request_json(row)

    async def priors(body: dict[str, Any]) -> object:
        return await query_priors(node.requests, body, control_actor(body))

    return {("POST", "/requests/send"): send, ("POST", "/requests"): listing, ("POST", "/requests/show"): show,
            ("POST", "/requests/approve"): approve, ("POST", "/requests/decline"): decline,
            ("POST", "/priors"): priors}
