"""Research shares against hostile users and bad configuration.

A user without the right role cannot export a project's re-link table or decide on a held share (403,
audited, nothing changed); a browser session cannot POST a decision (no CSRF); a misspelt de-identification
option is a ConfigError naming the key, and nothing is shared or held. (A recipient of a research manifest
asking for the original's blocks: tests/meshnode/node/test_research_share.py and the e2e test.)
"""

from __future__ import annotations

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
from meshnode.web.auth import Authenticator, add_user, issue_token
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
    for name, roles in (("viewer", ("read",)), ("ct3", ("read", "write")), ("dpo", ("reidentify",))):
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


async def test_a_user_without_the_write_role_cannot_release_or_refuse_a_held_share(setup: Setup) -> None:
    body = json.dumps({"include_risky": True}).encode()
    for user in ("viewer", "dpo"):
        for action in ("release", "refuse"):
            reply = await call(setup.app, "POST", f"/deid/held/{setup.share}/{action}", headers=setup.auth(user),
                               body=body)
            assert reply.status == 403, (user, action, reply.body)
    # a browser's session cookie is no credential for a POST (another site cannot make it decide)
    reply = await call(setup.app, "POST", f"/deid/held/{setup.share}/release",
                       headers={"Cookie": "meshnode_session=stolen", "Content-Type": "application/json"}, body=body)
    assert reply.status == 401
    assert _held(setup) == [setup.share] and setup.node.store.manifests("sent") == []
    # the reader sees the queue; a writer decides, named in the audit
    listed = await call(setup.app, "GET", "/deid/held", headers=setup.auth("viewer"))
    assert listed.status == 200 and [r["research_share"] for r in listed.json()] == [setup.share]
    reply = await call(setup.app, "POST", f"/deid/held/{setup.share}/release", headers=setup.auth("ct3"),
                       body=json.dumps({"include_risky": False}).encode())
    assert reply.status == 200 and reply.json()["state"] == "shared" and reply.json()["instances"] == 2
    assert _held(setup) == []
    [decision] = [e.event for e in setup.node.store.audit_entries() if e.event.action == "research-share"]
    assert decision.actor == "user:ct3"
    again = await call(setup.app, "POST", f"/deid/held/{setup.share}/refuse", headers=setup.auth("ct3"), body=b"{}")
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
