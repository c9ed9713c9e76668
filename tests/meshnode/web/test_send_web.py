"""The portal's send API against the real ASGI app over a real node's store and its real control handlers
(meshnode.node.control_routes, what `meshnode share|recall|redeliver` call), on an in-process node
(tests/meshnode/node/harness.py). Hostile first: who may do what, CSRF, bad input changes nothing."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
import trio
from PIL import Image

from meshnode.directory.client import DirectoryOrg
from meshnode.directory.orgs import OrgList
from meshnode.dicom import synthetic
from meshnode.node.control_routes import routes as control_routes
from meshnode.storage.audit import EventCode
from meshnode.storage.users import MemoryUserStore
from meshnode.web.app import WebApp
from meshnode.web.auth import SESSION_COOKIE, Authenticator, add_user, issue_token
from meshnode.web.config import HttpConfig
from meshnode.web.node_view import NodeView
from meshnode.web.send_web import SendWeb
from meshnode.web.services import WebServices
from protocol.manifest import Priority, Purpose
from tests.meshnode.node.harness import HarnessNode, MemoryMesh, ingest_study
from tests.meshnode.web.asgi import Reply, call

DIRECTORY = [DirectoryOrg("RGT", "Guy's and St Thomas'"), DirectoryOrg("RXX", "Royal Example Hospital"),
             DirectoryOrg("RTH", "Oxford University Hospitals"), DirectoryOrg("TELE", "Teleradiology Ltd")]
PATIENT_ID = "PORTAL-1"
NHS_NUMBER = "9434765919"


@dataclass
class Portal:
    app: WebApp
    node: HarnessNode
    other: HarnessNode
    study: str
    theirs: str  # a study the other organisation holds
    mesh: MemoryMesh
    tokens: dict[str, str]
    listings: list[int]

    async def request(self, method: str, path: str, user: str = "doc", body: object = None,
                      query: str = "", headers: dict[str, str] | None = None) -> Reply:
        h = {"Authorization": f"Bearer {self.tokens[user]}"} if user else {}
        if body is not None:
            h["Content-Type"] = "application/json"
        return await call(self.app, method, path, headers={**h, **(headers or {})}, query=query,
                          body=json.dumps(body).encode() if body is not None else b"")

    def sent(self) -> list[Any]:
        return self.node.store.manifests("sent")

    def audit(self, action: str) -> list[Any]:
        return [e.event for e in self.node.store.audit_entries() if e.event.action == action]


def _study(root: Path) -> str:
    ct = synthetic.generate_ct_study(root / "ct", slices=3, rows=64, columns=64, seed=5, patient_id=PATIENT_ID,
                                     patient_name="PORTAL^JANE")
    uid = str(pydicom.dcmread(ct[0]).StudyInstanceUID)
    synthetic.generate_compressed(root / "rle", images=2, rows=32, columns=32, seed=6, study_uid=uid,
                                  patient_id=PATIENT_ID, patient_name="PORTAL^JANE", series_number=2)
    # a third series whose pixel data no decoder here reads (declared JPEG 2000, bytes of RLE)
    broken = pydicom.dcmread(sorted((root / "rle").rglob("*.dcm"))[0])
    broken.file_meta.TransferSyntaxUID = pydicom.uid.UID("1.2.840.10008.1.2.4.90")
    broken.SeriesInstanceUID = synthetic.synthetic_uid(7, uid, "broken-series")
    broken.SOPInstanceUID = synthetic.synthetic_uid(7, uid, "broken-instance")
    broken.file_meta.MediaStorageSOPInstanceUID = broken.SOPInstanceUID
    broken.SeriesNumber = 3
    (root / "broken").mkdir()
    broken.save_as(root / "broken" / "x.dcm", enforce_file_format=True)
    return uid


@pytest.fixture
async def portal(tmp_path: Path) -> AsyncIterator[Portal]:
    source = tmp_path / "source"
    study = _study(source)
    ingest_study(tmp_path / "mesh" / "a", source, chunk_size=4096)  # the three series, one study
    synthetic.generate_ct_study(tmp_path / "theirs", slices=1, rows=16, columns=16, seed=77)
    theirs = ingest_study(tmp_path / "mesh" / "b", tmp_path / "theirs", chunk_size=4096)
    mesh = MemoryMesh(tmp_path / "mesh")
    node = mesh.add("a", "RGT", 10)
    other = mesh.add("b", "RXX", 20)
    node.deliveries = node.sender.deliveries  # type: ignore[attr-defined]  # as the runtime's Node has it
    users = MemoryUserStore()
    for name, roles in (("doc", ("clinician",)), ("viewer", ("read",)), ("aud", ("auditor",)),
                        ("pacs", ("pacs",))):
        add_user(users, name, roles, 0)
    tokens = {name: issue_token(users, name, "", 0)[0] for name in ("doc", "viewer", "aud", "pacs")}
    config = HttpConfig(listen="127.0.0.1:0")
    services = WebServices(config, "RGT", node.ctx.storage, node.ctx.db, node.ctx.audit)
    listings: list[int] = []

    async def directory() -> list[DirectoryOrg]:
        listings.append(1)
        return list(DIRECTORY)

    orgs = OrgList(directory, node.ctx.clock, own_org="RGT")
    view = NodeView(node)  # type: ignore[arg-type]  # a harness node has what the outbox reads
    send = SendWeb(services, control_routes(node), orgs, view.outbox)  # type: ignore[arg-type]
    app = WebApp(send.routes(), Authenticator(users), config, node.ctx.audit)
    try:
        async with trio.open_nursery() as nursery:
            await mesh.run(nursery)
            yield Portal(app, node, other, study, theirs, mesh, tokens, listings)
            nursery.cancel_scope.cancel()
    finally:
        mesh.close()


def share_body(study: str, **extra: object) -> dict[str, object]:
    return {"study": study, "to": ["RXX"], "priority": "urgent", "purpose": "care", **extra}


# -- who may ------------------------------------------------------------------------------------------
async def test_without_send_permission_nothing_is_shared_or_recalled(portal: Portal) -> None:
    for user in ("viewer", "aud"):
        r = await portal.request("POST", "/ui/api/send/share", user, share_body(portal.study))
        assert r.status == 403, r.body
        assert (await portal.request("POST", "/ui/api/send/recall", user,
                                     {"manifest": "bafkreigh2akiscaildc", "reason": "x"})).status == 403
    assert (await portal.request("POST", "/ui/api/send/share", "", share_body(portal.study))).status == 401
    assert (await portal.request("GET", "/ui/api/send/studies", "aud")).status == 403  # identifiers need read
    assert (await portal.request("GET", "/ui/api/send/orgs", "viewer")).status == 403
    assert portal.sent() == []
    denied = [e for e in portal.node.store.audit_entries() if e.event.action == "http-forbidden"]
    assert {e.event.actor for e in denied} >= {"user:viewer", "user:aud"}


async def test_session_post_without_its_csrf_token_shares_nothing(portal: Portal) -> None:
    principal = await portal.app.auth.token(portal.tokens["doc"])
    assert principal is not None
    session = portal.app.auth.open_session(principal, hours=1)
    cookie = {"Cookie": f"{SESSION_COOKIE}={session}", "Content-Type": "application/json"}
    raw = json.dumps(share_body(portal.study)).encode()
    for wrong in ({}, {"X-CSRF-Token": "forged"}):
        r = await call(portal.app, "POST", "/ui/api/send/share", headers={**cookie, **wrong}, body=raw)
        assert r.status == 403 and r.json()["error"] == "csrf"
        for path, value in (("recall", {"manifest": "x", "reason": "y"}), ("redeliver", {})):
            r = await call(portal.app, "POST", f"/ui/api/send/{path}", headers={**cookie, **wrong},
                           body=json.dumps(value).encode())
            assert r.status == 403 and r.json()["error"] == "csrf", path
    assert portal.sent() == []
    # the same request with the session's token goes through: the refusal was the token's
    r = await call(portal.app, "POST", "/ui/api/send/share",
                   headers={**cookie, "X-CSRF-Token": portal.app.auth.csrf(session) or ""}, body=raw)
    assert r.status == 200, r.body
    assert len(portal.sent()) == 1


BAD_SHARES: list[tuple[str, dict[str, object], str]] = [
    ("unknown org", {"to": ["RZZ"]}, "unknown organisation RZZ"),
    ("own org", {"to": ["RGT"]}, "unknown organisation RGT"),
    ("org injection", {"to": ["RXX'; DROP TABLE manifests;--"]}, "not an organisation code"),
    ("org not text", {"to": [{"code": "RXX"}]}, "not an organisation code"),
    ("no recipients", {"to": []}, "'to' must list"),
    ("too many recipients", {"to": ["RXX"] * 21}, "'to' must list"),
    ("malformed study", {"study": "1.2.3' OR '1'='1"}, "not a DICOM UID"),
    ("study too long", {"study": "1." * 40 + "1"}, "not a DICOM UID"),
    ("unknown priority", {"priority": "asap"}, "priority must be one of"),
    ("unknown purpose", {"purpose": "marketing"}, "purpose must be one of"),
    ("unknown field", {"note2": "x"}, "unknown field"),
    ("lifetime not a number", {"lifetime_days": "30"}, "lifetime_days"),
    ("lifetime too long", {"lifetime_days": 10_000}, "lifetime_days"),
    ("research without deid", {"purpose": "research"}, "deid"),
    ("bad deid option", {"deid": {"project": "p", "rm -rf": True}}, "deid"),
    ("origin injection", {"origin": "<script>alert(1)</script>"}, "origin"),
    ("oversized note", {"note": "x" * 1001}, "note: 1001 characters, limit 1000"),
    ("note with a bidi override", {"note": "pay \u202egnp.exe"}, "note: only printable"),
    ("note with CR", {"note": "one\rBcc: all@example.org"}, "note: only printable"),
    ("attention header injection", {"attention": "dr x\nBcc: all@example.org"}, "attention: only printable"),
    ("attention too long", {"attention": "a" * 129}, "attention"),
    ("attention not text", {"attention": ["dr x"]}, "'attention' must be text"),
    ("note on a research share", {"purpose": "research", "deid": {"project": "p"}, "note": "hi"},
     "carries no 'attention' or 'note'"),
]


async def test_bad_share_is_a_clear_400_and_shares_nothing(portal: Portal) -> None:
    for what, change, message in BAD_SHARES:  # one node for all (each case must leave it as it was)
        r = await portal.request("POST", "/ui/api/send/share", "doc", {**share_body(portal.study), **change})
        assert r.status == 400, (what, r.status, r.body)
        assert message in r.json()["message"], (what, r.json())
        assert portal.sent() == [], what
        assert portal.audit("portal-share") == [] and portal.audit("share") == [], what


async def test_unknown_study_and_non_json_bodies_share_nothing(portal: Portal) -> None:
    assert (await portal.request("POST", "/ui/api/send/share", "doc",
                                 share_body("1.2.3.4.5"))).status == 404
    r = await call(portal.app, "POST", "/ui/api/send/share", body=b"{not json",
                   headers={"Authorization": f"Bearer {portal.tokens['doc']}"})
    assert r.status == 400 and "JSON" in r.json()["message"]
    r = await call(portal.app, "POST", "/ui/api/send/share", body=b"x" * 20000,
                   headers={"Authorization": f"Bearer {portal.tokens['doc']}"})
    assert r.status == 413
    assert portal.sent() == []


# -- find ---------------------------------------------------------------------------------------------
async def test_search_by_each_field_and_hostile_values(portal: Portal) -> None:
    async def found(q: str) -> list[str]:
        r = await portal.request("GET", "/ui/api/send/studies", "doc", query=q)
        assert r.status == 200, r.body
        return [s["study_uid"] for s in r.json()["studies"]]

    study = portal.study
    assert await found(f"patient_id={PATIENT_ID}") == [study]
    assert await found("name=portal") == [study]  # a name's start, case ignored
    assert await found("name=nobody") == []
    assert await found("modality=ct&date_from=1900-01-01&date_to=2999-12-31") == [study]
    assert await found("modality=MR") == []
    assert await found("date_to=1900-01-01") == []
    for bad in ("patient_id=*", "name=P%3F%3F", "name=a%5Cb", "accession=%00", "date_from=yesterday",
                "date_from=2025-02-01&date_to=2025-01-01", "modality=CT'--", "nhs_number=1234567890",
                "sort=name", "patient_id=" + "x" * 65, f"nhs_number={NHS_NUMBER}&patient_id=x"):
        r = await portal.request("GET", "/ui/api/send/studies", "doc", query=bad)
        assert r.status == 400, (bad, r.body)
    # the NHS number as a patient ID, or through the lookup table's local ID
    assert await found(f"nhs_number={NHS_NUMBER}") == []
    from meshnode.storage.patients import PatientRecord
    portal.node.store.put_patients([PatientRecord(PATIENT_ID, "RGT", NHS_NUMBER)])
    assert await found("nhs_number=943+476+5919") == [study]
    searches = portal.audit("portal-study-search")
    assert searches and all(e.actor == "user:doc" and e.code == EventCode.INSTANCES_ACCESSED for e in searches)


async def test_series_counts_and_thumbnails(portal: Portal) -> None:
    r = await portal.request("GET", f"/ui/api/send/studies/{portal.study}/series")
    assert r.status == 200, r.body
    body = r.json()
    assert body["viewer"] == f"/ui/viewer?study={portal.study}"
    assert [(s["number"], s["instances"]) for s in body["series"]] == [(1, 3), (2, 2), (3, 1)]
    ct, rle, broken = body["series"]
    for series in (ct, rle):
        png = await portal.request("GET", series["thumbnail"])
        assert png.status == 200 and png.headers["content-type"] == "image/png"
        image = Image.open(io.BytesIO(png.body))
        assert max(image.size) <= 128 and image.getextrema() != (0, 0)  # rendered, not blank
    r = await portal.request("GET", broken["thumbnail"])
    assert r.status == 422 and r.json()["message"].startswith("no thumbnail")
    assert (await portal.request("GET", broken["thumbnail"])).status == 422  # cached: not decoded again
    assert len(portal.audit("portal-thumbnail")) == 4
    assert portal.audit("portal-series-view")[0].actor == "user:doc"
    for path in (f"/ui/api/send/studies/{portal.study}x/series", "/ui/api/send/studies/1.2.3/series",
                 f"/ui/api/send/studies/{portal.study}/series/9.9/thumbnail.png"):
        assert (await portal.request("GET", path)).status in (400, 404), path
    assert (await portal.request("GET", f"/ui/api/send/studies/{portal.study}/series", "aud")).status == 403


async def test_organisation_type_ahead(portal: Portal) -> None:
    async def orgs(q: str) -> list[str]:
        r = await portal.request("GET", "/ui/api/send/orgs", query=q)
        assert r.status == 200, r.body
        return [o["code"] for o in r.json()]

    assert await orgs("q=R") == ["RTH", "RXX", "TELE"]  # codes first, then names; own organisation left out
    assert await orgs("q=oxford") == ["RTH"]
    assert await orgs("q=hosp") == ["RTH", "RXX"]
    assert await orgs("q=%3Cscript%3E") == []
    assert (await portal.request("GET", "/ui/api/send/orgs", query="q=%00")).status == 400
    assert len(portal.listings) == 1  # the directory is asked once, not per key


# -- share, follow, recall ----------------------------------------------------------------------------
async def test_share_follow_and_recall_call_the_control_api(portal: Portal) -> None:
    r = await portal.request("POST", "/ui/api/send/share", "doc",
                             share_body(portal.study, to=["RXX", "RTH", "RXX"], lifetime_days=7,
                                        attention="dr.who@rxx.example", note="Trauma CT.\nPlease review."))
    assert r.status == 200, r.body
    manifest = r.json()["manifest_id"]
    [row] = portal.sent()
    assert str(row.manifest_id) == manifest and sorted(row.recipients) == ["RTH", "RXX"]
    signed = portal.node.ctx.manifests.open(row.manifest_id, row.raw).document
    assert signed.priority is Priority.URGENT and signed.purpose is Purpose.CARE
    assert signed.expires_at - signed.created_at == 7 * 86400
    assert (signed.attention, signed.note) == ("dr.who@rxx.example", "Trauma CT.\nPlease review.")
    [audit] = portal.audit("portal-share")
    assert audit.actor == "user:doc" and audit.manifest_id == manifest and "RTH,RXX" in audit.detail
    outbox = (await portal.request("GET", "/ui/api/send/outbox")).json()["rows"]
    assert [o["manifest_id"] for o in outbox] == [manifest]
    assert set(outbox[0]["recipients"]) == {"RTH", "RXX"} and outbox[0]["blocks_total"] > 0
    assert outbox[0]["patient_id"] == PATIENT_ID
    assert outbox[0]["recipients"]["RXX"]["status"] == "announcing"
    # recall: a reason is required; then the control API's recall, audited with the user
    bad = await portal.request("POST", "/ui/api/send/recall", "doc", {"manifest": manifest, "reason": " "})
    assert bad.status == 400
    assert (await portal.request("POST", "/ui/api/send/recall", "doc",
                                 {"manifest": "not-a-cid", "reason": "x"})).status == 400
    r = await portal.request("POST", "/ui/api/send/recall", "doc", {"manifest": manifest, "reason": "wrong patient"})
    assert r.status == 200, r.body
    assert r.json()["recalled"] == manifest
    assert portal.sent()[0].state.value == "recalled"
    assert portal.audit("portal-recall")[0].detail == "wrong patient"
    r = await portal.request("POST", "/ui/api/send/redeliver", "doc", {"manifest": manifest})
    assert r.status == 200 and "retried" in r.json()


async def test_a_clinician_cannot_recall_another_organisations_study(portal: Portal) -> None:
    """A manifest this node received (another organisation sent it) is not this node's to recall."""
    signed = await portal.other.sender.share(portal.theirs, ["RGT"], Priority.ROUTINE, Purpose.CARE)
    await portal.mesh.announce(portal.other, portal.node, signed)
    assert portal.node.store.manifest(signed.cid) is not None
    r = await portal.request("POST", "/ui/api/send/recall", "pacs", {"manifest": str(signed.cid), "reason": "mine"})
    assert r.status == 404, r.body
    assert portal.node.store.manifest(signed.cid).state.value != "recalled"  # type: ignore[union-attr]
    assert portal.audit("portal-recall") == [] and portal.audit("recall") == []


def test_the_page_puts_server_values_in_as_text_only() -> None:
    """Values from the server go into the page as text: no HTML-parsing sinks in send.js, and nothing inline
    that the page's CSP (script-src 'self', style-src 'self') would have to allow."""
    static = Path(__file__).resolve().parents[3] / "meshnode" / "web" / "static"
    script = (static / "send.js").read_text(encoding="utf-8")
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in script, sink
    page = (static / "send.html").read_text(encoding="utf-8")
    assert "<script>" not in page and "style=" not in page and " on" + "click=" not in page
