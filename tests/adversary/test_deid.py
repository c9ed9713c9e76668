"""Research shares against hostile users and bad configuration.

A user without the right role cannot export a project's re-link table or decide on a held share (403,
audited, nothing changed); a browser session cannot POST a decision (no CSRF); a misspelt de-identification
option is a ConfigError naming the key, and nothing is shared or held. (A recipient of a research manifest
asking for the original's blocks: tests/meshnode/node/test_research_share.py and the e2e test.)
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import UID
from trio.testing import MockClock

from meshnode.config import parse_config
from meshnode.dicom import synthetic
from meshnode.node.deid_routes import share_profile
from meshnode.storage.audit import AuditEvent, EventCode
from meshnode.storage.research_store import ResearchState
from meshnode.storage.users import MemoryUserStore
from meshnode.web.app import WebApp
from meshnode.web.auth import SESSION_COOKIE, Authenticator, add_user, issue_token
from meshnode.web.config import HttpConfig
from meshnode.web.deid_web import DeidWeb
from protocol.deid import DeidProfile
from protocol.errors import ConfigError
from protocol.manifest import Priority
from tests.meshnode.node.harness import HarnessNode, MemoryMesh, ingest_study
from tests.meshnode.node.test_research_share import with_research
from tests.meshnode.web.asgi import call


@dataclass
class Setup:
    app: WebApp
    node: HarnessNode
    share: str
    tokens: dict[str, str]

    def auth(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}", "Content-Type": "application/json"}


@pytest.fixture
async def setup(tmp_path: Path, autojump_clock: MockClock) -> AsyncIterator[Setup]:
    source = tmp_path / "src"
    paths = synthetic.generate_ct_study(source, slices=2, rows=32, columns=32, seed=4)
    ds = pydicom.dcmread(paths[0])
    ds.Modality = "US"  # an ultrasound image without Burned In Annotation: the share is held
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(ds.SOPInstanceUID + ".9")
    ds.save_as(source / "us.dcm")
    study = ingest_study(tmp_path / "a", source, chunk_size=4096)
    mesh = MemoryMesh(tmp_path)
    node = mesh.add("a", "RGT", 50)
    mesh.add("b", "RES", 51)
    with_research(node, tmp_path / "a")
    held = await node.sender.share_research(study, ["RES"], Priority.ROUTINE, DeidProfile("lung"), actor="route:x")
    assert held.state is ResearchState.HELD
    users = MemoryUserStore()
    tokens = {}
    for name, roles in (("viewer", ("read",)), ("ct3", ("read", "write")), ("dpo", ("reidentify",)),
                        ("reviewer", ("pacs",))):  # the PACS team: the queues, deid-release
        add_user(users, name, roles, 0)
        tokens[name], _ = issue_token(users, name, "", 0)

    async def audit(event: AuditEvent) -> None:
        await node.ctx.audit(event)

    app = WebApp(DeidWeb(lambda: node.sender.research).routes(), Authenticator(users),
                 HttpConfig(listen="127.0.0.1:0"), audit)
    yield Setup(app, node, held.share_id, tokens)
    mesh.close()


def _held(s: Setup) -> list[str]:
    return [r.share_id for r in s.node.store.research_shares(ResearchState.HELD)]


async def test_only_a_user_with_the_reidentify_role_can_export_the_relink_table(setup: Setup) -> None:
    for headers, status in (({}, 401), ({"Authorization": "Bearer mnt_forged"}, 401),
                            (setup.auth("viewer"), 403), (setup.auth("ct3"), 403)):
        reply = await call(setup.app, "POST", "/deid/relink/lung", headers=headers)
        assert reply.status == status, reply.body
        assert "original" not in reply.body.decode()
    exports = [e for e in setup.node.store.audit_entries() if e.event.code == EventCode.EXPORT]
    assert exports == []
    forbidden = [e.event.actor for e in setup.node.store.audit_entries() if e.event.action == "http-forbidden"]
    assert forbidden == ["user:viewer", "user:ct3"]
    reply = await call(setup.app, "POST", "/deid/relink/lung", headers=setup.auth("dpo"))
    assert reply.status == 200 and reply.json() == []  # nothing shared yet: nothing to re-link
    assert [e.event.actor for e in setup.node.store.audit_entries() if e.event.code == EventCode.EXPORT] == \
        ["user:dpo"]


async def test_only_the_deid_release_role_decides_on_a_held_share_with_a_reason(setup: Setup) -> None:
    """Review finding 8: `write` (also STOW service tokens) no longer releases instances at pixel risk; a
    dedicated role does, with a reason; finding 15: a real session cookie alone (what another site's form
    sends) is no credential for a POST: it needs the session's anti-CSRF token too."""
    body = json.dumps({"include_risky": True, "reason": "looked"}).encode()
    for user in ("viewer", "dpo", "ct3"):  # ct3 has write: before the fix it could release
        for action in ("release", "refuse"):
            reply = await call(setup.app, "POST", f"/deid/held/{setup.share}/{action}", headers=setup.auth(user),
                               body=body)
            assert reply.status == 403, (user, action, reply.body)
    principal = await setup.app.auth.token(setup.tokens["reviewer"])
    assert principal is not None
    session = setup.app.auth.open_session(principal, hours=1)
    cookie = {"Cookie": f"{SESSION_COOKIE}={session}", "Content-Type": "application/json"}
    assert (await call(setup.app, "GET", "/deid/held", headers=cookie)).status == 200  # the session is valid
    for csrf in ({}, {"X-CSRF-Token": "forged"}):
        reply = await call(setup.app, "POST", f"/deid/held/{setup.share}/release", headers={**cookie, **csrf},
                           body=body)
        assert reply.status == 403 and reply.json()["error"] == "csrf", reply.body
    assert _held(setup) == [setup.share] and setup.node.store.manifests("sent") == []
    # releasing the risky instances needs a reason; a refusal too
    for action, value in (("release", {"include_risky": True}), ("release", {"include_risky": True, "reason": " "}),
                          ("refuse", {})):
        reply = await call(setup.app, "POST", f"/deid/held/{setup.share}/{action}", headers=setup.auth("reviewer"),
                           body=json.dumps(value).encode())
        assert reply.status == 400, (action, value, reply.body)
    assert _held(setup) == [setup.share]
    # the PACS team sees what to look at: modality, SOP class, series, instance number, reason, a preview link
    assert (await call(setup.app, "GET", "/deid/held", headers=setup.auth("viewer"))).status == 403  # read: no
    listed = await call(setup.app, "GET", "/deid/held", headers=setup.auth("reviewer"))
    assert listed.status == 200
    [row] = listed.json()
    [entry] = row["review"]
    assert (entry["modality"], entry["sop_class"], entry["reason"]) == \
        ("US", "CT Image Storage", "US image without Burned In Annotation")
    assert entry["series_number"] and entry["instance_number"] and "series_description" in entry
    # the preview: the reviewer's role only, a real PNG of the held instance's pixels
    assert (await call(setup.app, "GET", entry["preview"], headers=setup.auth("viewer"))).status == 403
    assert (await call(setup.app, "GET", f"/deid/held/{setup.share}/instances/9.png",
                       headers=setup.auth("reviewer"))).status == 404
    png = await call(setup.app, "GET", entry["preview"], headers=setup.auth("reviewer"))
    assert png.status == 200 and png.body.startswith(b"\x89PNG\r\n\x1a\n")
    reply = await call(setup.app, "POST", f"/deid/held/{setup.share}/release", headers=setup.auth("reviewer"),
                       body=json.dumps({"include_risky": True, "reason": "no text in the pixels"}).encode())
    assert reply.status == 200 and reply.json()["state"] == "shared" and reply.json()["instances"] == 3
    assert _held(setup) == []
    [decision] = [e.event for e in setup.node.store.audit_entries() if e.event.action == "research-share"]
    assert decision.actor == "user:reviewer" and "no text in the pixels" in decision.detail
    assert [e.event.actor for e in setup.node.store.audit_entries() if e.event.action == "deid-preview"] == \
        ["user:reviewer"]
    # the released risky instance does not claim its identity was removed
    [manifest] = setup.node.store.manifests("sent")
    flags = []
    for record in setup.node.store.instances(manifest.study_uid):
        ds = pydicom.dcmread(io.BytesIO(b"".join(setup.node.ctx.storage.blocks.get(c) for c in record.blocks)))
        flags.append((str(ds.Modality), str(ds.PatientIdentityRemoved), "not cleaned" in ds.DeidentificationMethod))
    assert sorted(flags) == [("CT", "YES", False), ("CT", "YES", False), ("US", "NO", True)]
    again = await call(setup.app, "POST", f"/deid/held/{setup.share}/refuse", headers=setup.auth("reviewer"),
                       body=b'{"reason": "late"}')
    assert again.status == 400  # decided already


