"""Drive the real ASGI app in-process: a request in, the complete response out."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from meshnode.web.http import Message


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def call(app: Any, method: str, path: str, *, headers: dict[str, str] | None = None,
               body: bytes | list[bytes] = b"", query: str = "", client: str = "127.0.0.1") -> Reply:
    chunks = body if isinstance(body, list) else [body]
    messages: list[Message] = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
                               for i, c in enumerate(chunks)]
    scope = {"type": "http", "method": method, "path": path, "query_string": query.encode(), "scheme": "http",
             "client": (client, 50000),
             "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]}
    sent: list[Message] = []

    async def receive() -> Message:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    return Reply(int(start["status"]), {k.decode(): v.decode() for k, v in start["headers"]},
                 b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))
