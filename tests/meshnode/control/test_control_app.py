"""The control API (meshnode/control): token, routing, body cap, errors; its CLI client against a real server.

Hostile requests first: a missing or forged token, an unknown route or a wrong
method, a body over the cap (refused from its declared length, before it is
read), bodies that are not a JSON object.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from meshnode.control.app import MAX_BODY, ControlApp, Handler
from meshnode.control.client import ControlClient
from meshnode.control.server import serve_control
from meshnode.control.token import ENDPOINT_FILE, create_token
from protocol.errors import NotFoundError, SchemaError, UnavailableError
from tests.meshnode.web.asgi import Reply, call

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def make_app(seen: list[dict[str, Any]]) -> ControlApp:
    async def echo(body: dict[str, Any]) -> object:
        seen.append(body)
        return {"got": body}

    async def missing(body: dict[str, Any]) -> object:
        raise NotFoundError("no such manifest")

    async def bad(body: dict[str, Any]) -> object:
        raise SchemaError("'to' is required")

    routes: dict[tuple[str, str], Handler] = {("POST", "/share"): echo, ("GET", "/status"): echo,
                                              ("POST", "/missing"): missing, ("POST", "/bad"): bad}
    return ControlApp(TOKEN, routes)


async def test_token_missing_forged_or_not_bearer_is_401_before_routing() -> None:
    seen: list[dict[str, Any]] = []
    app = make_app(seen)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": "Bearer "}):
        for path in ("/status", "/nowhere"):
            reply = await call(app, "GET", path, headers=headers)
            assert reply.status == 401, (headers, path)
            assert reply.json()["code"] == 600 and reply.json()["error"] == "unauthorised"
            assert reply.headers["content-type"] == "application/json"
    assert seen == []


async def test_unknown_route_and_wrong_method_are_404() -> None:
    app = make_app([])
    for method, path in (("GET", "/nowhere"), ("GET", "/share"), ("POST", "/status"), ("HEAD", "/status"),
                         ("DELETE", "/share"), ("GET", "/status/../share"), ("GET", "//status")):
        reply = await call(app, method, path, headers=AUTH)
        assert reply.status == 404, (method, path)
        assert reply.json()["code"] == NotFoundError.code


async def test_a_body_over_the_cap_is_refused_from_its_declared_length_without_reading_it() -> None:
    seen: list[dict[str, Any]] = []
    app = make_app(seen)
    # one small chunk, then the client would send the rest: the app must not wait for it
    with trio.fail_after(5):
        reply = await call(app, "POST", "/share", headers={**AUTH, "Content-Length": str(MAX_BODY + 1)},
                           body=[b"{", b"x" * 10], stall=True)
    assert reply.status == 413 and reply.json()["code"] == 200
    # undeclared (chunked): refused as soon as the cap is passed
    with trio.fail_after(5):
        reply = await call(app, "POST", "/share", headers=AUTH, body=[b"x" * (MAX_BODY // 2)] * 3, stall=True)
    assert reply.status == 413
    assert seen == []


async def test_bodies_that_are_not_a_json_object_are_400() -> None:
    seen: list[dict[str, Any]] = []
    app = make_app(seen)
    for body in (b"{", b"[1, 2]", b'"text"', b"\xff\xfe", b"null", b'{"a": 1}{'):
        reply = await call(app, "POST", "/share", headers=AUTH, body=body)
        assert reply.status == 400 and reply.json()["code"] == 102, body
    assert seen == []
    ok = await call(app, "POST", "/share", headers=AUTH, body=[b'{"to": ', b'["RGT"]}'])
    assert ok.status == 200 and ok.json() == {"got": {"to": ["RGT"]}}
    empty = await call(app, "GET", "/status", headers=AUTH)
    assert empty.status == 200 and empty.json() == {"got": {}}


async def test_mesh_errors_keep_their_code_and_status() -> None:
    app = make_app([])
    missing = await call(app, "POST", "/missing", headers=AUTH, body=b"{}")
    assert missing.status == 404 and missing.json() == {"code": 610, "error": "not-found",
                                                        "message": "no such manifest"}
    bad: Reply = await call(app, "POST", "/bad", headers=AUTH, body=b"{}")
    assert bad.status == 400 and bad.json()["code"] == SchemaError.code


async def test_client_against_the_served_app(tmp_path: Path) -> None:
    token = create_token(tmp_path)
    seen: list[dict[str, Any]] = []
    app = make_app(seen)
    app.token = token
    with pytest.raises(UnavailableError):
        ControlClient(tmp_path)  # not started yet: no endpoint file
    async with trio.open_nursery() as nursery:
        url = await nursery.start(serve_control, app, tmp_path)
        assert json.loads((tmp_path / ENDPOINT_FILE).read_text()) == {"url": url}
        client = ControlClient(tmp_path, timeout=10)
        answer = await trio.to_thread.run_sync(client.call, "POST", "/share", {"to": ["RGT"]})
        assert answer == {"got": {"to": ["RGT"]}}
        with pytest.raises(NotFoundError, match="no such manifest"):
            await trio.to_thread.run_sync(client.call, "POST", "/missing", {})
        with pytest.raises(SchemaError):
            await trio.to_thread.run_sync(client.call, "POST", "/bad", {})
        # answered without reading the body (over a real connection: hypercorn's queue to the app fills up)
        for headers, status in (({}, 401), (AUTH | {"Authorization": f"Bearer {token}"}, 413)):
            answer = await trio.to_thread.run_sync(lambda: httpx.post(
                url + "/share", content=b"{" + b" " * (8 << 20), headers=headers, timeout=10, trust_env=False))
            assert answer.status_code == status and answer.headers["connection"] == "close"
        client.token = "forged"
        with pytest.raises(Exception) as refused:
            await trio.to_thread.run_sync(client.call, "GET", "/status")
        assert getattr(refused.value, "code", None) == 600
        nursery.cancel_scope.cancel()
    with pytest.raises(UnavailableError, match="not answering"):
        await trio.to_thread.run_sync(ControlClient(tmp_path, timeout=5).call, "GET", "/status")
