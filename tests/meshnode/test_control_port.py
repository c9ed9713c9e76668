"""[control] port: the control API's port is configurable (0: any free port), bad values are refused naming
the key, and a port that cannot be bound is a ConfigError naming it too (issue 15, part 5)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import trio

from meshnode.config import NodeConfig, parse_config
from meshnode.control.app import ControlApp
from meshnode.control.server import serve_control
from protocol.errors import ConfigError

BASE = '[node]\norg = "RGT"\n'


def test_the_default_is_any_free_port_and_the_template_says_so() -> None:
    assert parse_config(BASE).control_port == 0
    text = NodeConfig(org="RGT").render()
    assert "\n# [control]\n# port = 0\n" in text and parse_config(text).control_port == 0
    assert parse_config(NodeConfig(org="RGT", control_port=7781).render()).control_port == 7781


@pytest.mark.parametrize("value", ["-1", "65536", '"7781"', "true", "1.5", "[7781]"])
def test_bad_ports_are_refused_naming_the_key(value: str) -> None:
    with pytest.raises(ConfigError, match=r"control\.port"):
        parse_config(BASE + f"[control]\nport = {value}\n")


def test_unknown_control_keys_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"control\.host"):
        parse_config(BASE + '[control]\nhost = "0.0.0.0"\n')  # never beyond 127.0.0.1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_the_control_api_listens_on_the_configured_port(tmp_path: Path) -> None:
    port = _free_port()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(serve_control, ControlApp("token", {}), tmp_path, port)
        assert url == f"http://127.0.0.1:{port}"
        assert json.loads((tmp_path / "control.json").read_text())["url"] == url
        nursery.cancel_scope.cancel()


async def test_a_port_in_use_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = int(busy.getsockname()[1])
        with pytest.raises(BaseExceptionGroup) as raised:  # trio's nursery wraps what serve_control raises
            async with trio.open_nursery() as nursery:
                await nursery.start(serve_control, ControlApp("token", {}), tmp_path, port)
        (error,) = raised.value.exceptions
        assert isinstance(error, ConfigError)
        assert f"control.port: cannot listen on 127.0.0.1:{port}" in str(error)
