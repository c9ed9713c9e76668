"""The emulation's probe (simulations/emulation/probe.py) against a real control API served on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from meshnode.control.app import ControlApp, Handler
from meshnode.control.server import serve_control
from meshnode.control.token import TOKEN_FILE, create_token
from simulations.emulation.probe import ControlError, call

ROOT = Path(__file__).resolve().parents[2]


async def test_probe_calls_the_control_api_and_reports_refusals(tmp_path: Path) -> None:
    async def inbox(body: dict[str, Any]) -> object:
        return [{"state": "complete", "asked": body}]

    routes: dict[tuple[str, str], Handler] = {("GET", "/inbox"): inbox, ("POST", "/share"): inbox}
    with httpx.Client(trust_env=False) as client:
        with pytest.raises(ControlError, match="not running"):
            call(client, tmp_path, "GET", "/inbox")
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_control, ControlApp(create_token(tmp_path), routes), tmp_path)
            got = await trio.to_thread.run_sync(call, client, tmp_path, "POST", "/share", {"to": ["RJ1"]})
            assert got == [{"state": "complete", "asked": {"to": ["RJ1"]}}]
            answers = await trio.to_thread.run_sync(lambda: subprocess.run(
                [sys.executable, "-m", "simulations.emulation.probe", str(tmp_path)], cwd=ROOT, text=True,
                input='{"method": "GET", "path": "/inbox"}\n{"method": "GET", "path": "/nowhere"}\nnot json\n',
                capture_output=True, timeout=60, check=True).stdout.splitlines())
            assert [json.loads(a)["ok"] for a in answers] == [True, False, False]
            assert "HTTP 404" in json.loads(answers[1])["error"]
            (tmp_path / TOKEN_FILE).write_text("forged\n")
            with pytest.raises(ControlError, match="HTTP 401"):
                await trio.to_thread.run_sync(call, client, tmp_path, "GET", "/inbox")
            nursery.cancel_scope.cancel()
