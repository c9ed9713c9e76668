"""A light client of a running node's control API (GET /inbox, POST /share, ...): httpx, no meshnode imports.

The meshnode CLI would do (it is what it calls), but starting it costs about a
second of CPU (it imports libp2p), which on a two-core machine shared with
five nodes would disturb the measurement. When the node runs in a network
namespace, this module runs inside it as a long-lived process
(`python -m simulations.emulation.probe HOME`) that reads one JSON request per
line on stdin and answers one JSON line on stdout.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx

ENDPOINT_FILE = "control.json"  # as written by the node (meshnode/control/token.py)
TOKEN_FILE = "control.token"


class ControlError(Exception):
    pass


def call(client: httpx.Client, home: Path, method: str, path: str, body: dict[str, object] | None = None,
         timeout: float = 30.0) -> object:
    try:
        url = str(json.loads((home / ENDPOINT_FILE).read_text(encoding="utf-8"))["url"])
        token = (home / TOKEN_FILE).read_text(encoding="ascii").strip()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ControlError(f"the node in {home} is not running ({exc})") from None
    data = json.dumps(body or {}).encode() if method == "POST" else None
    try:
        response = client.request(method, url + path, content=data, timeout=timeout, headers={
            "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise ControlError(f"{method} {path}: {exc}") from None
    if not response.is_success:
        raise ControlError(f"{method} {path}: HTTP {response.status_code}: {response.content[:300]!r}")
    try:
        return response.json()
    except ValueError as exc:
        raise ControlError(f"{method} {path}: {exc}") from None


def serve(home: Path) -> int:
    """The probe process: one JSON request per stdin line -> one JSON answer per stdout line (one connection
    pool: it asks the same node every few hundred milliseconds)."""
    with httpx.Client(trust_env=False) as client:
        for line in sys.stdin:
            try:
                req = json.loads(line)
                value = call(client, home, str(req["method"]), str(req["path"]), req.get("body"))
                result: object = {"ok": True, "value": value}
            except (ControlError, ValueError, KeyError, TypeError) as exc:
                result = {"ok": False, "error": str(exc)}
            sys.stdout.write(json.dumps(result) + "\n")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(serve(Path(sys.argv[1])))
