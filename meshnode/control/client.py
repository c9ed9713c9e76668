"""The CLI side of the control API: find the running node, call it with its token (httpx, synchronous)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from meshnode.control.token import ENDPOINT_FILE, read_token
from common.files import read_file
from protocol.errors import MeshError, UnavailableError, error_from_code


class ControlClient:
    def __init__(self, home: Path, timeout: float = 30.0) -> None:
        self.home = home
        self.timeout = timeout
        try:
            endpoint = json.loads(read_file(home / ENDPOINT_FILE, "control endpoint", max_bytes=4096))
            self.url = str(endpoint["url"])
        except MeshError:
            raise UnavailableError(f"the node in {home} is not running (start it with `meshnode run`)") from None
        except (ValueError, KeyError, TypeError):
            raise UnavailableError(f"{home / ENDPOINT_FILE} is corrupt") from None
        self.token = read_token(home)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            # trust_env=False: a proxy configured for the user's other traffic must not see the token
            with httpx.Client(timeout=self.timeout, trust_env=False) as client:
                response = client.request(
                    method, self.url + path, content=json.dumps(body or {}).encode() if method == "POST" else None,
                    headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        except (httpx.TransportError, httpx.InvalidURL) as exc:
            raise UnavailableError(f"the node in {self.home} is not answering ({exc}); is it running?") from None
        if response.is_success:
            try:
                return response.json()
            except ValueError:
                raise UnavailableError("control API answered with a body that is not JSON") from None
        try:
            error = response.json()
            raise error_from_code(int(error["code"]), str(error["message"])) from None
        except (ValueError, KeyError, TypeError):
            raise UnavailableError(f"control API answered HTTP {response.status_code}") from None
