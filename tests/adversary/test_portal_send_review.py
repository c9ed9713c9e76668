"""Review 2 of the send page (issue 13): what a hostile reviewer showed a portal user could do."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshnode.storage.metadata import MetadataStore
from meshnode.storage.patients import ReconciliationRow, ReconState
from meshnode.storage.records import Source, hash_uid
from meshnode.storage.sqlite_metadata import SqliteMetadataStore
from meshnode.web import send_web
from meshnode.node.control_routes import routes as control_routes
from protocol.cid import CID
from protocol.errors import LocalProtocolError
from protocol.manifest import Priority, Purpose
from tests.meshnode.node.harness import wait_done
from tests.meshnode.node.test_research_share import with_research
from tests.meshnode.web.test_send_web import Portal, portal, share_body  # noqa: F401


async def _hold_one(portal: Portal) -> tuple[str, bytes]:
    """One instance of the study held by patient reconciliation (the study as if received)."""
    node = portal.node
    held = node.store.instances(portal.study)[0]

    def as_received(store: MetadataStore) -> None:
        assert isinstance(store, SqliteMetadataStore)
        with store._tx() as db:
            db.execute("UPDATE instances SET source = ?", (Source.RECEIVED.value,))

    await node.ctx.db.run(as_received)
    await node.ctx.db.run(lambda s: s.add_reconciliation(
        ReconciliationRow(CID.of(b"foreign"), portal.study, "RXX", ReconState.WAITING, 1),
        [(held.sop_instance_uid, held.digest)]))
    assert (held.sop_instance_uid, held.digest) in node.store.held_instances(portal.study)
    return held.sop_instance_uid, held.digest


async def test_only_the_pacs_team_may_send_instances_held_by_reconciliation(portal: Portal) -> None:
    sop, _ = await _hold_one(portal)
    for bad in ("yes", 1):
        r = await portal.request("POST", "/ui/api/send/share", "pacs", share_body(portal.study,
                                                                                    include_unreconciled=bad))
        assert r.status == 400, r.body
    r = await portal.request("POST", "/ui/api/send/share", "doc", share_body(portal.study, include_unreconciled=True))
    assert r.status == 403, r.body
    assert portal.sent() == []
    r = await portal.request("POST", "/ui/api/send/share", "pacs", share_body(portal.study, include_unreconciled=True))
    assert r.status == 200, r.body
    [row] = portal.sent()
    manifest = portal.node.ctx.manifests.open(row.manifest_id, row.raw).document
    assert sop in {i.sop_instance_uid for i in manifest.instances}
    [event] = portal.audit("portal-share")
    assert event.actor == "user:pacs" and "including 1 unreconciled instance(s)" in event.detail


async def test_only_the_first_series_of_a_study_get_thumbnails(portal: Portal,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(send_web, "MAX_THUMBNAIL_SERIES", 1)
    r = await portal.request("GET", f"/ui/api/send/studies/{portal.study}/series")
    first, *rest = r.json()["series"]
    assert first["thumbnail"] and rest and all(s["thumbnail"] is None for s in rest)
    r = await portal.request("GET", f"/ui/api/send/studies/{portal.study}/series/{rest[0]['series_uid']}/"
                                    "thumbnail.png")
    assert r.status == 404, r.body


async def test_a_study_received_for_research_is_not_listed_nor_shared_onward(portal: Portal) -> None:
    signed = await portal.other.sender.share_study(portal.theirs, ["RGT"], Priority.ROUTINE, Purpose.RESEARCH)
    await portal.mesh.announce(portal.other, portal.node, signed)
    await wait_done(portal.node, signed.cid, 30)
    assert portal.node.store.instances(portal.theirs)  # it arrived
    r = await portal.request("GET", "/ui/api/send/studies", "doc", query="date_from=1900-01-01")
    assert r.status == 200 and [s["study_uid"] for s in r.json()["studies"]] == [portal.study]
    r = await portal.request("GET", f"/ui/api/send/studies/{portal.theirs}/series", "doc")
    assert r.status == 404, r.body
    for purpose in ("care", "research"):
        r = await portal.request("POST", "/ui/api/send/share", "doc",
                                 share_body(portal.theirs, to=["RTH"], purpose=purpose))
        assert r.status in (400, 404), r.body
    # the control API (what `meshnode share` asks) and the Sender refuse it too: one rule in one place
    with pytest.raises(LocalProtocolError, match="research only"):
        await portal.node.sender.share(portal.theirs, ["RTH"], Priority.ROUTINE, Purpose.CARE)
    with pytest.raises(LocalProtocolError, match="research only"):
        await control_routes(portal.node)[("POST", "/share")](  # type: ignore[arg-type]
            {"study": portal.theirs, "to": ["RTH"], "priority": "routine", "purpose": "care"})
    assert portal.sent() == []


async def test_a_search_names_something_and_audits_every_study_it_disclosed(portal: Portal) -> None:
    for bad in ("", "name=", "date_from=2025-13-45", "date_to=2025-02-30"):
        r = await portal.request("GET", "/ui/api/send/studies", "doc", query=bad)
        assert r.status == 400, (bad, r.body)
    assert portal.audit("portal-study-search") == []
    signed = await portal.other.sender.share_study(portal.theirs, ["RGT"], Priority.ROUTINE, Purpose.CARE)
    await portal.mesh.announce(portal.other, portal.node, signed)
    await wait_done(portal.node, signed.cid, 30)
    r = await portal.request("GET", "/ui/api/send/studies", "doc", query="date_from=1900-01-01")
    studies = [s["study_uid"] for s in r.json()["studies"]]
    assert len(studies) == 2, studies  # two patients' identifiers disclosed: both audited
    audited = portal.audit("portal-study-search")
    assert sorted(e.study for e in audited) == sorted(hash_uid(s) for s in studies)
    assert all(e.actor == "user:doc" for e in audited)


async def test_redeliver_from_the_page_names_one_manifest(portal: Portal) -> None:
    r = await portal.request("POST", "/ui/api/send/redeliver", "doc", {})
    assert r.status == 400, r.body
    assert portal.audit("portal-redeliver") == []


async def test_a_research_share_from_the_page_is_the_portal_users(portal: Portal, tmp_path: Path) -> None:
    with_research(portal.node, tmp_path / "mesh" / "a")  # the node's home
    r = await portal.request("POST", "/ui/api/send/share", "doc",
                             share_body(portal.study, purpose="research", deid={"project": "p1"}))
    assert r.status == 200, r.body
    [row] = portal.node.store.research_shares()
    assert row.decided_by == "user:doc"
    actors = {e.event.actor for e in portal.node.store.audit_entries() if e.event.action.startswith("research")}
    assert actors <= {"user:doc"}
