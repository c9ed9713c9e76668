"""Research shares in one process (tests/meshnode/node/harness.py): a de-identified copy is announced and
fetched, never the original; a recipient of the research manifest cannot read the original's blocks;
instances at pixel risk are held for a human (released with or without them, or refused) or refused by
policy; the re-link table stays at the sender and its export is audited."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pydicom
import pytest
import trio
from pydicom.uid import UID
from trio.testing import MockClock

from meshnode.dicom import synthetic
from meshnode.gateway.announcer import StudyAnnouncer
from meshnode.gateway.intake import StoredInstance, StudyIntake
from meshnode.gateway.routes import RouteTable
from meshnode.node.runtime import store_research_copy
from meshnode.node.research_share import (
    HeldShareError,
    PixelRiskRefusedError,
    ResearchShares,
)
from meshnode.storage.audit import EventCode
from meshnode.storage.memory_gateway import MemoryGatewayStore
from meshnode.storage.records import hash_uid
from meshnode.storage.research_store import ResearchState
from protocol.deid import DeidOption, DeidProfile, PixelRiskPolicy
from protocol.document import Signed
from protocol.errors import LocalProtocolError
from protocol.exchange_messages import UNAUTHORISED
from protocol.manifest import Manifest, Priority, Purpose
from tests.meshnode.node.conftest import CHUNK
from tests.meshnode.node.harness import (
    HarnessNode,
    MemoryMesh,
    alerts,
    ingest_study,
    wait_done,
)
from tests.meshnode.node.test_exchange_handlers import blocks, introduced

PATIENT_ID = synthetic.DEFAULT_PATIENT_ID
PROFILE = DeidProfile("lung", frozenset({DeidOption.RETAIN_LONGITUDINAL_TEMPORAL}))


def with_research(node: HarnessNode, home: Path) -> None:
    """The node's research shares, storing copies through a real intake (as the runtime wires them)."""
    state = MemoryGatewayStore()

    async def no_share(study: str, to: Sequence[str], priority: Priority, purpose: Purpose) -> Signed[Manifest]:
        raise AssertionError("the intake announces nothing for a research copy")

    intake = StudyIntake(node.ctx.storage, node.ctx.db, state, StudyAnnouncer(node.ctx.db, state, RouteTable(),
                                                                                no_share))

    async def store(data: bytes, source: str) -> StoredInstance:
        return await store_research_copy(intake, data, source)  # as the runtime wires it

    node.sender.research = ResearchShares(node.ctx, home, node.sender.share_study, store)


