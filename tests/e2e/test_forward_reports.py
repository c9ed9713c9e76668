"""Forward reports end to end (real node processes, a real directory, a real PACS): A shares a study with B;
B forwards it to Orthanc and reports it; A's outbox (`meshnode outbox --json` and its text form) shows the
study forwarded to B's PACS, from B's signed report, and A's audit records it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from meshnode.control.client import ControlClient
from meshnode.demo.mesh import MeshDemo
from tests.e2e.orthanc import PACS_AE, Orthanc

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ORGS = [("a", "RGT", "Org A"), ("b", "RJ1", "Org B")]


def _forward(mesh: MeshDemo, home: Path, manifest_id: str) -> dict[str, Any] | None:
    rows = ControlClient(home).call("GET", "/outbox")
    row = next((r for r in rows if r["manifest_id"] == manifest_id), None)
    if row is None:
        return None
    report: dict[str, Any] | None = row["recipients"].get("RJ1", {}).get("pacs_forward")
    return report


def test_the_sender_sees_the_recipients_pacs_forward(mesh: MeshDemo, orthanc: Orthanc) -> None:
    nodes = mesh.setup(ORGS, start=False)
    a, b = nodes["a"], nodes["b"]
    orthanc.start()
    with open(b.home / "node.toml", "a") as fh:
        fh.write(f'\n[[pacs]]\nname = "main"\nae_title = "{PACS_AE}"\nhost = "127.0.0.1"\n'
                 f"port = {orthanc.dicom_port}\nretry_max_seconds = 2\n")
    mesh.start(a)
    mesh.start(b)
    study, _ = mesh.generate_and_ingest(a, slices=4, rows=64, columns=64)
    manifest_id = mesh.share(a, study, ["RJ1"])
    report = mesh.wait_for(lambda: _forward(mesh, a.home, manifest_id), 180, "B's forward report at A")
    assert report["state"] == "forwarded" and (report["sent"], report["total"]) == (4, 4)
    assert report["destinations"] == [{"label": "main", "state": "forwarded", "sent": 4, "total": 4}]
    assert len(orthanc.instances()) == 4
    rows = mesh.cli(a, "outbox")
    row = next(r for r in rows if r["manifest_id"] == manifest_id)
    assert row["recipients"]["RJ1"]["status"] == "delivered"
    assert row["recipients"]["RJ1"]["pacs_forward"]["state"] == "forwarded"
    text = mesh.ws.run("meshnode", "outbox", "--home", str(a.home)).stdout
    assert "RJ1: delivered (receipt verified)" in text and "forwarded to PACS (4/4)" in text
    audit = [e for e in mesh.audit(a) if e["action"] == "forward-reported"]
    assert len(audit) == 1 and audit[0]["actor_org"] == "RJ1" and audit[0]["manifest_id"] == manifest_id
    assert not [e for e in mesh.audit(a) if e["action"] == "forward-report-refused"]
