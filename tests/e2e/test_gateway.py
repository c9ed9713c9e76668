"""The hospital gateway end to end: dcmtk and Orthanc against real node processes.

Node a (RGT) takes a study from dcmtk storescu on its routing AE title
MESH_RJ1, announces it to RJ1 once quiet, and node b (RJ1) fetches it,
verifies it, sends the receipt and forwards it into an Orthanc acting as
RJ1's PACS. At b, findscu finds it and getscu / movescu retrieve it, byte for
byte. Late instances make a new manifest revision. With Orthanc down, the
forward waits (also across a restart of b) and completes once it is back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pydicom
import pytest

from meshnode.demo.identity import Node
from meshnode.demo.mesh import MeshDemo
from meshnode.demo.workspace import free_tcp_port
from meshnode.dicom import synthetic
from tests.e2e.dimse_tools import (
    dataset_bytes,
    datasets,
    dimse_endpoint,
    find_answers,
    findscu,
    getscu,
    movescu,
    storescu,
)
from tests.e2e.orthanc import PACS_AE, Orthanc

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ORGS = [("a", "RGT", "Org A"), ("b", "RJ1", "Org B")]
MODALITY = "CT_SCANNER"
READER = "READER"  # findscu / getscu / movescu at b
QUIET_S = 2


def enable_gateway(demo: MeshDemo, node: Node, extra: str) -> None:
    demo.configure(node, {"dimse.enabled": True, "dimse.port": 0})
    with open(node.home / "node.toml", "a") as fh:
        fh.write(extra)


def sender_config() -> str:
    return (f'\n[[caller]]\nae_title = "{MODALITY}"\nhosts = ["127.0.0.1"]\nallow = ["store"]\n'
            f'\n[[route]]\nname = "rj1"\ncalled_ae = "MESH_RJ1"\nto = ["RJ1"]\npriority = "urgent"\n'
            f"quiet_period_seconds = {QUIET_S}\n")


def receiver_config(orthanc: Orthanc, move_port: int) -> str:
    return (f'\n[[caller]]\nae_title = "{READER}"\n'
            f'\n[[move_destination]]\nae_title = "{READER}"\nhost = "127.0.0.1"\nport = {move_port}\n'
            f'\n[[pacs]]\nname = "main"\nae_title = "{PACS_AE}"\nhost = "127.0.0.1"\nport = {orthanc.dicom_port}\n'
            f"retry_max_seconds = 2\n")


def study_uid(files: list[Path]) -> str:
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def inbox(demo: MeshDemo, node: Node) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = demo.cli(node, "inbox")
    return rows


def forwarded(demo: MeshDemo, node: Node, revision: int) -> dict[str, Any] | None:
    for row in inbox(demo, node):
        main = row.get("forward", {}).get("main")
        if row["revision"] == revision and row["state"] == "receipted" and main and main["state"] == "forwarded":
            return row
    return None


def test_storescu_route_announce_deliver_find_get_move_and_forward_to_orthanc(
        mesh: MeshDemo, orthanc: Orthanc, tmp_path: Path) -> None:
    nodes = mesh.setup(ORGS, start=False)
    a, b = nodes["a"], nodes["b"]
    orthanc.start()
    move_port = free_tcp_port()
    enable_gateway(mesh, a, sender_config())
    enable_gateway(mesh, b, receiver_config(orthanc, move_port))
    mesh.start(a)
    mesh.start(b)
    files = synthetic.generate_ct_study(tmp_path / "ct", slices=12, seed=41, rows=256, columns=256)
    study = study_uid(files)
    first, late = tmp_path / "first", tmp_path / "late"
    first.mkdir()
    late.mkdir()
    for f in files[:10]:
        (first / f.name).write_bytes(f.read_bytes())
    for f in files[10:]:
        (late / f.name).write_bytes(f.read_bytes())

    _, a_port, _ = dimse_endpoint(a.home)
    sent = storescu(a_port, MODALITY, "MESH_RJ1", first)
    assert sent.code == 0, sent.output
    # announced to RJ1 once quiet, fetched, verified, receipted, forwarded into the PACS
    row = mesh.wait_for(lambda: forwarded(mesh, b, 1), 120, "revision 1 at b, forwarded to Orthanc")
    assert row["instances"] == 10 and row["sender_org"] == "RGT" and row["priority"] == "urgent"
    assert mesh.delivered(a, row["manifest_id"], ["RJ1"])
    assert row["forward"]["main"]["sent"] == 10 and row["forward"]["main"]["failed"] == 0

    # the PACS holds every instance, byte for byte
    originals = sorted(dataset_bytes(f) for f in files[:10])
    assert sorted(dataset_bytes(orthanc.instance_file(i)) for i in orthanc.instances()) == originals

    # C-FIND, C-GET, C-MOVE at the receiving node
    _, b_port, b_ae = dimse_endpoint(b.home)
    found = findscu(b_port, READER, b_ae, ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}",
                                           "NumberOfStudyRelatedInstances", "ModalitiesInStudy", "PatientID"])
    assert found.code == 0, found.output
    answers = find_answers(found.output)
    assert len(answers) == 1 and answers[0]["StudyInstanceUID"] == study, found.output
    assert answers[0]["NumberOfStudyRelatedInstances"] == "10" and answers[0]["ModalitiesInStudy"] == "CT"
    series = findscu(b_port, READER, b_ae, ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={study}",
                                            "SeriesInstanceUID", "NumberOfSeriesRelatedInstances"])
    assert [s["NumberOfSeriesRelatedInstances"] for s in find_answers(series.output)] == ["10"], series.output
    got = getscu(b_port, READER, b_ae, tmp_path / "get", ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}"])
    assert got.code == 0, got.output
    assert datasets(tmp_path / "get") == originals
    moved = movescu(b_port, READER, b_ae, tmp_path / "move", ["QueryRetrieveLevel=STUDY",
                                                              f"StudyInstanceUID={study}"], move_port)
    assert moved.code == 0, moved.output
    assert datasets(tmp_path / "move") == originals

    # late instances: a new revision with all 12; only the 2 new ones go to the PACS
    sent = storescu(a_port, MODALITY, "MESH_RJ1", late)
    assert sent.code == 0, sent.output
    row2 = mesh.wait_for(lambda: forwarded(mesh, b, 2), 120, "revision 2 at b, forwarded")
    assert row2["instances"] == 12 and row2["manifest_id"] != row["manifest_id"]
    assert orthanc.sop_instance_uids() == {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
                                           for f in files}
    assert len(orthanc.instances()) == 12

    # audit: the sender recorded the import and the share; the receiver each forward (110104)
    sent_log = mesh.audit(a)
    assert any(e["action"] == "gateway-store" and e["event_code"] == 110107 for e in sent_log)
    assert len([e for e in sent_log if e["action"] == "share"]) == 2
    recv_log = mesh.audit(b)
    forwards = [e for e in recv_log if e["action"] == "forward"]
    assert forwards and all(e["event_code"] == 110104 and e["outcome"] == 0 for e in forwards)
    assert sum(int(e["detail"].split(" of ")[0]) for e in forwards) == 12
    assert {e["action"] for e in recv_log} >= {"dimse-find", "dimse-get", "dimse-move"}
    assert mesh.ws.run("meshnode", "audit", "verify", "--home", str(b.home)).code == 0


def test_forward_waits_for_a_stopped_pacs_across_restarts(mesh: MeshDemo, orthanc: Orthanc, tmp_path: Path) -> None:
    nodes = mesh.setup(ORGS, start=False)
    a, b = nodes["a"], nodes["b"]
    enable_gateway(mesh, a, sender_config().replace(f"quiet_period_seconds = {QUIET_S}", "quiet_period_seconds = 3"))
    enable_gateway(mesh, b, receiver_config(orthanc, free_tcp_port()))
    mesh.start(a)
    mesh.start(b)  # Orthanc is not running yet
    files = synthetic.generate_ct_study(tmp_path / "ct", slices=8, seed=42, rows=128, columns=128)
    _, a_port, _ = dimse_endpoint(a.home)
    sent = storescu(a_port, MODALITY, "MESH_RJ1", files[0].parent)
    assert sent.code == 0, sent.output
    # a restarts within the quiet period: the pending announcement survives it
    assert mesh.stop(a) == 0
    pending = json.loads(mesh.ws.run("meshnode", "studies", "--json", "--home", str(a.home)).stdout)
    assert [s["instances"] for s in pending] == [8]
    mesh.start(a)

    def waiting() -> dict[str, Any] | None:
        rows = inbox(mesh, b)
        main = rows[0].get("forward", {}).get("main") if rows else None
        return rows[0] if main and main["state"] == "forwarding" and main["last_error"] else None

    row = mesh.wait_for(waiting, 120, "b to have the study and fail to reach the PACS")
    assert row["state"] == "receipted" and row["forward"]["main"]["sent"] == 0
    # b restarts while the forward is pending: the queue survives it
    assert mesh.stop(b) == 0
    mesh.start(b)
    orthanc.start()
    mesh.wait_for(lambda: forwarded(mesh, b, 1), 120, "the forward to complete once Orthanc is up")
    assert sorted(dataset_bytes(orthanc.instance_file(i)) for i in orthanc.instances()) == datasets(files[0].parent)
    status = mesh.cli(b, "gateway")
    assert status["forward"]["main"]["items"] == {"sent": 8} and status["forward"]["main"]["unreachable"] == ""
