"""Same SOP Instance UID, other bytes, end to end: dcmtk storescu into node a's DIMSE gateway, node b (RJ1)
receiving and forwarding into a real Orthanc as its PACS.

A study of two instances goes through once; then the modality sends instance 1 again with the same UIDs and
other bytes. Per the sending route's on_conflict:

- reject (the default): the newcomer waits in a's conflict queue; C-FIND at a still finds one instance for the
  UID, nothing is announced, and b's Orthanc keeps the original;
- replace: revision 2 carries the new bytes only; b's [[pacs]] on_replace = "overwrite" sends them into an
  Orthanc configured with OverwriteInstances, which ends up with the new bytes (its files compared);
  with on_replace = "hold" and Orthanc's default (it keeps the old version), b holds the new version as a
  conflict and its inbox says "held", not "forwarded";
- keep-both: the newcomer is renamed (2.25.<uuid>); Orthanc ends up with both, under two UIDs.
"""

from __future__ import annotations

import getpass
import hashlib
import io
from pathlib import Path
from typing import Any

import pydicom
import pytest

from meshnode.control.client import ControlClient
from meshnode.demo.identity import Node
from meshnode.demo.mesh import MeshDemo
from meshnode.dicom import synthetic
from tests.e2e.dimse_tools import (
    dataset_bytes,
    dimse_endpoint,
    find_answers,
    findscu,
    storescu,
)
from tests.e2e.orthanc import PACS_AE, Orthanc
from tests.e2e.test_gateway import (  # the same two orgs, modality and reader
    MODALITY,
    ORGS,
    QUIET_S,
    READER,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TIMEOUT = 120


def setup(mesh: MeshDemo, tmp_path: Path, on_conflict: str, on_replace: str, overwrite: bool,
          preload: Path | None = None) -> tuple[Node, Node, Orthanc]:
    """a (RGT) takes a modality's studies on route rj1 to RJ1; b (RJ1) forwards to Orthanc; `preload`: a
    folder b ingests (`meshnode ingest`) before it starts."""
    if not Orthanc.available():
        pytest.fail("Orthanc is not installed (make test installs it: scripts/install-system-deps.sh)")
    nodes = mesh.setup(ORGS, start=False)
    a, b = nodes["a"], nodes["b"]
    orthanc = Orthanc(tmp_path / "orthanc", ae_title=PACS_AE, overwrite=overwrite)
    orthanc.start()
    for node, extra in (
        (a, f'\n[[caller]]\nae_title = "{MODALITY}"\nhosts = ["127.0.0.1"]\nallow = ["store"]\n'
            f'\n[[caller]]\nae_title = "{READER}"\nallow = ["find"]\n'
            f'\n[[route]]\nname = "rj1"\ncalled_ae = "MESH_RJ1"\nto = ["RJ1"]\npriority = "urgent"\n'
            f'quiet_period_seconds = {QUIET_S}\non_conflict = "{on_conflict}"\n'),
        (b, f'\n[[pacs]]\nname = "main"\nae_title = "{PACS_AE}"\nhost = "127.0.0.1"\nport = {orthanc.dicom_port}\n'
            f'retry_max_seconds = 2\non_replace = "{on_replace}"\n'),
    ):
        mesh.configure(node, {"dimse.enabled": True, "dimse.port": 0})
        with open(node.home / "node.toml", "a") as fh:
            fh.write(extra)
        if node is b and preload is not None:
            mesh.ws.run("meshnode", "ingest", str(preload), "--home", str(b.home), "--workers", "1", "--no-progress")
        mesh.start(node)
    return a, b, orthanc


def inbox(b: Node) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = ControlClient(b.home).call("GET", "/inbox")
    return rows


def forward_state(b: Node, revision: int) -> dict[str, Any] | None:
    for row in inbox(b):
        main = row.get("forward", {}).get("main")
        if row["revision"] == revision and row["state"] == "receipted" and main and main["state"] != "forwarding" \
                and main["state"] != "waiting-for-receipt":
            return dict(main)
    return None


def conflicts(node: Node, state: str = "all") -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = ControlClient(node.home).call("POST", "/conflicts", {"state": state})
    return rows


def send_study(tmp_path: Path, a: Node) -> tuple[list[Path], Path]:
    files = synthetic.generate_ct_study(tmp_path / "ct", slices=2, seed=51, rows=64, columns=64)
    ds = pydicom.dcmread(files[0])
    ds.SeriesDescription = "CORRECTED"
    pixels = bytearray(ds.PixelData)
    pixels[0] ^= 0xFF
    ds.PixelData = bytes(pixels)
    newcomer = tmp_path / "again" / files[0].name
    newcomer.parent.mkdir()
    ds.save_as(newcomer, enforce_file_format=True)
    _, port, _ = dimse_endpoint(a.home)
    sent = storescu(port, MODALITY, "MESH_RJ1", files[0].parent)
    assert sent.code == 0, sent.output
    return files, newcomer


def pacs_files(orthanc: Orthanc) -> dict[str, bytes]:
    out = {}
    for i in orthanc.instances():
        data = orthanc.instance_file(i)
        out[str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)] = dataset_bytes(data)
    return out


