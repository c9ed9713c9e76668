"""A signed JSON POST (webhooks, the patient links' SMS gateway): the X-Meshnode-Signature header
`t=<unix time>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>`, its check (what a receiver does), and one bounded POST.
Shared by meshnode.web.webhooks and meshnode.patient.service, so neither imports the other's layer."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

import httpx
import trio

TIMEOUT_S = 10.0


def signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_signature(secret: str, header: str, body: bytes, now: float, tolerance_s: int = 300) -> bool:
    """What a receiver does (and the tests): check the HMAC and that the attempt is recent."""
    fields = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance_s:
        return False
    expected = signature(secret, timestamp, body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, fields.get("v1", ""))


@dataclass(frozen=True)
class AttemptResult:
    ok: bool
    error: str


async def post(client: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str],
               timeout: float = TIMEOUT_S) -> AttemptResult:
    """One POST, all of it (connect, send, answer) within `timeout` seconds."""
    with trio.move_on_after(timeout):
        try:
            async with client.stream("POST", url, content=body, headers={
                    "Content-Type": "application/json", "User-Agent": "meshnode", **headers}) as response:
                read = 0
                async for chunk in response.aiter_raw():
                    read += len(chunk)
                    if read >= 4096:
                        break
                return AttemptResult(200 <= response.status_code < 300, f"HTTP {response.status_code}")
        except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
            return AttemptResult(False, f"{type(exc).__name__}: {exc}"[:300])
    return AttemptResult(False, f"no complete answer within {timeout:g} s")
