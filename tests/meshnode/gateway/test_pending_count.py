"""`meshnode gateway`'s pending announcement counts every instance the study holds (issue 15: a 60-instance
study waiting for its next announcement was shown as "pending: 1 instance(s)", the arrivals since the last
revision), and says how many of them are new since that revision."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from meshnode.cli.gateway_cmd import status_lines
from meshnode.dicom import synthetic
from meshnode.gateway.routes import Route, RouteTable
from tests.meshnode.gateway.conftest import GatewayFactory
from tests.meshnode.gateway.harness import CALLER, Gateway, config, eventually
from tests.meshnode.gateway.test_dimse_scp import tool

pytestmark = pytest.mark.e2e  # real storescu
ROUTE = Route("rj1", ("RJ1",), called_ae="MESH_RJ1", quiet_period_s=1)


def _pending_line(item: dict[str, Any]) -> str:
    (line,) = [ln for ln in status_lines({"dimse": None, "intake": {"stored": 0, "bytes": 0, "duplicates": 0,
                                                                   "refused": 0},
                                          "routes": [], "pending_announcements": [item], "forward": {}})
               if ln.startswith("pending")]
    return line


async def _store(gw: Gateway, folder: Path) -> None:
    sent = await tool("storescu", "+sd", "-aet", CALLER, "-aec", "MESH_RJ1", "127.0.0.1", str(gw.port), str(folder))
    assert sent.code == 0, sent.output


async def test_a_60_instance_study_waiting_for_its_next_revision_counts_60(gateways: GatewayFactory,
                                                                          tmp_path: Path) -> None:
    files = synthetic.generate_ct_study(tmp_path / "ct", slices=60, rows=16, columns=16, seed=3)
    first, late = tmp_path / "first", tmp_path / "late"
    first.mkdir()
    late.mkdir()
    for f in files[:59]:
        (first / f.name).write_bytes(f.read_bytes())
    (late / files[59].name).write_bytes(files[59].read_bytes())
    gw = await gateways(config(routes=[ROUTE]))
    await _store(gw, first)
    (item,) = await gw.db.run(gw.announcer.status)
    assert item["instances"] == 59 and item["new_instances"] == 59
    assert ": 59 instance(s), announced" in _pending_line(item)
    await eventually(lambda: gw.announcer.announced == 1, "revision 1 announced")
    await eventually(lambda: not gw.announcer.pending(), "revision 1 recorded")
    gw.announcer.routes = RouteTable([replace(ROUTE, quiet_period_s=3600)])  # the next one waits
    await _store(gw, late)
    (item,) = await gw.db.run(gw.announcer.status)
    assert item["instances"] == 60, item  # was 1: the arrivals since revision 1
    assert item["new_instances"] == 1 and item["revision"] == 1
    assert ": 60 instance(s) (1 new since revision 1), announced" in _pending_line(item)