def announcer_idle(a: Node) -> bool:
    return not ControlClient(a.home).call("GET", "/gateway")["pending_announcements"]


def test_reject_holds_the_newcomer_and_orthanc_keeps_the_original(mesh: MeshDemo, tmp_path: Path) -> None:
    a, b, orthanc = setup(mesh, tmp_path, "reject", "hold", overwrite=False)
    try:
        files, newcomer = send_study(tmp_path, a)
        mesh.wait_for(lambda: forward_state(b, 1), TIMEOUT, "revision 1 forwarded to Orthanc")
        _, port, ae = dimse_endpoint(a.home)
        again = storescu(port, MODALITY, "MESH_RJ1", newcomer.parent)
        assert again.code == 0, again.output  # durable (held): the modality must not resend it
        [held] = conflicts(a, "pending")
        original = pydicom.dcmread(files[0])
        assert held["sop_instance_uid"] == original.SOPInstanceUID and held["route"] == "rj1"
        assert held["newcomer_sha256"] != held["existing_sha256"]
        status = mesh.cli(a, "gateway")
        assert [c["id"] for c in status["conflicts"]] == [held["id"]] and status["intake"]["held"] == 1
        mesh.wait_for(lambda: announcer_idle(a), TIMEOUT, "a's announcer to settle")
        assert [r["revision"] for r in inbox(b)] == [1]  # nothing announced
        found = findscu(port, READER, ae, ["QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={original.StudyInstanceUID}",
                                           f"SeriesInstanceUID={original.SeriesInstanceUID}",
                                           f"SOPInstanceUID={original.SOPInstanceUID}"])
        assert found.code == 0, found.output
        assert len(find_answers(found.output)) == 1
        assert pacs_files(orthanc)[original.SOPInstanceUID] == dataset_bytes(files[0])
        # the human's decision (CLI, audited with the user): replace; b then holds it (its PACS keeps the old)
        decided = mesh.cli(a, "conflicts", "decide", str(held["id"]), "replace")
        assert decided["state"] == "replaced" and decided["decided_by"] == f"control:{getpass.getuser()}"
        main = mesh.wait_for(lambda: forward_state(b, 2), TIMEOUT, "revision 2 at b")
        assert (main["state"], main["held"], main["sent"], main["total"]) == ("held", 1, 1, 2)
        [at_b] = conflicts(b, "pending")
        assert at_b["kind"] == "pacs:main" and at_b["newcomer_sha256"] == held["newcomer_sha256"]
        assert pacs_files(orthanc)[original.SOPInstanceUID] == dataset_bytes(files[0])
        replay = mesh.ws.run("meshnode", "conflicts", "decide", str(held["id"]), "discard", "--home", str(a.home),
                             check=False)
        assert replay.code != 0 and "decided already" in replay.stderr
    finally:
        orthanc.stop()


def test_replace_overwrites_in_orthanc(mesh: MeshDemo, tmp_path: Path) -> None:
    a, b, orthanc = setup(mesh, tmp_path, "replace", "overwrite", overwrite=True)
    try:
        files, newcomer = send_study(tmp_path, a)
        mesh.wait_for(lambda: forward_state(b, 1), TIMEOUT, "revision 1 forwarded to Orthanc")
        _, port, _ = dimse_endpoint(a.home)
        assert storescu(port, MODALITY, "MESH_RJ1", newcomer.parent).code == 0
        main = mesh.wait_for(lambda: forward_state(b, 2), TIMEOUT, "revision 2 forwarded")
        assert (main["state"], main["sent"], main["total"]) == ("forwarded", 2, 2)
        uid = str(pydicom.dcmread(files[0]).SOPInstanceUID)
        held = pacs_files(orthanc)
        assert len(held) == 2 and held[uid] == dataset_bytes(newcomer)  # Orthanc overwrote it
        assert [c["state"] for c in conflicts(a)] == ["replaced"]
    finally:
        orthanc.stop()


