"""DICOMweb against a real node process, checked with a real client (dicomweb-client from PyPI).

QIDO-RS searches, WADO-RS retrieval (byte-exact) and metadata, authentication
and roles, the audit trail of every access, /metrics and /health.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from prometheus_client.parser import text_string_to_metric_families

from meshnode.web.multipart import MultipartParser, PartData, PartStarted, content_type_params
from tests.e2e.web import add_user, enable_http, http_url, study_files
from meshnode.demo.identity import Node
from meshnode.demo.mesh import MeshDemo
from meshnode.demo.workspace import Workspace

pytestmark = [pytest.mark.e2e]

STUDY_UID_TAG = "0020000D"


@dataclass
class Site:
    mesh: MeshDemo
    node: Node
    url: str
    token: str  # read + audit
    writer: str  # write only
    studies: dict[str, list[Path]]  # name -> files
    uids: dict[str, str]  # name -> StudyInstanceUID
    systemd: socket.socket  # where the node sends its sd_notify messages

    def client(self, token: str | None = None) -> DICOMwebClient:
        headers = {"Authorization": f"Bearer {token or self.token}"} if token != "" else {}
        return DICOMwebClient(self.url + "/dicomweb", headers=headers)

    def get(self, path: str, token: str | None = None, **kw: object) -> requests.Response:
        headers = dict(kw.pop("headers", {}) or {})  # type: ignore[call-overload]
        if token != "":
            headers["Authorization"] = f"Bearer {token or self.token}"
        return requests.get(self.url + path, headers=headers, timeout=30, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("dicomweb")
    mesh = MeshDemo(Workspace(root))
    try:
        node = mesh.setup([("a", "RGT", "Org A")], start=False)["a"]
        enable_http(node)
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(root / "notify.sock"))
        notify.settimeout(30)
        mesh.ws.env.update(NOTIFY_SOCKET=str(root / "notify.sock"), WATCHDOG_USEC="1000000")
        mesh.start(node)
        studies = {
            "ct1": study_files(root, "ct1", slices=12, seed=11, patient_id="P1", patient_name="DOE^JANE",
                               study_date="20250110"),
            "dx": study_files(root, "dx", slices=2, seed=12, patient_id="P2", patient_name="SMITH^JOHN",
                              study_date="20250320", rows=256, columns=256, dx=True),
            "ct2": study_files(root, "ct2", slices=5, seed=13, patient_id="P1", patient_name="DOE^JANE",
                               study_date="20250601"),
        }
        uids = {}
        for name, files in studies.items():
            mesh.cli(node, "ingest", str(files[0].parent), "--no-progress")
            uids[name] = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        token = add_user(mesh, node, "alice", "read", "audit")
        writer = add_user(mesh, node, "modality", "write")
        yield Site(mesh, node, http_url(node), token, writer, studies, uids, notify)
    finally:
        mesh.close()
        notify.close()


def study_uids(results: list[dict[str, dict[str, object]]]) -> list[str]:
    return [str(r[STUDY_UID_TAG]["Value"][0]) for r in results]  # type: ignore[index]


def test_qido_searches(site: Site) -> None:
    c, u = site.client(), site.uids
    assert study_uids(c.search_for_studies()) == [u["ct2"], u["dx"], u["ct1"]]  # newest first
    assert set(study_uids(c.search_for_studies(search_filters={"PatientID": "P1"}))) == {u["ct1"], u["ct2"]}
    assert study_uids(c.search_for_studies(search_filters={"StudyDate": "20250101-20250331"})) == [u["dx"], u["ct1"]]
    assert study_uids(c.search_for_studies(search_filters={"StudyDate": "20250401-"})) == [u["ct2"]]
    assert study_uids(c.search_for_studies(search_filters={"ModalitiesInStudy": "DX"})) == [u["dx"]]
    accession = str(pydicom.dcmread(site.studies["ct1"][0], stop_before_pixels=True).AccessionNumber)
    assert study_uids(c.search_for_studies(search_filters={"AccessionNumber": accession})) == [u["ct1"]]
    assert set(study_uids(c.search_for_studies(search_filters={"PatientName": "doe*"}))) == {u["ct1"], u["ct2"]}
    assert study_uids(c.search_for_studies(limit=1, offset=1)) == [u["dx"]]
    assert c.search_for_studies(search_filters={"PatientID": "nobody"}) == []
    # a page cut short says so
    response = site.get("/dicomweb/studies?limit=1")
    assert response.status_code == 200 and "additional results" in response.headers["warning"]
    # default study attributes, and includefield for one the index does not hold
    [study] = c.search_for_studies(search_filters={"StudyInstanceUID": u["ct1"]}, fields=["InstitutionName"])
    assert study["00201208"]["Value"] == [12] and study["00080061"]["Value"] == ["CT"]
    assert study["00100010"]["Value"] == [{"Alphabetic": "DOE^JANE"}]
    assert study["00080080"]["Value"] == ["SYNTHETIC HOSPITAL"]
    [series] = c.search_for_series(study_instance_uid=u["ct1"])
    assert series["00201209"]["Value"] == [12] and series["00080060"]["Value"] == ["CT"]
    series_uid = series["0020000E"]["Value"][0]
    instances = c.search_for_instances(study_instance_uid=u["ct1"], series_instance_uid=series_uid)
    expected = sorted(str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in site.studies["ct1"])
    assert sorted(i["00080018"]["Value"][0] for i in instances) == expected
    [one] = c.search_for_instances(study_instance_uid=u["ct1"], search_filters={"InstanceNumber": "3"},
                                   fields=["all"])
    assert one["00200013"]["Value"] == [3] and "00280030" in one  # PixelSpacing came from the header
    assert len(c.search_for_series(search_filters={"Modality": "DX"})) == 1


def test_wado_retrieval_is_byte_exact(site: Site) -> None:
    c, u = site.client(), site.uids
    originals = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in site.studies["ct1"]}
    retrieved = c.retrieve_study(u["ct1"])
    assert sorted(str(ds.SOPInstanceUID) for ds in retrieved) == sorted(originals)
    for ds in retrieved[:3]:
        original = pydicom.dcmread(originals[str(ds.SOPInstanceUID)])
        assert ds == original and ds.PixelData == original.PixelData
    sop, path = next(iter(originals.items()))
    series = str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)
    instance = c.retrieve_instance(u["ct1"], series, sop)
    assert instance == pydicom.dcmread(path)
    # the raw multipart body carries exactly the stored bytes
    raw = site.get(f"/dicomweb/studies/{u['ct1']}/series/{series}/instances/{sop}",
                   headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert raw.status_code == 200 and int(raw.headers["content-length"]) == len(raw.content)
    _, params = content_type_params(raw.headers["content-type"])
    parser = MultipartParser(params["boundary"].encode(), max_part_bytes=1 << 26, max_parts=10)
    events = parser.feed(raw.content) + parser.close()
    assert [e for e in events if isinstance(e, PartStarted)][0].headers["content-type"].startswith("application/dicom")
    assert b"".join(e.data for e in events if isinstance(e, PartData)) == path.read_bytes()
    # a whole series, and a transfer syntax this node does not hold the study in
    assert len(c.retrieve_series(u["ct1"], series)) == 12
    with pytest.raises(requests.HTTPError) as refused:
        c.retrieve_instance(u["ct1"], series, sop, media_types=(("application/dicom", "1.2.840.10008.1.2.4.50"),))
    assert refused.value.response.status_code == 406
    assert site.get(f"/dicomweb/studies/{u['ct1']}/series/{series}/instances/1.2.3.4").status_code == 404
    assert site.get("/dicomweb/studies/1.2.3.4").status_code == 404


def test_wado_metadata(site: Site) -> None:
    c, u = site.client(), site.uids
    path = site.studies["dx"][0]
    original = pydicom.dcmread(path, stop_before_pixels=True)
    meta = c.retrieve_instance_metadata(u["dx"], str(original.SeriesInstanceUID), str(original.SOPInstanceUID))
    assert meta == original.to_json_dict(bulk_data_threshold=1 << 30, bulk_data_element_handler=None)
    assert "7FE00010" not in meta
    assert len(c.retrieve_study_metadata(u["ct2"])) == 5
    response = site.get(f"/dicomweb/studies/{u['ct2']}/metadata", headers={"Accept": "image/png"})
    assert response.status_code == 406


def test_unauthenticated_and_unauthorised_refused(site: Site) -> None:
    u = site.uids
    for path in ("/dicomweb/studies", f"/dicomweb/studies/{u['ct1']}", f"/dicomweb/studies/{u['ct1']}/metadata"):
        response = site.get(path, token="")
        assert response.status_code == 401 and "bearer" in response.headers["www-authenticate"].lower()
        assert site.get(path, token="mnt_not-a-real-token").status_code == 401
    with pytest.raises(requests.HTTPError) as err:
        site.client(token="").search_for_studies()
    assert err.value.response.status_code == 401
    assert site.get("/dicomweb/studies", token=site.writer).status_code == 403  # write role only
    # Basic auth with the token as password works too (viewers that only speak Basic)
    assert requests.get(site.url + "/dicomweb/studies", auth=("alice", site.token), timeout=30).status_code == 200
    # a revoked token stops working on the running node within seconds
    spare = site.mesh.cli(site.node, "users", "token", "alice", "--label", "spare")
    assert site.get("/dicomweb/studies", token=spare["token"]).status_code == 200
    site.mesh.cli(site.node, "users", "revoke", spare["token_id"])
    site.mesh.wait_for(lambda: site.get("/dicomweb/studies", token=spare["token"]).status_code == 401, 15,
                       "the revocation to take effect")
    # the UI's public status pages never carry patient identifiers
    inbox = requests.get(site.url + "/ui/api/session", timeout=30).json()
    assert inbox["user"] is None


def test_bad_queries_get_clear_errors(site: Site) -> None:
    for query, why in (("StudyDate=2025-01-01-x", "StudyDate"), ("StudyInstanceUID=not.a-uid", "UID"),
                       ("NoSuchKeyword=1", "unknown query key"), ("limit=many", "limit"),
                       ("includefield=Nonsense", "includefield"), ("Modality=CT", "not a study-level")):
        response = site.get(f"/dicomweb/studies?{query}")
        assert response.status_code == 400, query
        assert why in response.json()["message"], (query, response.json())
    assert requests.post(site.url + "/dicomweb/studies/1.2.3/metadata", timeout=30).status_code == 405
    assert site.get("/dicomweb/nothing-here").status_code == 404
    ignored = site.get("/dicomweb/studies?ReferringPhysicianName=X")
    assert ignored.status_code == 200 and "ReferringPhysicianName" in ignored.headers["warning"]


def test_every_access_is_audited(site: Site) -> None:
    c, u = site.client(), site.uids
    c.search_for_studies(search_filters={"PatientID": "P2"})
    c.retrieve_study(u["dx"])
    c.retrieve_study_metadata(u["dx"])
    site.get("/dicomweb/studies", token="mnt_wrong")
    log = site.mesh.audit(site.node)
    by_action = {e["action"]: e for e in log}
    assert by_action["qido-study"]["event_code"] == 110112 and by_action["qido-study"]["actor"] == "user:alice"
    retrieve = [e for e in log if e["action"] == "wado-retrieve"]
    assert retrieve and all(e["event_code"] == 110103 and e["actor"] == "user:alice" for e in retrieve)
    assert any("2 instance(s)" in e["detail"] for e in retrieve)
    assert by_action["wado-metadata"]["event_code"] == 110103
    failures = [e for e in log if e["action"] == "http-auth-failed"]
    assert failures and all(e["event_code"] == 110114 and e["outcome"] == 4 for e in failures)
    assert not any("DOE" in json.dumps(e) or "P1" == e["detail"] for e in log)  # no patient data in the log
    assert site.mesh.ws.run("meshnode", "audit", "verify", "--home", str(site.node.home)).code == 0


def test_metrics_and_health(site: Site) -> None:
    site.client().search_for_studies()
    text = requests.get(site.url + "/metrics", timeout=30).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    chain = families["meshnode_audit_chain_length"].samples[0].value
    assert chain > 0
    assert families["meshnode_studies"].samples[0].value >= 3
    own = [s for s in families["meshnode_certificate_expiry_timestamp_seconds"].samples if s.labels["kind"] == "own"]
    assert own and own[0].labels["org"] == "RGT" and own[0].value > time.time()
    assert families["meshnode_roster_age_seconds"].samples[0].value >= 0
    requests_total = {(s.labels["route"], s.labels["status"]): s.value
                      for s in families["meshnode_http_requests"].samples if s.name.endswith("_total")}
    assert requests_total[("qido-studies", "200")] >= 1
    assert "P1" not in text and "DOE" not in text
    health = requests.get(site.url + "/health", timeout=30)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert set(health.json()["checks"]) >= {"database", "roster", "certificate", "disk_free_bytes"}
    assert requests.get(site.url + "/health/live", timeout=30).json() == {"status": "alive"}


def test_systemd_ready_and_watchdog(site: Site) -> None:
    messages = set()
    while not {"READY=1", "WATCHDOG=1"} <= messages:
        messages.add(site.systemd.recv(4096).decode())  # bounded by the socket's 30 s timeout


def test_stow_through_the_node(site: Site) -> None:
    """STOW-RS into the running node's intake: stored, then found and retrieved; broken uploads store nothing."""
    files = study_files(site.node.home.parent, "stow", slices=3, seed=21, patient_id="P9", patient_name="STOW^ME",
                        study_date="20250701")
    datasets = [pydicom.dcmread(f) for f in files]
    study = str(datasets[0].StudyInstanceUID)
    before = len(site.client().search_for_studies())
    body = b"--x\r\nContent-Type: application/dicom\r\n\r\n" + files[0].read_bytes()  # never closed
    broken = requests.post(site.url + "/dicomweb/studies", data=body, timeout=30,
                           headers={"Authorization": f"Bearer {site.writer}",
                                    "Content-Type": 'multipart/related; type="application/dicom"; boundary=x'})
    assert broken.status_code == 400 and "ended early" in broken.json()["message"]
    assert len(site.client().search_for_studies()) == before
    result = site.client(site.writer).store_instances(datasets, study_instance_uid=study)
    assert len(result.ReferencedSOPSequence) == 3
    assert study_uids(site.client().search_for_studies(search_filters={"PatientID": "P9"})) == [study]
    back = site.client().retrieve_study(study)
    assert sorted(str(d.SOPInstanceUID) for d in back) == sorted(str(d.SOPInstanceUID) for d in datasets)
    with pytest.raises(requests.HTTPError) as refused:
        site.client().store_instances(datasets)  # read role: may not store
    assert refused.value.response.status_code == 403
    log = site.mesh.audit(site.node)
    assert any(e["action"] == "stow-refused" and e["event_code"] == 110107 for e in log)
    assert any(e["action"] == "gateway-store" and e["actor"].startswith("stow:modality@") for e in log)
