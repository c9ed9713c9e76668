"""The CLI side of the control API: find the running node, call it with its token."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

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
        data = json.dumps(body or {}).encode() if method == "POST" else None
        request = urllib.request.Request(
            self.url + path, data=data, method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                error = json.loads(exc.read())
                raise error_from_code(int(error["code"]), str(error["message"])) from None
            except (ValueError, KeyError, TypeError):
                raise UnavailableError(f"control API answered HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise UnavailableError(f"the node in {self.home} is not answering ({exc}); is it running?") from None