def test_keep_both_arrives_under_two_uids(mesh: MeshDemo, tmp_path: Path) -> None:
    a, b, orthanc = setup(mesh, tmp_path, "keep-both", "hold", overwrite=False)
    try:
        files, newcomer = send_study(tmp_path, a)
        mesh.wait_for(lambda: forward_state(b, 1), TIMEOUT, "revision 1 forwarded to Orthanc")
        _, port, _ = dimse_endpoint(a.home)
        assert storescu(port, MODALITY, "MESH_RJ1", newcomer.parent).code == 0
        main = mesh.wait_for(lambda: forward_state(b, 2), TIMEOUT, "revision 2 forwarded")
        assert (main["state"], main["sent"], main["total"]) == ("forwarded", 3, 3)
        [kept] = conflicts(a)
        assert kept["state"] == "kept-both" and kept["new_uid"].startswith("2.25.")
        held = pacs_files(orthanc)
        uid = str(pydicom.dcmread(files[0]).SOPInstanceUID)
        assert set(held) == {uid, kept["new_uid"], str(pydicom.dcmread(files[1]).SOPInstanceUID)}
        assert held[uid] == dataset_bytes(files[0])
        renamed = pydicom.dcmread(io.BytesIO(orthanc.instance_file(next(
            i for i in orthanc.instances()
            if orthanc.get(f"/instances/{i}/simplified-tags")["SOPInstanceUID"] == kept["new_uid"]))))
        assert renamed.SeriesDescription == "CORRECTED" and renamed.PixelData == pydicom.dcmread(newcomer).PixelData
    finally:
        orthanc.stop()


def test_a_received_instance_never_replaces_one_ingested_here(mesh: MeshDemo, tmp_path: Path) -> None:
    """Review finding 1 with real processes: b holds its own version of an instance (ingested there); a's
    manifest carries another version under the same SOP Instance UID. b fetches and receipts the study,
    holds that instance as a conflict (never a replacement), forwards the rest, and says "held"."""
    files = synthetic.generate_ct_study(tmp_path / "ct", slices=2, seed=52, rows=64, columns=64)
    ds = pydicom.dcmread(files[0])
    pixels = bytearray(ds.PixelData)
    pixels[:8] = b"\x00" * 8 if pixels[:8] != b"\x00" * 8 else b"\xff" * 8
    ds.PixelData = bytes(pixels)
    local = tmp_path / "local" / files[0].name
    local.parent.mkdir()
    ds.save_as(local, enforce_file_format=True)
    a, b, orthanc = setup(mesh, tmp_path, "reject", "hold", overwrite=False, preload=local.parent)
    try:
        _, port, _ = dimse_endpoint(a.home)
        sent = storescu(port, MODALITY, "MESH_RJ1", files[0].parent)
        assert sent.code == 0, sent.output
        main = mesh.wait_for(lambda: forward_state(b, 1), TIMEOUT, "revision 1 received and forwarded at b")
        assert (main["state"], main["held"], main["sent"], main["total"]) == ("held", 1, 1, 2)
        [row] = [r for r in inbox(b) if r["revision"] == 1]
        assert row["state"] == "receipted" and row["held"] == 1 and "not available locally" in row["held_detail"]
        [held] = conflicts(b, "pending")
        assert held["kind"] == "store" and "RGT" in held["source"] and held["manifest_id"] == row["manifest_id"]
        assert held["existing_sha256"] == hashlib.sha256(local.read_bytes()).hexdigest()
        assert held["newcomer_sha256"] != held["existing_sha256"]
        # Orthanc got the other instance only: the held one waits for a person at b
        assert set(pacs_files(orthanc)) == {str(pydicom.dcmread(files[1]).SOPInstanceUID)}
    finally:
        orthanc.stop()
