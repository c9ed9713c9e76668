"""The demo (meshnode/demo) edits node.toml through NodeHome.set_config: the result is what the node's strict
reader accepts, with the values asked for; a bad key fails the demo step and leaves the file alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshnode.config import load_config
from meshnode.demo.identity import Node
from meshnode.demo.mesh import MeshDemo
from meshnode.demo.workspace import Workspace
from protocol.errors import ConfigError


def test_demo_configure_gives_a_config_the_reader_accepts(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    try:
        home = tmp_path / "node-a"
        ws.run("meshnode", "init", "--home", str(home), "--org", "RGT")
        demo = MeshDemo(ws)
        node = Node("node-a", "RGT", "Royal Example", home)
        demo.configure(node, {"limits.upload_mb_per_s": 3, "trust.roster_refresh_seconds": 2,
                              "dimse.enabled": True, "dimse.port": 0})
        config = load_config(home / "node.toml")
        assert (config.upload_mb_per_s, config.roster_refresh) == (3.0, 2)
        assert config.gateway.dimse.enabled and config.gateway.dimse.port == 0
        assert "# Where the node listens for other nodes" in (home / "node.toml").read_text()  # comments kept
        before = (home / "node.toml").read_bytes()
        with pytest.raises(ConfigError, match="limits.upload: unknown key"):
            demo.configure(node, {"limits.upload": 3})
        assert (home / "node.toml").read_bytes() == before
    finally:
        ws.close()
