"""Study requests and prior queries between real node processes (authority, directory, two organisations):
the requester asks for priors and requests them, the holder's PACS team approves with the CLI, the study
arrives (the requester's inbox and the holder's outbox name the request it answers); and the holder's policy
auto-approves an urgent care request from a named organisation."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from meshnode.demo.identity import Node
from meshnode.demo.mesh import MeshDemo
from meshnode.dicom import synthetic

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ORGS = [("a", "RGT", "Org A"), ("b", "RJ1", "Org B")]
NHS = "9434765919"


def ingest_patient_study(mesh: MeshDemo, node: Node, seed: int, patient_id: str = NHS) -> str:
    """A small CT study of the patient whose Patient ID is their NHS number (as many trusts file them)."""
    files = synthetic.generate_ct_study(mesh.ws.root / f"study-{seed}", slices=4, rows=64, columns=64, seed=seed,
                                        patient_id=patient_id)
    mesh.cli(node, "ingest", str(files[0].parent), "--no-progress")
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def request_state(mesh: MeshDemo, node: Node, request_id: str) -> str:
    return str(mesh.cli(node, "request", "show", request_id)["state"])


def arrived(mesh: MeshDemo, node: Node, manifest: str) -> bool:
    entry = mesh.inbox_entry(node, manifest)
    return entry is not None and entry["state"] in ("complete", "receipted")


def append_config(node: Node, text: str) -> None:
    path = Path(node.home) / "node.toml"
    path.write_text(path.read_text() + "\n" + text)


def test_priors_then_request_approved_by_the_holder_arrive(mesh: MeshDemo) -> None:
    nodes = mesh.setup(ORGS, start=False)
    a, b = nodes["a"], nodes["b"]
    append_config(b, '[prior_query]\nallow = ["RGT"]\n')
    mesh.start(a)
    mesh.start(b)
    study = ingest_patient_study(mesh, b, 3)
    ingest_patient_study(mesh, b, 4, patient_id="SOMEONE-ELSE")
    priors = mesh.cli(a, "priors", "RJ1", "--nhs", NHS)
    assert [s["study_uid"] for s in priors["studies"]] == [study]
    assert set(priors["studies"][0]) == {"study_uid", "study_date", "modalities", "description", "series",
                                         "instances"}
    # B refuses A's priors to anyone else: B asking A is refused (A names nobody)
    refused = mesh.ws.run("meshnode", "priors", "RGT", "--nhs", NHS, "--home", str(b.home), check=False)
    assert refused.code != 0 and "unauthorised" in (refused.stdout + refused.stderr)

    sent = mesh.cli(a, "request", "send", "RJ1", "--nhs", NHS, "--reason", "MDT review", "--priority", "urgent")
    request_id = sent["request_id"]
    assert sent["state"] == "pending"
    incoming = mesh.wait_for(lambda: mesh.cli(b, "request", "list", "--direction", "incoming"), 30, "the request")
    assert [r["request_id"] for r in incoming] == [request_id] and incoming[0]["state"] == "pending"
    shown = mesh.cli(b, "request", "show", request_id)
    assert [s["study_uid"] for s in shown["matching"]] == [study]  # the other patient's study is not offered
    approved = mesh.cli(b, "request", "approve", request_id, "--study", study)
    [manifest] = approved["manifests"]
    mesh.wait_for(lambda: request_state(mesh, a, request_id) == "approved", 30, "the approval at the requester")
    mesh.wait_for(lambda: arrived(mesh, a, manifest), 60, "the study at the requester")
    assert any(s["study_uid"] == study for s in mesh.cli(a, "studies"))
    # both inboxes link the study to the request it answers
    assert mesh.inbox_entry(a, manifest)["request"] == request_id  # type: ignore[index]
    assert next(r for r in mesh.cli(b, "outbox") if r["manifest_id"] == manifest)["request"] == request_id
    for node, actions in ((a, {"study-request-sent", "study-request-approved", "prior-query-sent"}),
                          (b, {"study-request-received", "study-request-approved", "prior-query-answered"})):
        assert actions <= {e["action"] for e in mesh.audit(node)}


def test_a_policy_auto_approves_an_urgent_care_request(mesh: MeshDemo) -> None:
    nodes = mesh.setup(ORGS, start=False)
    a, b = nodes["a"], nodes["b"]
    append_config(b, '[[request_policy]]\nfrom = ["RGT"]\npriority = ["urgent", "stat"]\npurpose = ["care"]\n'
                     'action = "auto-approve"\n')
    mesh.start(a)
    mesh.start(b)
    study = ingest_patient_study(mesh, b, 5)
    routine = mesh.cli(a, "request", "send", "RJ1", "--nhs", NHS, "--reason", "clinic", "--priority", "routine")
    urgent = mesh.cli(a, "request", "send", "RJ1", "--nhs", NHS, "--reason", "stroke", "--priority", "urgent")
    mesh.wait_for(lambda: request_state(mesh, a, urgent["request_id"]) == "approved", 30, "the auto-approval")
    shown = mesh.cli(a, "request", "show", urgent["request_id"])
    assert shown["decided_by"].startswith("policy:")
    mesh.wait_for(lambda: arrived(mesh, a, shown["manifests"][0]), 60, "the study at the requester")
    assert any(s["study_uid"] == study for s in mesh.cli(a, "studies"))
    assert request_state(mesh, a, routine["request_id"]) == "pending"  # not matched: waits for a human