async def test_a_misspelt_option_is_refused_naming_the_key_and_changes_nothing(setup: Setup, tmp_path: Path) -> None:
    before = setup.node.store.research_shares()
    with pytest.raises(ConfigError, match=r"deid\.retain_device_identy: unknown key"):
        share_profile({"deid": {"project": "lung", "retain_device_identy": True}}, True)
    with pytest.raises(ConfigError, match=r"route\[0\]\.deid\.clean_description: unknown key"):
        parse_config('[node]\norg = "RGT"\n[[route]]\nname = "lung"\nto = ["RES"]\npurpose = "research"\n'
                     '[route.deid]\nclean_description = true\n', "node.toml", tmp_path)
    with pytest.raises(ConfigError, match=r"route\[0\]\.deid\.pixel_risk"):
        parse_config('[node]\norg = "RGT"\n[[route]]\nname = "lung"\nto = ["RES"]\n[route.deid]\npixel_risk = "send"\n',
                     "node.toml", tmp_path)
    assert setup.node.store.research_shares() == before and setup.node.store.manifests("sent") == []
    # a research route without a [route.deid] table de-identifies with the basic profile, project = its name
    config = parse_config('[node]\norg = "RGT"\n[[route]]\nname = "lung"\nto = ["RES"]\npurpose = "research"\n',
                          "node.toml", tmp_path)
    assert config.gateway.routes.by_name("lung").deid == DeidProfile("lung")
