"""Emulation with real meshnode processes (marker `emulation`, `make test-emulation`; a few minutes).

One run takes the path this machine allows (network namespaces with tc when
root, which is what CI does); the other forces the node's upload limiter,
the fallback everywhere else.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from simulations.cli import main
from simulations.emulation.shaping import _netns_problem
from simulations.validate import TARGET

pytestmark = [pytest.mark.emulation, pytest.mark.e2e]

SMALL = ["--set", "emulation.studies=3", "--set", "emulation.min_gap=2s"]


def records(folder: Path) -> list[dict[str, str]]:
    lines = (folder / "transfers-r0.csv").read_text().splitlines()
    header = lines[0].split(",")
    return [dict(zip(header, line.split(","))) for line in lines[1:]]


def test_validate_emulates_with_real_nodes_and_compares_with_the_model(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "five-trusts", *SMALL, "--out", str(tmp_path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    expected = "netns" if _netns_problem() is None else "limiter"
    assert result["shaping"] == expected
    if os.geteuid() == 0 and shutil.which("tc"):
        assert expected == "netns", _netns_problem()  # CI runs as root: it must take the namespace path
    emulated = records(tmp_path / "emulated")
    modelled = records(tmp_path / "modelled")
    assert len(emulated) == len(modelled) >= 3
    assert all(r["status"] == "delivered" for r in emulated + modelled)
    scale = 0.04  # five-trusts [emulation] bandwidth_scale
    uplink = {"RGT": 200e6, "RJ1": 200e6, "RAJ": 200e6, "NVC01": 100e6, "TRAD1": 200e6}
    for r in emulated:  # the links really are shaped: no transfer beats its sender's uplink
        floor = float(r["bytes"]) / (uplink[r["sender"]] / 8 * scale)
        assert float(r["delivered"]) - float(r["arrival"]) >= 0.95 * floor, r
    manifest = json.loads((tmp_path / "emulated" / "manifest.json").read_text())
    assert manifest["design_settings"]["emulation"]["shaping"] == expected
    overall = result["rows"][0]
    assert overall["label"] == "median, all transfers"
    assert overall["emulated_s"] > 0 and overall["modelled_s"] > 0
    # the bound docs/researchers.md states (-1.2 % to -3.6 % measured there, -1.9 % in this configuration)
    assert result["target"] == TARGET == 0.10
    assert abs(overall["error"]) <= TARGET, overall


def test_emulate_with_the_nodes_upload_limiter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["emulate", "five-trusts", *SMALL, "--set", "emulation.studies=2", "--shaping", "limiter",
                 "--out", str(tmp_path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["shaping"] == "limiter" and result["delivered"] == result["transfers"] == 2
    for r in records(tmp_path):
        assert r["status"] == "delivered"
        limit = {"NVC01": 100e6}.get(r["sender"], 200e6) / 8 * 0.04  # upload_mb_per_s given to the node
        assert float(r["delivered"]) - float(r["arrival"]) >= 0.95 * float(r["bytes"]) / limit, r
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["replications"][0]["delivered"] == 2
    assert main(["report", str(tmp_path)]) == 0
