"""Drive the real ASGI app in-process: a request in, the complete response out."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import trio

Message = dict[str, Any]


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def call(app: Any, method: str, path: str, *, headers: dict[str, str] | None = None,
               body: bytes | list[bytes] = b"", query: str = "", client: str = "127.0.0.1",
               stall: bool = False) -> Reply:
    """`stall`: the client sends `body` and then nothing more (as a slow or oversized upload would): the app
    must answer without the rest. Otherwise the client disconnects once the response is complete."""
    chunks = body if isinstance(body, list) else [body]
    messages: list[Message] = [{"type": "http.request", "body": c, "more_body": stall or i < len(chunks) - 1}
                               for i, c in enumerate(chunks)]
    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(),
             "query_string": query.encode(), "scheme": "http", "client": (client, 50000), "server": ("test", 80),
             "root_path": "", "http_version": "1.1", "asgi": {"version": "3.0", "spec_version": "2.1"},
             "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]}
    sent: list[Message] = []
    done = trio.Event()

    async def receive() -> Message:
        if messages:
            return messages.pop(0)
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            done.set()

    try:
        await app(scope, receive, send)
    finally:
        done.set()
    start = next(m for m in sent if m["type"] == "http.response.start")
    return Reply(int(start["status"]), {k.decode(): v.decode() for k, v in start["headers"]},
                 b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))