@pytest.fixture(scope="session")
def risky_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four CT slices and one ultrasound image without Burned In Annotation (pixel risk)."""
    out = tmp_path_factory.mktemp("risky")
    paths = synthetic.generate_ct_study(out, slices=4, rows=32, columns=32, seed=9)
    ds = pydicom.dcmread(paths[0])
    ds.Modality = "US"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.6.1")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(ds.SOPInstanceUID + ".77")
    if "BurnedInAnnotation" in ds:
        del ds.BurnedInAnnotation
    ds.save_as(out / "us.dcm")
    return out


def _instance_bytes(node: HarnessNode, study_uid: str) -> list[bytes]:
    return [b"".join(node.ctx.storage.blocks.get(c) for c in r.blocks) for r in node.store.instances(study_uid)]


async def test_a_research_share_sends_a_de_identified_copy_and_never_the_original(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str, tmp_path: Path) -> None:
    a, b = mesh.add("a", "RGT", 50), mesh.add("b", "RES", 51)
    with_research(a, tmp_path / "a")
    await introduced(mesh)
    original = a.store.instances(study)
    outcome = await a.sender.share_research(study, ["RES"], Priority.ROUTINE, PROFILE, actor="user:alice")
    assert outcome.state is ResearchState.SHARED and outcome.manifest is not None
    signed = outcome.manifest
    copy_uid = signed.document.study_uid
    assert copy_uid != study and signed.document.purpose is Purpose.RESEARCH
    assert signed.document.summary.patient_id != PATIENT_ID and signed.document.summary.patient_name != \
        synthetic.DEFAULT_PATIENT_NAME
    # the original study's manifest was never signed; the copy's blocks are new content
    assert {m.study_uid for m in a.store.manifests("sent")} == {copy_uid}
    original_cids = {c for r in original for c in r.blocks}
    assert not original_cids & set(signed.document.block_order())
    # the link and the audit name both studies (hashed) and the research manifest
    link = a.store.research_share_for_manifest(signed.cid)
    assert link is not None and (link.original_study_uid, link.research_study_uid) == (study, copy_uid)
    [entry] = [e.event for e in a.store.audit_entries() if e.event.action == "research-share"]
    assert entry.study == hash_uid(study) and entry.manifest_id == str(signed.cid)
    assert hash_uid(copy_uid) in entry.detail and entry.actor == "user:alice"
    # the recipient fetches the copy: no original identifier in the bytes it holds
    async with trio.open_nursery() as nursery:
        await mesh.run(nursery)
        await mesh.announce(a, b, signed)
        await wait_done(b, signed.cid, 600)
        nursery.cancel_scope.cancel()
    assert signed.cid in b.completed
    received = _instance_bytes(b, copy_uid)
    assert len(received) == len({r.sop_instance_uid for r in original})
    for data in received:
        assert PATIENT_ID.encode() not in data and study.encode() not in data
        assert b"19700101" not in data  # the birth date
    # hostile: the research recipient asks for the original's blocks under the research manifest
    probe = tuple(sorted(original_cids, key=str)[:4])
    assert await blocks(b, a, signed.cid, probe) == [UNAUTHORISED]  # blocks the manifest does not list
    assert alerts(a, "unauthorised-request") == [b.peer_id]
    # and there is no manifest of the original study to ask under


async def test_a_de_identified_commercial_share_keeps_its_purpose(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str, tmp_path: Path) -> None:
    a = mesh.add("a", "RGT", 50)
    mesh.add("b", "RES", 51)
    with_research(a, tmp_path / "a")
    outcome = await a.sender.share_research(study, ["RES"], Priority.ROUTINE, DeidProfile("planning"),
                                            actor="route:3d", purpose=Purpose.CARE)
    assert outcome.manifest is not None and outcome.manifest.document.purpose is Purpose.CARE
    assert outcome.manifest.document.study_uid != study
    assert outcome.manifest.document.summary.patient_id != PATIENT_ID


async def test_the_plain_share_path_refuses_to_announce_an_original_for_research(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str, tmp_path: Path) -> None:
    a = mesh.add("a", "RGT", 50)
    mesh.add("b", "RES", 51)
    with_research(a, tmp_path / "a")
    with pytest.raises(LocalProtocolError, match="de-identified copy"):
        await a.sender.share(study, ["RES"], Priority.ROUTINE, Purpose.RESEARCH)
    assert a.store.manifests("sent") == []


async def test_pixel_risk_holds_the_share_until_a_human_releases_it_without_those_instances(
        autojump_clock: MockClock, mesh: MemoryMesh, risky_source: Path, tmp_path: Path) -> None:
    study = ingest_study(tmp_path / "a", risky_source, chunk_size=CHUNK)
    a = mesh.add("a", "RGT", 50)
    mesh.add("b", "RES", 51)
    with_research(a, tmp_path / "a")
    held = await a.sender.share_research(study, ["RES"], Priority.ROUTINE, PROFILE, actor="route:lung")
    assert held.state is ResearchState.HELD and held.manifest is None
    assert [reason for _, reason in held.held] == ["US image without Burned In Annotation"]
    assert a.store.manifests("sent") == []  # nothing sent silently
    assert [r.share_id for r in a.store.research_shares(ResearchState.HELD)] == [held.share_id]
    research = a.sender.research
    assert research is not None
    released = await research.release(held.share_id, include_risky=False, actor="user:bob")
    assert released.state is ResearchState.SHARED and released.manifest is not None
    assert len(released.manifest.document.instances) == 4  # the ultrasound image held back
    with pytest.raises(HeldShareError):  # decided already
        await research.release(held.share_id, include_risky=True, actor="user:bob")
    [decision] = [e.event for e in a.store.audit_entries() if e.event.action == "research-share"]
    assert decision.actor == "user:bob" and "without the instances at pixel risk" in decision.detail


async def test_a_held_share_can_be_refused_and_a_refusing_route_sends_nothing(
        autojump_clock: MockClock, mesh: MemoryMesh, risky_source: Path, tmp_path: Path) -> None:
    study = ingest_study(tmp_path / "a", risky_source, chunk_size=CHUNK)
    a = mesh.add("a", "RGT", 50)
    mesh.add("b", "RES", 51)
    with_research(a, tmp_path / "a")
    research = a.sender.research
    assert research is not None
    held = await a.sender.share_research(study, ["RES"], Priority.ROUTINE, PROFILE, actor="user:alice")
    refused = await research.refuse(held.share_id, "consent withdrawn", actor="user:carol")
    assert refused.state is ResearchState.REFUSED and refused.decided_by == "user:carol"
    refusing = DeidProfile("lung", pixel_risk=PixelRiskPolicy.REFUSE)
    with pytest.raises(PixelRiskRefusedError):
        await a.sender.share_research(study, ["RES"], Priority.ROUTINE, refusing, actor="route:lung")
    assert a.store.manifests("sent") == []
    actions = [(e.event.action, e.event.actor) for e in a.store.audit_entries()
               if e.event.action.startswith("research-share")]
    assert actions == [("research-share-held", "user:alice"), ("research-share-refused", "user:carol"),
                       ("research-share-refused", "route:lung")]


async def test_the_relink_table_maps_pseudonyms_back_and_its_export_is_audited(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str, tmp_path: Path) -> None:
    a = mesh.add("a", "RGT", 50)
    mesh.add("b", "RES", 51)
    with_research(a, tmp_path / "a")
    outcome = await a.sender.share_research(study, ["RES"], Priority.ROUTINE, PROFILE, actor="user:alice")
    assert outcome.manifest is not None
    research = a.sender.research
    assert research is not None
    entries = await research.export_relink("lung", actor="user:dpo")
    assert ("patient", outcome.manifest.document.summary.patient_id, PATIENT_ID) in entries
    assert ("study", outcome.manifest.document.study_uid, study) in entries
    assert await research.export_relink("other", actor="user:dpo") == []
    exports = [e.event for e in a.store.audit_entries() if e.event.code == EventCode.EXPORT]
    assert [(e.action, e.actor) for e in exports] == [("deid-relink-export", "user:dpo")] * 2
    key = tmp_path / "a" / "deid" / "lung.key"
    assert key.stat().st_mode & 0o777 == 0o600 and (key.parent.stat().st_mode & 0o777) == 0o700
