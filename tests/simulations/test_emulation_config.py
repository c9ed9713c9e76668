"""The emulation sets each node's node.toml through the node's CLI (`meshnode config set`): the overrides the
shaper asks for come out as a config the node's strict reader accepts, with those values."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshnode.config import load_config
from protocol.errors import UnavailableError
from simulations.emulation.cluster import Cluster, NodeProc
from simulations.emulation.shaping import Rate, Shaper


def test_emulation_overrides_give_a_config_the_reader_accepts(tmp_path: Path) -> None:
    shaper = Shaper("limiter", "test")
    placement, overrides = shaper.add_node(0, Rate(up=1.25e6, down=2.5e6))
    assert overrides == {"limits.upload_mb_per_s": 1.25}
    cluster = Cluster(tmp_path)
    node = NodeProc("RGT", "acute-trust", tmp_path / "node-RGT", placement)
    cluster.run(placement, "meshnode", "init", "--home", str(node.home), "--org", "RGT", "--json")
    cluster.configure(node, {**overrides, "trust.roster_refresh_seconds": 5})
    config = load_config(node.home / "node.toml")
    assert config.upload_mb_per_s == 1.25 and config.roster_refresh == 5
    with pytest.raises(UnavailableError, match="upload_mb_per_s: expected a number"):
        cluster.configure(node, {"limits.upload_mb_per_s": "fast"})
    assert load_config(node.home / "node.toml").upload_mb_per_s == 1.25
